"""Reading and writing the files that flow between steps.

Axis order inside cpsnake: images (C, Y, X), stacks (Z, C, Y, X), labels (Y, X) or (Z, Y, X),
flows (3, Y, X) = dY, dX, cellprob logits. (x, y) order appears only at the ImageJ boundary.

:func:`read_image` reads input images (TIFF / OME-TIFF, PNG, JPEG; told by content, not extension) as
``(C, Y, X)`` (stacks ``(Z, C, Y, X)``) in their own dtype, with pixel size, unit and original axes.

Every writer goes through :func:`atomic_output` (:func:`cpsnake.io.outputs.atomic_output`): the file is written under a
temporary name in the destination folder and renamed only when complete, so no partial file ever sits under a
final name; an output-side failure (full disk, read-only folder, ...) is one line.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from cpsnake.io import files, limits
from cpsnake.io.calibration import (
    calibration,
    calibration_warning,
    read_calibration,
    stack_calibration,
    stack_calibration_problem,
    stack_calibration_warning,
)
from cpsnake.errors import CpsnakeError, CpsnakeWarning, library_text
from cpsnake.io.label_check import LABELS_FIX, check_labels
from cpsnake.io.outputs import atomic_output

if TYPE_CHECKING:
    import tifffile

__all__ = [
    "CpsnakeError",
    "atomic_output",
    "write_tiff",
    "read_calibration",
    "calibration",
    "write_flows",
    "read_tiff",
    "open_tiff",
    "TiffHeader",
    "read_flows",
    "write_labels",
    "read_labels",
    "label_dtype",
    "read_image",
    "png_shape",
    "describe",
    "IMAGE_FORMATS",
]


# --- TIFF with ImageJ metadata -------------------------------------------------------------------
# ImageJ 1 reads calibration only from ImageJ-style TIFF tags (resolution + `unit`), not OME-XML,
# so every TIFF cpsnake writes is an ImageJ hyperstack with its axes, pixel size and unit.


def _imagej_unit(unit: str | None) -> str:
    """A unit as ImageJ's ASCII description can hold it: µm -> micron; other non-ASCII characters escaped
    (``\\u00c5``) and control characters dropped, so a unit read from a damaged file cannot break the file."""
    unit = {"um": "micron", "µm": "micron", "μm": "micron"}.get(unit or "", unit or "pixel")
    unit = "".join(ch for ch in unit if ch.isprintable()).encode("ascii", "backslashreplace").decode("ascii")
    return unit.strip() or "pixel"


def write_tiff(
    path: str | os.PathLike,
    array: "np.ndarray",
    *,
    axes: str,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    metadata: dict | None = None,
) -> None:
    """Write ``array`` as an ImageJ TIFF, atomically.

    Parameters
    ----------
    array : ndarray
        uint8, uint16 or float32 data whose axes are named by ``axes`` (e.g. ``"YX"``, ``"CYX"``, ``"ZYX"``).
    pixel_size : (float, float), optional
        (y, x) size of a pixel in ``unit``; written as the TIFF resolution ImageJ reads.
    unit : str, optional
        Length unit of ``pixel_size`` (``"um"`` is written as ImageJ's ``"micron"``).
    metadata : dict, optional
        Extra ImageJ metadata entries (stored in the ImageJ description; keep values short strings/numbers).
    """
    import numpy as np
    import tifffile

    meta, kwargs = imagej_tiff_options(axes, pixel_size, unit, metadata)
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(array), imagej=True, metadata=meta, **kwargs)


def imagej_tiff_options(axes: str, pixel_size: tuple[float, float] | None = None, unit: str | None = None,
                        metadata: dict | None = None) -> tuple[dict, dict]:
    """The ImageJ ``metadata`` and the other ``tifffile.imwrite`` options (resolution) of :func:`write_tiff`."""
    meta = {"axes": axes}
    if metadata:
        meta.update(metadata)
    kwargs = {}
    if pixel_size is not None:
        py, px = (float(v) for v in pixel_size)
        kwargs["resolution"] = (1.0 / px, 1.0 / py)
        meta["unit"] = _imagej_unit(unit)
    return meta, kwargs


def write_flows(
    path: str | os.PathLike,
    flows: "np.ndarray",
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    network_scale: float | None = None,
    stack_axes: str = "",
    z_step: float | None = None,
    frame_interval: float | None = None,
    three_d: bool = False,
) -> None:
    """Write flows as an ImageJ TIFF: float32 ``(3, Y, X)`` = dY, dX, cellprob logits (axes CYX); a stack's per-plane
    flows ``(S, 3, Y, X)`` (``stack_axes`` ``"Z"`` or ``"T"``: axes ZCYX / TCYX); or with ``three_d`` 3-D flows
    ``(4, Z, Y, X)`` = dZ, dY, dX, cellprob (``stack_axes="Z"``; stored as ZCYX with 4 channels, as ImageJ orders
    hyperstack axes).

    ``network_scale``: the factor the image was resized by for the network (``diam_mean / diameter``), kept
    in the ImageJ metadata so that ``cpsnake reconstruct`` follows the flows ``int(200 / scale)`` steps.
    ``z_step`` and ``frame_interval`` go to ImageJ's ``spacing`` and ``finterval`` (carried on to the labels).
    """
    import numpy as np

    flows = np.asarray(flows, dtype=np.float32)
    if stack_axes not in ("", "Z", "T"):
        raise CpsnakeError(f"{path}: flows with stack axes {stack_axes!r}, expected '', 'Z' or 'T'")
    if not stack_axes and (flows.ndim != 3 or flows.shape[0] != 3):
        raise CpsnakeError(f"{path}: flows of shape {flows.shape}, expected (3, Y, X) = dY, dX, cellprob")
    if three_d and not (flows.ndim == 4 and flows.shape[0] == 4 and stack_axes == "Z"):
        raise CpsnakeError(f"{path}: 3-D flows of shape {flows.shape} (stack axes {stack_axes!r}), expected (4, Z, Y, X)")
    if stack_axes and not three_d and not (flows.ndim == 4 and flows.shape[1] == 3):
        raise CpsnakeError(f"{path}: stack flows of shape {flows.shape}, expected (S, 3, Y, X) per plane")
    extra = {"network_scale": float(network_scale)} if network_scale is not None else {}
    if z_step and stack_axes == "Z":
        extra["spacing"] = float(z_step)
    if frame_interval and stack_axes == "T":
        extra["finterval"] = float(frame_interval)
    if three_d:  # (4, Z, Y, X) -> (Z, 4, Y, X)
        flows = flows.transpose(1, 0, 2, 3)
    write_tiff(path, flows, axes=stack_axes + "CYX", pixel_size=pixel_size, unit=unit, metadata=extra or None)


class _TiffLog:
    """Collect the messages tifffile logs at ``level`` and above during the block: ``records`` (all of them)
    and ``errors`` (ERROR and above); ``with`` yields the log itself.

    tifffile logs (rather than raises) many problems: a page it cannot decode (the data are then zeros), or
    metadata it gives up on. With ``swallow`` the records go no further (the caller reports them in its own
    words); otherwise they also reach the usual handlers (:func:`cpsnake.errors.collected_warnings`)."""

    def __init__(self, level: int, *, swallow: bool = False) -> None:
        self.level, self.swallow = level, swallow
        self.records: list[str] = []
        self.errors: list[str] = []

    def __enter__(self) -> "_TiffLog":
        import logging

        self.logger = logging.getLogger("tifffile")
        self.logger.addFilter(self._filter)
        return self

    def _filter(self, record) -> bool:
        import logging

        if record.levelno >= self.level:
            self.records.append(record.getMessage())
            if record.levelno >= logging.ERROR:
                self.errors.append(record.getMessage())
            return not self.swallow
        return True

    def __exit__(self, *exc) -> None:
        self.logger.removeFilter(self._filter)


# tifffile's series kinds that come from a file's metadata (in tifffile's order), and the names users know them by
_METADATA_SERIES = {
    "shaped": "tifffile shape", "lsm": "Zeiss LSM", "mmstack": "Micro-Manager", "ome": "OME-XML", "imagej": "ImageJ",
    "ndtiff": "NDTiff", "fluoview": "FluoView", "stk": "MetaMorph STK", "sis": "Olympus SIS", "svs": "Aperio SVS",
    "scn": "Leica SCN", "qpi": "PerkinElmer QPI", "bif": "Roche BIF", "avs": "Argos AVS", "eer": "EER",
    "philips": "Philips", "scanimage": "ScanImage", "nih": "NIH Image", "mdgel": "MD Gel",
}
_GENERIC = {f"is_{k}": False for k in (*_METADATA_SERIES, "uniform")}  # tifffile's generic series: the pages alone
RESAVE_METADATA = ("open the file in Fiji, check Channels, Slices and Frames in Image > Properties and save it again "
                   "(File > Save As > Tiff)")


@dataclass
class TiffHeader:
    """A TIFF opened by :func:`open_tiff`: the image series to read and what its metadata say; close ``tif``.

    ``series``: the first series (tifffile's), at full resolution in ``series.levels[0]``; ``meta``:
    ``pixel_size``, ``unit``, ``calibration_problem``, ``z_step``, ``frame_interval``, ``time_unit``,
    ``stack_problem`` (a stored Z step or frame interval that could not be used), ``network_scale``;
    ``ignored``: None, or the warning saying which broken metadata were set aside (the pages were then read
    as tifffile's generic series does); the caller emits it once its read succeeded.
    """

    tif: "tifffile.TiffFile"
    series: "tifffile.TiffPageSeries"
    meta: dict
    ignored: str | None = None

    def close(self) -> None:
        self.tif.close()


def _metadata_kinds(tif) -> list[str]:
    """The metadata series kinds tifffile sees in ``tif`` (a flag that fails to compute counts as present: its
    metadata are then found broken)."""
    kinds = []
    for kind in _METADATA_SERIES:
        try:
            if getattr(tif, f"is_{kind}", False):
                kinds.append(kind)
        except Exception:  # a flag is computed from the metadata it names
            kinds.append(kind)
    return kinds


def _foreign_files(tif, path: Path, kinds: list[str]) -> bool:
    """True when the metadata make tifffile open other files that are not regular files in this file's folder.

    A multi-file OME-TIFF names its other files (``UUID FileName``), a Micro-Manager stack reads its
    ``*_MMStack*.tif`` siblings and an NDTiff its ``NDTiff.index``: a name with a folder in it (``../x.tif``,
    ``/abs/x.tif``) would read another image, a FIFO would block forever. Checked with ``os.stat`` only.
    """
    try:
        return _foreign(tif, path, kinds)
    except Exception:  # the metadata naming the files cannot be read: do not follow them
        return True


def _foreign(tif, path: Path, kinds: list[str]) -> bool:
    import glob
    import html
    import re
    import stat

    names: list[str] = []
    if "ome" in kinds:
        names += [html.unescape(n) for n in re.findall(r'\bFileName="([^"]*)"', tif.ome_metadata or "")]
    if "mmstack" in kinds:
        names += [os.path.basename(f) for f in glob.glob(os.path.join(glob.escape(str(path.parent)), "*_MMStack*.tif"))]
    if "ndtiff" in kinds and os.path.lexists(path.parent / "NDTiff.index"):
        names.append("NDTiff.index")
    for name in set(names) - {path.name}:
        if name in ("", ".", "..") or os.path.basename(name) != name:
            return True
        other = path.parent / name
        if os.path.lexists(other):
            try:
                if not stat.S_ISREG(os.stat(other).st_mode):
                    return True
            except OSError:
                return True
    return False


def _mismatch(tif, series, kinds: list[str], records: list[str]) -> str | None:
    """Why the metadata series of ``tif`` cannot be trusted (a phrase), or None."""
    try:
        if records or not series or series[0].kind not in kinds:  # tifffile gave up on them, or complained
            return "are not well-formed XML" if _bad_xml(tif, kinds) else "do not match the file's pages"
        if not _known_axes(series[0].axes):
            return "name unknown axes, or no Y and X axes"
        if _declares_more(series[0], tif.filehandle.size):
            return "declare more pixels than the file holds"
    except Exception:  # the pages they describe cannot be listed (then the generic series tells)
        return "do not match the file's pages"
    return None


def _known_axes(axes: str) -> bool:
    """True when ``axes`` holds Y and X and only letters tifffile knows (TZCYXS, Q, I, ...)."""
    import tifffile

    return "Y" in axes and "X" in axes and set(axes) <= set(tifffile.TIFF.AXES_NAMES)


def _bad_xml(tif, kinds: list[str]) -> bool:
    """True when ``tif`` is an OME-TIFF whose OME-XML is not well-formed."""
    if "ome" not in kinds:
        return False
    from xml.etree import ElementTree

    try:
        ElementTree.fromstring(tif.ome_metadata or "")
    except Exception:  # ParseError, and whatever a hostile document raises
        return True
    return False


def _declares_more(series, size: int) -> bool:
    """True when ``series`` declares more pixels than its pages hold (tifffile fills the rest with zeros)."""
    import math

    pages = list(series.pages)
    if any(p is None for p in pages):
        return True
    if series.dataoffset is not None:  # uncompressed in one piece: beyond the file's end, and beyond what the
        # pages declare (pages cut short themselves are a truncated file, which the data reader reports)
        stored = max((int(o) + int(n) for p in pages for o, n in zip(p.dataoffsets, p.databytecounts)), default=0)
        return int(series.dataoffset) + int(series.nbytes) > size and stored <= size
    return int(series.size) > sum(math.prod(p.shape) for p in pages)


_NO_META = dict(pixel_size=None, unit=None, calibration_problem=None, z_step=None, frame_interval=None, time_unit=None,
                network_scale=None, stack_problem=None)


def _tiff_meta(tif, axes: str | None = None) -> dict:
    """Calibration of an open TIFF (see :mod:`cpsnake.io.calibration`); with the series' ``axes``, also the stack's
    (z step, frame interval, ``stack_problem``) and cpsnake's ``network_scale``."""
    meta = dict(_NO_META)
    meta["pixel_size"], meta["unit"], meta["calibration_problem"] = calibration(tif)
    if axes is not None:
        meta["z_step"], meta["frame_interval"], meta["time_unit"] = stack_calibration(tif)
        meta["stack_problem"] = stack_calibration_problem(tif, axes)
        meta["network_scale"] = _positive_or_none((tif.imagej_metadata or {}).get("network_scale"))
    return meta


def _open_tifffile(path: Path, *, expected: str, fix: str, sniffed: bool, **flags) -> "tifffile.TiffFile":
    import tifffile

    try:
        return tifffile.TiffFile(path, **flags)
    except Exception as exc:  # tifffile raises many types for a damaged header
        if not sniffed and not _is_tiff(path):
            raise CpsnakeError(f"{path}: not a TIFF ({describe(path)}); expected {expected}; {fix}") from None
        raise CpsnakeError(
            f"{path}: found a TIFF whose data cannot be read ({library_text(exc)}); expected {expected}; "
            "the file is truncated or corrupt: copy or export it again"
        ) from None


def open_tiff(path: str | os.PathLike, *, expected: str, fix: str, sniffed: bool = False) -> TiffHeader:
    """Open a TIFF and choose the series to read: the first series its metadata describe, or, when those
    metadata are broken and the pixels do not depend on them, the pages as they are stored. No pixel is decoded.

    Metadata (ImageJ, OME-XML, tifffile's shape, and the other layouts tifffile knows) count as broken when
    tifffile cannot parse them or gives up on them, when they declare more pixels than the pages hold, or
    when they name other files outside this file's folder (or not regular files). The file is then reopened
    without them (tifffile's generic series): a single page (any samples, e.g. RGB) is read with
    ``ignored`` set to a warning naming the metadata; several pages, whose order (channels, slices,
    frames) only the metadata could tell, are one CpsnakeError saying the metadata, not the data, are broken.

    Raises CpsnakeError for a missing or non-regular file (unless ``sniffed``: checked by the caller), a
    file that is not a TIFF or whose header or pages cannot be read, and a TIFF without image data.
    """
    import logging

    path = Path(path)
    if not sniffed:
        files.regular_file(path, expected)
    tif = _open_tifffile(path, expected=expected, fix=fix, sniffed=sniffed)
    try:
        kinds = _metadata_kinds(tif)
        broken = None
        with _TiffLog(logging.WARNING, swallow=bool(kinds)) as log:
            if kinds and _foreign_files(tif, path, kinds):
                broken = "name other files outside this file's folder, or files that are not regular files"
            else:
                try:
                    series = tif.series
                except Exception as exc:
                    if not kinds:
                        raise CpsnakeError(
                            f"{path}: found a TIFF whose data cannot be read ({library_text(exc)}); expected "
                            f"{expected}; the file is truncated or corrupt: copy or export it again") from None
                    broken = "cannot be parsed"
        if kinds and broken is None:
            broken = _mismatch(tif, series, kinds, log.records)
        if not kinds and log.errors:  # a page tifffile could not read is skipped or zeroed: a damaged file
            raise CpsnakeError(
                f"{path}: found a TIFF whose data cannot be decoded ({library_text(log.errors[0])}); expected "
                f"{expected}; the file is truncated or corrupt: copy or export it again")
        if broken is None:
            if not series:
                raise CpsnakeError(f"{path}: found a TIFF without image data; expected {expected}; {fix}")
            try:
                return TiffHeader(tif, series[0], _tiff_meta(tif, series[0].axes))
            except Exception as exc:  # calibration read from tags or metadata that cannot be parsed
                if not kinds:
                    raise CpsnakeError(
                        f"{path}: found a TIFF whose resolution tags cannot be read ({library_text(exc)}); expected "
                        f"{expected}; the file is truncated or corrupt: copy or export it again") from None
                broken = "cannot be parsed"
        name = " and ".join(_METADATA_SERIES[k] for k in kinds[:2])
        try:
            meta = _tiff_meta(tif)
        except Exception:  # the calibration lives in the same broken metadata
            meta = dict(_NO_META)
        tif.close()
        tif = _open_tifffile(path, expected=expected, fix=fix, sniffed=True, **_GENERIC)
        with _TiffLog(logging.WARNING, swallow=True) as log:
            try:
                series = tif.series
            except Exception:
                log.records.append("generic series")
        if log.records or not series:
            raise CpsnakeError(
                f"{path}: found a TIFF whose {name} metadata {broken} and whose pages cannot be read either; "
                f"expected {expected}; the file is truncated or corrupt: copy or export it again")
        first = series[0]
        if len(first.pages) > 1:
            raise CpsnakeError(
                f"{path}: found {name} metadata that {broken}, over {len(first.pages)} pages of "
                f"{' x '.join(str(n) for n in first.pages[0].shape)} whose order (channels, slices, frames) only "
                f"the metadata can tell; expected metadata that match the pages; the metadata, not the pixel data, "
                f"are broken: {RESAVE_METADATA}")
        shape = " x ".join(str(n) for n in first.shape)
        ignored = (f"{path}: found {name} metadata that {broken}; expected metadata that match the file's pages; "
                   f"read the pixels as the file stores them (one page of {shape}, axes {first.axes}) without "
                   f"them; to keep the image's axes, {RESAVE_METADATA}")
        return TiffHeader(tif, first, meta, ignored)
    except BaseException:
        tif.close()
        raise


def _tiff(
    path: str | os.PathLike,
    *,
    expected: str,
    fix: str,
    max_pixels: int | None,
    per_pixel: int = 1,
    what: str = "image",
    sniffed: bool = False,
) -> tuple["np.ndarray", dict]:
    """Read the first series of a TIFF (:func:`open_tiff`) after checking its declared shape, its tile
    (or strip) shape and its type (before decoding).

    Returns the data and ``{"axes", "pixel_size", "unit", "calibration_problem", "has_alpha", ...}``. Every
    failure -- not a TIFF, truncated, corrupt, complex or non-numeric samples, more samples than
    ``max_pixels * per_pixel`` in the image or in one tile -- is one CpsnakeError naming ``path``,
    ``expected`` and ``fix``. Broken metadata set aside are one warning, emitted after the read succeeded.
    """
    import logging

    head = open_tiff(path, expected=expected, fix=fix, sniffed=sniffed)
    with contextlib.closing(head), _TiffLog(logging.ERROR) as log:
        series = head.series
        try:
            dtype = series.dtype
            if dtype is None or dtype.kind not in "buif":
                raise CpsnakeError(
                    f"{path}: found pixels of type {dtype}; expected integer or real values ({expected}); {fix}"
                )
            limits.check_samples(path, series.shape, limit=max_pixels, per_pixel=per_pixel, what=what)
            chunk = _tile_samples(path, series, limit=max_pixels, per_pixel=per_pixel)
            # codecs may not expand beyond the data and one decoded tile
            with limits.decode_budget(2 * (series.size + chunk) * dtype.itemsize):
                data = series.asarray(maxworkers=1)
            axes = series.axes
            page = series.pages[0] if series.pages else head.tif.pages.first
            has_alpha = bool(getattr(page, "extrasamples", ())) and "S" in axes
        except CpsnakeError:
            raise
        except MemoryError:
            raise CpsnakeError(
                f"{path}: found compressed data that expand beyond the size the TIFF header declares (or memory ran "
                "out while decoding); expected a TIFF whose data match its header; the file is corrupt or hostile: "
                "export it again from the original"
            ) from None
        except Exception as exc:  # tifffile and its codecs raise many types for truncated or corrupt files
            raise CpsnakeError(
                f"{path}: found a TIFF whose data cannot be read ({library_text(exc)}); expected {expected}; "
                "the file is truncated or corrupt: copy or export it again"
            ) from None
    if log.errors:
        raise CpsnakeError(
            f"{path}: found a TIFF whose data cannot be decoded ({library_text(log.errors[0])}); expected {expected}; "
            "the file is truncated or corrupt: copy or export it again"
        )
    meta = dict(head.meta, axes=axes, has_alpha=has_alpha)
    if head.ignored:
        warnings.warn(head.ignored, CpsnakeWarning, stacklevel=3)
    if meta["calibration_problem"]:
        warnings.warn(calibration_warning(path, meta["calibration_problem"]), CpsnakeWarning, stacklevel=3)
    if meta["stack_problem"]:
        warnings.warn(stack_calibration_warning(path, meta["stack_problem"]), CpsnakeWarning, stacklevel=3)
    return data, meta


def _tile_samples(path, series, *, limit: int | None, per_pixel: int = 1) -> int:
    """Samples in one tile (or strip) of ``series``, refused above ``limit * per_pixel`` (see
    :func:`cpsnake.io.limits.check_chunk`): a decoder makes a whole tile at a time, whatever the image's size."""
    import math

    chunk = tuple(int(n) for n in series.keyframe.chunks)
    limits.check_chunk(path, chunk, limit=limit, per_pixel=per_pixel, what="TIFF tiles", image=series.shape)
    return math.prod(chunk)


def _positive_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and value < float("inf") else None


def _is_tiff(path: str | os.PathLike) -> bool:
    return _format(_head(path)) == "tiff"


def _head(path: str | os.PathLike, n: int = 16) -> bytes:
    """The first ``n`` bytes of a regular file (b"" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def read_tiff(
    path: str | os.PathLike,
    *,
    expected: str,
    fix: str | None = None,
    max_pixels: int | None = None,
    per_pixel: int = 1,
    what: str = "image",
) -> tuple["np.ndarray", dict]:
    """Read a TIFF's first series and ``{"pixel_size": (y, x) | None, "unit": str | None, "calibration_problem"}``.

    ``expected`` names what the file should be (e.g. ``"a flows TIFF written by `cpsnake infer`"``) and
    ``fix`` what to do (default: pass such a file). A missing, non-regular, non-TIFF, truncated or
    corrupt file, complex samples, or more than ``max_pixels * per_pixel`` samples (checked from the
    header, before decoding; see :mod:`cpsnake.io.limits`) is a one-line CpsnakeError that says it.
    """
    data, meta = _tiff(path, expected=expected, fix=fix or f"pass {expected}", max_pixels=max_pixels,
                       per_pixel=per_pixel, what=what)
    return data, {k: meta[k] for k in ("pixel_size", "unit", "calibration_problem", "network_scale", "z_step",
                                       "frame_interval", "axes")}


FLOWS_FIX = "pass the FLOWS.tif that `cpsnake infer` wrote for this image (run `cpsnake infer` again if it is damaged)"


def read_flows(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple["np.ndarray", dict]:
    """Read a flows file (see :func:`write_flows`) and ``{"pixel_size", "unit", "network_scale", "kind", "stack_axes",
    "z_step"}``.

    ``kind`` ``"2d"``: float32 ``(3, Y, X)``; ``"planes"``: ``(S, 3, Y, X)``, one (dY, dX, cellprob) per plane of a Z
    stack or time series (``stack_axes`` "Z" or "T"); ``"3d"``: ``(4, Z, Y, X)`` = dZ, dY, dX, cellprob. The limit
    ``max_pixels`` counts pixels (voxels): a flows file holds 3 (or 4) samples per pixel. Complex, integer or
    non-finite values are an error (never cast silently).
    """
    import numpy as np

    what = "a flows TIFF written by `cpsnake infer` (float32, 3 x Y x X, or per plane / 3-D for stacks)"
    flows, meta = read_tiff(path, expected=what, fix=FLOWS_FIX, max_pixels=max_pixels, per_pixel=4, what="flows file")
    axes = meta.pop("axes") or ""
    stack_axes = "T" if axes.startswith("T") else "Z" if axes.startswith("Z") else ""  # as write_flows names them
    if flows.ndim == 3 and flows.shape[0] == 3:
        kind, stack_axes = "2d", ""
    elif flows.ndim == 4 and flows.shape[1] == 3 and stack_axes:
        kind = "planes"
    elif flows.ndim == 4 and flows.shape[1] == 4 and stack_axes == "Z":
        kind, flows = "3d", flows.transpose(1, 0, 2, 3)
    else:
        raise CpsnakeError(
            f"{path}: found an array of shape {flows.shape} (axes {axes!r}), expected flows (3, Y, X) = dY, dX, cellprob, "
            f"a stack's (Z, 3, Y, X) or 3-D flows (Z, 4, Y, X); {FLOWS_FIX}"
        )
    if flows.dtype.kind != "f":
        raise CpsnakeError(f"{path}: found flows of type {flows.dtype}, expected real floats (float32); {FLOWS_FIX}")
    flows = flows.astype(np.float32, copy=False)
    bad = int(flows.size - np.count_nonzero(np.isfinite(flows)))
    if bad:
        raise CpsnakeError(
            f"{path}: found {bad} NaN or infinite flow values, expected finite flows; {FLOWS_FIX}; if the network "
            "itself gives NaN, check the weights file"
        )
    meta.update(kind=kind, stack_axes=stack_axes)
    return flows, meta


LABEL_UINT16_MAX = 65535
LABEL_FLOAT32_MAX = 16_777_216  # integers above this are not exact in float32
CLASSIC_TIFF_BYTES = 2**32 - 2**25  # label data above this go to a BigTIFF (classic TIFF offsets are 32-bit)


def label_dtype(n_labels: int, path: object = None) -> "np.dtype":
    """uint16 up to 65,535 labels; float32 above (ImageJ 1 has no 32-bit integer type; exact to 2**24).

    ``n_labels`` is the largest label; above 16,777,216 a CpsnakeError (naming ``path`` when given).
    """
    import numpy as np

    if n_labels <= LABEL_UINT16_MAX:
        return np.dtype(np.uint16)
    if n_labels <= LABEL_FLOAT32_MAX:
        return np.dtype(np.float32)
    where = f"{path}: " if path is not None else ""
    raise CpsnakeError(
        f"{where}found label {n_labels}, above {LABEL_FLOAT32_MAX:,}, the largest whole number an ImageJ label image "
        "(float32) holds exactly; expected labels up to that; number the objects from 1 (or split the image)"
    )


def write_labels(
    path: str | os.PathLike,
    labels: "np.ndarray",
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    stack_axes: str | None = None,
    z_step: float | None = None,
    frame_interval: float | None = None,
) -> "np.dtype":
    """Write a label image ``(Y, X)``, stack ``(Z, Y, X)`` / ``(T, Y, X)`` or ``(T, Z, Y, X)`` (0 = background) as an
    ImageJ hyperstack TIFF; return the dtype used.

    ``stack_axes`` names the planes: ``"Z"`` (default for 3-D), ``"T"`` or ``"TZ"`` (4-D). ``z_step`` (in
    ``unit``) and ``frame_interval`` (seconds) go to ImageJ's ``spacing`` and ``finterval``, so Fiji shows the
    voxel depth and the frame rate. uint16 when the largest label is at most 65,535, else float32 (exact up
    to 16,777,216), with a message on stderr saying so, because ImageJ 1 has no 32-bit integer images.
    Label data beyond 4 GB (:data:`CLASSIC_TIFF_BYTES`) are written as a BigTIFF OME-TIFF, with a message:
    ImageJ 1 cannot open BigTIFF; Fiji opens it with Bio-Formats.
    """
    import numpy as np

    labels = np.asarray(labels)
    stack_axes = stack_axes if stack_axes is not None else {2: "", 3: "Z", 4: "TZ"}.get(labels.ndim, "")
    if labels.ndim not in (2, 3, 4) or labels.ndim != 2 + len(stack_axes) or stack_axes not in ("", "Z", "T", "TZ"):
        raise CpsnakeError(f"{path}: labels of shape {labels.shape} with stack axes {stack_axes!r}, expected (Y, X), "
                           "(Z, Y, X), (T, Y, X) or (T, Z, Y, X)")
    top = int(labels.max()) if labels.size else 0
    dtype = label_dtype(top, path)
    warn_label_dtype(path, top, dtype)
    extra = {}
    if z_step and "Z" in stack_axes:
        extra["spacing"] = float(z_step)
    if frame_interval and "T" in stack_axes:
        extra["finterval"] = float(frame_interval)
    if labels.size * dtype.itemsize > CLASSIC_TIFF_BYTES:
        _write_big_labels(path, labels.astype(dtype), stack_axes + "YX", pixel_size, unit)
        return dtype
    write_tiff(path, labels.astype(dtype), axes=stack_axes + "YX", pixel_size=pixel_size, unit=unit,
               metadata=extra or None)
    return dtype


def warn_label_dtype(path, top: int, dtype) -> None:
    """The stderr message of labels written as float32 (more than 65,535)."""
    import sys

    import numpy as np

    if dtype == np.float32:
        print(f"{path}: {top} labels exceed uint16 (65,535); written as float32, exact up to 16,777,216 "
              "(ImageJ 1 has no 32-bit integer type)", file=sys.stderr)


BIG_TILE = 1024  # tile side of a BigTIFF label image


def big_labels_metadata(path, axes: str, nbytes: int, pixel_size, unit) -> dict:
    """The OME metadata of a BigTIFF label image, after the message saying why it is one (see
    :func:`_write_big_labels`)."""
    import sys

    meta: dict = {"axes": axes}
    if pixel_size is not None:
        meta.update(PhysicalSizeY=float(pixel_size[0]), PhysicalSizeX=float(pixel_size[1]),
                    PhysicalSizeYUnit=_ome_unit(unit), PhysicalSizeXUnit=_ome_unit(unit))
    print(f"{path}: {nbytes / 1e9:.1f} GB of labels exceed the 4 GB of a classic TIFF; written as a BigTIFF "
          "(OME-TIFF), which ImageJ 1 cannot open: in Fiji use File > Import > Bio-Formats, or write OME-Zarr "
          "labels (cpsnake segment --ome-zarr) for napari and QuPath", file=sys.stderr)
    return meta


def _write_big_labels(path, labels: "np.ndarray", axes: str, pixel_size, unit) -> None:
    """Labels beyond the 4 GB of a classic TIFF: a BigTIFF OME-TIFF (tiles of 1024 px, zlib), calibrated in its
    OME-XML. ImageJ 1 cannot open BigTIFF (tested with Debian's 1.53t); Fiji opens it with Bio-Formats."""
    import tifffile

    meta = big_labels_metadata(path, axes, labels.nbytes, pixel_size, unit)
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, labels, bigtiff=True, ome=True, metadata=meta, tile=(BIG_TILE, BIG_TILE),
                         compression="zlib")


def _ome_unit(unit: str | None) -> str:
    """A unit as OME-XML names it (µm for ImageJ's micron)."""
    return {"micron": "µm", "um": "µm", "μm": "µm", None: "pixel", "": "pixel"}.get(unit, unit)


def read_labels(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple["np.ndarray", dict]:
    """Read a label image as int32/int64 ``(Y, X)``, ``(Z, Y, X)`` or ``(T, Z, Y, X)`` plus ``{"pixel_size", "unit"}``.

    Accepted (:func:`cpsnake.io.label_check.check_labels`): unsigned or signed integers without negative values,
    and floats holding only whole non-negative numbers. Bool masks, complex, negative, fractional or NaN values
    are a CpsnakeError with the fix. The declared size is checked against ``max_pixels`` before decoding.
    """
    import numpy as np

    what = "a label TIFF (0 = background, 1..N = objects)"
    data, meta = read_tiff(path, expected=what, fix=LABELS_FIX, max_pixels=max_pixels, what="label image")
    data = np.squeeze(data)
    if data.ndim not in (2, 3, 4):
        raise CpsnakeError(
            f"{path}: found labels of shape {data.shape}, expected (Y, X), (Z, Y, X) or (T, Z, Y, X); save one label "
            "image per image (a single plane, a stack or a hyperstack, without channels)"
        )
    check_labels(data, path, source="file")
    out = data.astype(np.int64 if data.size and data.max() > 2**31 - 1 else np.int32)
    return out, meta


# --- Reading input images --------------------------------------------------------------------------
# The format is told by the file's first bytes, not its extension: a PNG named .tif reads as a PNG, and
# a text file named .tif is reported as "not an image" with what it starts with.

IMAGE_FORMATS = "TIFF, OME-TIFF, PNG or JPEG"
_MAGIC = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
)
_CHANNEL_AXES = "CS"  # tifffile: C = channel, S = sample (RGB)
_STACK_AXES = "ZT"  # planes of a stack (depth or time)
_UNKNOWN_AXES = "QIR"  # tifffile's names for axes without metadata (a numpy array saved as is)
MAX_GUESSED_CHANNELS = 3


# formats cpsnake does not read, told by their first bytes, so that a message can say what a file is
_OTHER_MAGIC = (
    (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"), (b"\x89HDF", "an HDF5 file"), (b"ZISRAWFILE", "a Zeiss CZI file"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"), (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"8BPS", "a Photoshop file"), (b"\x93NUMPY", "a NumPy array file"),
)


def _format(head: bytes) -> str | None:
    """``"tiff"``, ``"png"`` or ``"jpeg"`` from a file's first bytes, else None."""
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def describe(path: str | os.PathLike) -> str:
    """What a file that is not the image expected looks like, never quoting its bytes: ``"found a PNG"``,
    ``"found a ZIP archive"``, ``"found text"``, ``"found an empty file"`` or ``"its first bytes match no image
    format"``."""
    head = _head(path, 64)
    fmt = _format(head)
    if fmt:
        return f"found a {fmt.upper()}"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "found a WebP image"
    for magic, kind in _OTHER_MAGIC:
        if head.startswith(magic):
            return f"found {kind}"
    if not head:
        return "found an empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = head[: exc.start].decode("utf-8") if exc.start >= 32 else None
    if text is not None and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return "found text"
    return "its first bytes match no image format"


def _sniff(path: Path) -> str:
    """Format of ``path`` from its first bytes: ``"tiff"``, ``"png"`` or ``"jpeg"``; else a CpsnakeError.

    ``path`` must be a regular file (checked with ``os.stat`` first: a FIFO or device is refused, not read).
    The error says what the file looks like (text, a ZIP archive, ...) without quoting its bytes.
    """
    expected = f"an image ({IMAGE_FORMATS})"
    st = files.regular_file(path, expected)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise CpsnakeError(f"{path}: cannot be opened ({exc.strerror}); expected a readable image file; "
                           "check its permissions") from None
    if not head or st.st_size == 0:
        raise CpsnakeError(f"{path}: found an empty file (0 bytes); expected {expected}; re-export or re-copy it")
    fmt = _format(head)
    if fmt:
        return fmt
    raise CpsnakeError(
        f"{path}: not an image ({describe(path)}, not a TIFF, PNG or JPEG); expected {IMAGE_FORMATS} "
        "whatever the file name says; pass the image itself or convert it (e.g. Fiji: File > Save As > Tiff)"
    )


_PNG_SAMPLES = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}  # colour type -> samples per pixel once decoded (palette: up to RGBA)


def png_shape(path: str | os.PathLike, head: bytes) -> tuple[int, int, int, int]:
    """(height, width, samples per pixel, bytes per sample) from a PNG's first 33 bytes (signature + IHDR).

    Nothing is decoded. A missing or malformed IHDR chunk is a CpsnakeError.
    """
    import struct

    if len(head) < 33 or head[12:16] != b"IHDR":
        raise CpsnakeError(f"{path}: found a PNG without its IHDR header; expected a complete PNG; "
                           "the file is truncated or corrupt: copy or export it again")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if width == 0 or height == 0 or colour not in _PNG_SAMPLES or depth not in (1, 2, 4, 8, 16):
        raise CpsnakeError(f"{path}: found a PNG header of {width} x {height} pixels, bit depth {depth}, colour type "
                           f"{colour}; expected a valid PNG; the file is corrupt: copy or export it again")
    return height, width, _PNG_SAMPLES[colour], 2 if depth == 16 else 1


@contextlib.contextmanager
def pillow_without_limit() -> Iterator[None]:
    """Pillow refuses images above 2 x 89 million pixels on its own; cpsnake's max_pixels decides instead."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _read_png_jpeg(path: Path, fmt: str, max_pixels: int | None) -> tuple["np.ndarray", str, bool]:
    """(data, axes, has_alpha) of a PNG (imagecodecs: 8 and 16 bit kept, grey and RGB) or a JPEG (Pillow).

    The size declared in the header (PNG IHDR, JPEG frame header read by Pillow without decoding) is
    checked against ``max_pixels`` first; a PNG file much larger than its decoded pixels is refused
    before it is read.
    """
    import numpy as np

    what = fmt.upper()
    try:
        if fmt == "png":
            import imagecodecs  # Pillow would cut 16-bit RGB PNGs to 8 bits

            with open(path, "rb") as fh:
                head = fh.read(33)
            h, w, spp, nbytes = png_shape(path, head)
            limits.check_samples(path, (h, w, spp) if spp > 1 else (h, w), limit=max_pixels, what="PNG")
            raw = files.read_bytes(path, f"a {what} of {h} x {w} pixels", limit=2 * h * (w * spp * nbytes + 1) + 2**24)
            with limits.decode_budget(2 * h * w * spp * nbytes + len(raw)):
                data = imagecodecs.png_decode(raw)
        else:
            from PIL import Image  # raises on a truncated JPEG (libjpeg alone only warns)

            with pillow_without_limit(), Image.open(path) as im:
                w, h = im.size
                bands = len(im.getbands())
                limits.check_samples(path, (h, w, bands) if bands > 1 else (h, w), limit=max_pixels, what="JPEG")
                with limits.decode_budget(3 * h * w * (bands + 3)):  # the decoded image, RGB and array copies
                    im.load()
                    if im.mode not in ("L", "RGB"):
                        im = im.convert("RGB")
                    data = np.asarray(im)
    except CpsnakeError:
        raise
    except MemoryError:
        raise CpsnakeError(
            f"{path}: found a {what} whose compressed data expand beyond the size its header declares (or memory ran "
            f"out while decoding); expected a {what} whose data match its header; the file is corrupt or hostile: "
            "export it again from the original") from None
    except Exception as exc:
        raise CpsnakeError(
            f"{path}: found a {what} whose data cannot be decoded ({library_text(exc)}); expected a complete {what}; "
            "the file is truncated or corrupt: copy or export it again"
        ) from None
    if data.ndim == 2:
        return data, "YX", False
    # grey+alpha (2 samples) or RGB+alpha (4 samples): the last sample is alpha
    return data, "YXS", data.shape[-1] in (2, 4)


def _read_ome_zarr(path: Path, max_pixels: int | None) -> tuple["np.ndarray", dict]:
    """A 2-D OME-Zarr image read whole (:mod:`cpsnake.io.regions`), its size (and its chunks') checked from the metadata
    first; the read refuses NaN and infinite values."""
    from cpsnake.io import regions

    with regions.open_image(path, max_pixels=max_pixels) as img:
        if img.stack_axes:
            raise CpsnakeError(f"{path}: found an OME-Zarr stack (axes {img.meta['axes']!r}, shape {img.meta['shape']}); "
                               "expected a 2-D OME-Zarr image (C, Y, X); save the stack as an ImageJ or OME-TIFF "
                               "hyperstack")
        limits.check_samples(path, img.meta["shape"], limit=max_pixels)
        data = img.read(0, img.shape[1], 0, img.shape[2])
        meta = dict(img.meta)
    meta.pop("levels", None)
    return data, meta


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple["np.ndarray", dict]:
    """Read a 2-D image as ``(C, Y, X)``, a stack as ``(Z, C, Y, X)`` or a time series of stacks as
    ``(T, Z, C, Y, X)``, in its own dtype.

    Formats (told by content, not by extension): TIFF / OME-TIFF (first image series, full
    resolution; axes from ImageJ, OME or tifffile metadata), PNG (8 and 16 bit) and JPEG; and 2-D
    OME-Zarr folders (NGFF 0.4 / 0.5, the first multiscale image's full resolution, :mod:`cpsnake.io.regions`).

    Axes: ``C`` and ``S`` (RGB samples) become C; grey images get C = 1; an alpha sample (RGBA,
    grey+alpha) is dropped. One ``Z`` or ``T`` axis makes a stack ``(Z, C, Y, X)`` whose planes are depths
    or time points (``meta["stack_axes"]`` says which: ``"Z"`` or ``"T"``); both make ``(T, Z, C, Y, X)``
    (``"TZ"``); a 2-D image has ``""``. An axis without metadata (tifffile's ``Q``/``I``, e.g. a numpy
    array saved as it is) is taken as channels when it has at most 3 entries; with more it is refused
    (depths, time points or channels cannot be told apart), with how to name the axes.
    Singleton axes are dropped. Two axes of one kind, or any other axis, are an error.

    Limits: only a regular file is opened (a FIFO or device is refused at once), and the number of
    samples its header declares (all axes) must be at most ``max_pixels`` (default: see
    :mod:`cpsnake.io.limits`), checked before any pixel is decoded.

    Returns
    -------
    data : ndarray
        ``(C, Y, X)`` or ``(Z, C, Y, X)``; interleaved samples (RGB stored as Y, X, 3) come back as
        a strided view rather than a copy; bool data comes back as uint8.
    meta : dict
        ``pixel_size`` ((y, x) or None), ``unit`` (str or None), ``axes`` (the file's axes, e.g.
        ``"YXS"``), ``shape`` (the file's shape), ``dtype`` (str), ``format`` (``"tiff"``, ``"png"``,
        ``"jpeg"``), ``dropped_alpha`` (bool), ``calibration_problem`` (None, or the unusable stored pixel
        size that was ignored; a warning names it too), ``stack_axes`` (``""``, ``"Z"``, ``"T"`` or
        ``"TZ"``), ``z_step`` (the distance between Z planes in ``unit``: OME ``PhysicalSizeZ`` or ImageJ
        ``spacing``; None if not stored), ``frame_interval`` and ``time_unit`` (OME ``TimeIncrement`` or
        ImageJ ``finterval``; None if not stored).

    Raises
    ------
    CpsnakeError
        Missing, non-regular, empty, truncated, corrupt or non-image files; more samples than
        ``max_pixels``; NaN or infinite values; complex data; shapes that are not 2-D images or stacks.
    """
    import numpy as np

    path = Path(path)
    from cpsnake.io import regions

    if regions.is_ome_zarr(path):
        return _read_ome_zarr(path, max_pixels)
    fmt = _sniff(path)
    pixel_size = unit = problem = z_step = frame_interval = time_unit = None
    if fmt == "tiff":
        data, tmeta = _tiff(path, expected="a complete TIFF image", fix="convert the image (e.g. Fiji: Image > Type > 32-bit)",
                            max_pixels=max_pixels, sniffed=True)
        axes, pixel_size, unit = tmeta["axes"], tmeta["pixel_size"], tmeta["unit"]
        has_alpha, problem = tmeta["has_alpha"], tmeta["calibration_problem"]
        z_step, frame_interval, time_unit = tmeta["z_step"], tmeta["frame_interval"], tmeta["time_unit"]
    else:
        data, axes, has_alpha = _read_png_jpeg(path, fmt, max_pixels)
    shape, dtype = tuple(int(n) for n in data.shape), data.dtype
    meta = {
        "pixel_size": pixel_size,
        "unit": unit,
        "axes": axes,
        "shape": shape,
        "dtype": str(dtype),
        "format": fmt,
        "dropped_alpha": False,
        "calibration_problem": problem,
        "z_step": z_step,
        "frame_interval": frame_interval,
        "time_unit": time_unit,
        "stack_axes": "",
    }
    if dtype.kind not in "buif":
        raise CpsnakeError(
            f"{path}: found pixels of type {dtype}; expected integer or real intensities (uint8, uint16, float32, ...); "
            "convert the image (e.g. Fiji: Image > Type > 32-bit)"
        )
    if data.ndim != len(axes) or "Y" not in axes or "X" not in axes:
        raise CpsnakeError(f"{path}: found shape {shape} with axes {axes!r}; expected an image with Y and X axes; "
                           "save the image again with its axes (e.g. Fiji: File > Save As > Tiff)")
    if has_alpha and axes[-1] == "S" and data.shape[-1] in (2, 4):
        data = data[..., :-1]
        meta["dropped_alpha"] = True

    # drop singleton axes except Y and X
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape(tuple(data.shape[i] for i in keep))
    axes = "".join(axes[i] for i in keep)
    axes = axes.replace("S", "C")
    named = list(axes)
    for i, a in enumerate(named):
        if a in _UNKNOWN_AXES:  # no metadata: a few entries are channels; more could be Z, T or C
            if data.shape[i] > MAX_GUESSED_CHANNELS or "C" in named:
                raise CpsnakeError(
                    f"{path}: found {data.shape[i]} planes on an axis without a name (shape {shape}, axes "
                    f"{meta['axes']!r}); expected the stack's axes named (Z, T or C); save it as an ImageJ hyperstack "
                    "(Fiji: Image > Properties, set Slices (z) / Frames (t) / Channels, then File > Save As > Tiff; "
                    "Python: tifffile.imwrite(path, data, imagej=True, metadata={'axes': 'ZYX'}))"
                )
            named[i] = "C"
    axes = "".join(named)
    unknown = [a for a in axes if a not in "TZCYX"]
    if unknown or any(axes.count(a) > 1 for a in "TZC"):
        raise CpsnakeError(
            f"{path}: found {len(shape)} dimensions {shape} with axes {meta['axes']!r}; expected a 2-D image (Y, X) "
            "with channels, a stack of such planes (Z or T), or a time series of Z stacks (T, Z); save the image "
            "again with its axes named (e.g. Fiji: Image > Hyperstacks > Re-order Hyperstack, then File > Save As > "
            "Tiff), or one plane, channel set or time series per file"
        )
    if "C" not in axes:
        data, axes = data[np.newaxis], "C" + axes
    stack_axes = "".join(a for a in "TZ" if a in axes)
    meta["stack_axes"] = stack_axes
    order = [axes.index(a) for a in stack_axes + "CYX"]
    data = data.transpose(order)  # a view: interleaved RGB (Y, X, 3) is not copied
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise CpsnakeError(
                f"{path}: found {bad} NaN or infinite pixel values; expected finite intensities; "
                "replace them first (e.g. Fiji: Process > Math > Remove NaNs, or set them to the background value)"
            )
    return data, meta
