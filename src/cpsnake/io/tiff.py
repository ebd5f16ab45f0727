"""TIFF files: opened with hostile metadata in mind, read (first series, full resolution) and written (ImageJ).

Axis order inside cpsnake: images (C, Y, X), stacks (Z, C, Y, X), labels (Y, X) or (Z, Y, X), flows (3, Y, X)
= dY, dX, cellprob logits. (x, y) order appears only at the ImageJ boundary.

Reading. :func:`open_tiff` reads a TIFF's header and chooses the series to read, decoding no pixel; it is the
one door every TIFF reader goes through (the whole-image readers here and in :mod:`cpsnake.io.inputs`, the
region reader :mod:`cpsnake.io.regions`, the header inspection of :func:`cpsnake.io.inputs.read_header`).
Metadata (ImageJ, OME-XML, tifffile's shape and the other layouts tifffile knows) that cannot be parsed, that
declare more pixels than the pages hold, or that name other files outside the file's folder are set aside:
a single page is then read as stored, with a warning; several pages, whose order only the metadata could
tell, are refused. :func:`read_series` then checks the declared shape, the tile (or strip) shape and the
sample type against :mod:`cpsnake.io.limits` before decoding, and decodes under a budget; every failure is
one line naming the file, what was expected and the fix. :func:`read_tiff` is the reader of the files
cpsnake writes between steps (flows, labels, normalized images).

Writing. ImageJ 1 reads calibration only from ImageJ-style TIFF tags (resolution + ``unit``), not OME-XML,
so every TIFF cpsnake writes (:func:`write_tiff`) is an ImageJ hyperstack with its axes, pixel size and
unit, written through :func:`cpsnake.io.outputs.atomic_output`: under a temporary name in the destination
folder and renamed only when complete, so no partial file ever sits under a final name.

tifffile is imported inside the functions that use it: a command that reads only a PNG does not pay for it.
"""

from __future__ import annotations

import contextlib
import glob
import html
import logging
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

import numpy as np

from cpsnake.errors import CpsnakeError, CpsnakeWarning, library_text
from cpsnake.io import files, limits
from cpsnake.io.calibration import (
    calibration,
    calibration_warning,
    stack_calibration,
    stack_calibration_problem,
    stack_calibration_warning,
)
from cpsnake.io.formats import describe, is_tiff
from cpsnake.io.outputs import atomic_output

if TYPE_CHECKING:
    import tifffile

__all__ = [
    "write_tiff",
    "imagej_tiff_options",
    "TiffHeader",
    "open_tiff",
    "read_series",
    "read_tiff",
    "RESAVE_METADATA",
]


# --- writing: ImageJ hyperstacks ------------------------------------------------------------------
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
    array: np.ndarray,
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
    import tifffile

    meta, kwargs = imagej_tiff_options(axes, pixel_size, unit, metadata)
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(array), imagej=True, metadata=meta, **kwargs)


def imagej_tiff_options(
    axes: str, pixel_size: tuple[float, float] | None = None, unit: str | None = None, metadata: dict | None = None
) -> tuple[dict, dict]:
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


# --- reading ------------------------------------------------------------------------------------


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
        self.logger = logging.getLogger("tifffile")
        self.logger.addFilter(self._filter)
        return self

    def _filter(self, record) -> bool:
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
    "shaped": "tifffile shape",
    "lsm": "Zeiss LSM",
    "mmstack": "Micro-Manager",
    "ome": "OME-XML",
    "imagej": "ImageJ",
    "ndtiff": "NDTiff",
    "fluoview": "FluoView",
    "stk": "MetaMorph STK",
    "sis": "Olympus SIS",
    "svs": "Aperio SVS",
    "scn": "Leica SCN",
    "qpi": "PerkinElmer QPI",
    "bif": "Roche BIF",
    "avs": "Argos AVS",
    "eer": "EER",
    "philips": "Philips",
    "scanimage": "ScanImage",
    "nih": "NIH Image",
    "mdgel": "MD Gel",
}
_GENERIC = {f"is_{k}": False for k in (*_METADATA_SERIES, "uniform")}  # tifffile's generic series: the pages alone
RESAVE_METADATA = (
    "open the file in Fiji, check Channels, Slices and Frames in Image > Properties and save it again "
    "(File > Save As > Tiff)"
)


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
    try:
        ElementTree.fromstring(tif.ome_metadata or "")
    except Exception:  # ParseError, and whatever a hostile document raises
        return True
    return False


def _declares_more(series, size: int) -> bool:
    """True when ``series`` declares more pixels than its pages hold (tifffile fills the rest with zeros)."""
    pages = list(series.pages)
    if any(p is None for p in pages):
        return True
    if series.dataoffset is not None:  # uncompressed in one piece: beyond the file's end, and beyond what the
        # pages declare (pages cut short themselves are a truncated file, which the data reader reports)
        stored = max((int(o) + int(n) for p in pages for o, n in zip(p.dataoffsets, p.databytecounts)), default=0)
        return int(series.dataoffset) + int(series.nbytes) > size and stored <= size
    return int(series.size) > sum(math.prod(p.shape) for p in pages)


_NO_META = dict(
    pixel_size=None,
    unit=None,
    calibration_problem=None,
    z_step=None,
    frame_interval=None,
    time_unit=None,
    network_scale=None,
    stack_problem=None,
)


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
        if not sniffed and not is_tiff(path):
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
                            f"{expected}; the file is truncated or corrupt: copy or export it again"
                        ) from None
                    broken = "cannot be parsed"
        if kinds and broken is None:
            broken = _mismatch(tif, series, kinds, log.records)
        if not kinds and log.errors:  # a page tifffile could not read is skipped or zeroed: a damaged file
            raise CpsnakeError(
                f"{path}: found a TIFF whose data cannot be decoded ({library_text(log.errors[0])}); expected "
                f"{expected}; the file is truncated or corrupt: copy or export it again"
            )
        if broken is None:
            if not series:
                raise CpsnakeError(f"{path}: found a TIFF without image data; expected {expected}; {fix}")
            try:
                return TiffHeader(tif, series[0], _tiff_meta(tif, series[0].axes))
            except Exception as exc:  # calibration read from tags or metadata that cannot be parsed
                if not kinds:
                    raise CpsnakeError(
                        f"{path}: found a TIFF whose resolution tags cannot be read ({library_text(exc)}); expected "
                        f"{expected}; the file is truncated or corrupt: copy or export it again"
                    ) from None
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
                f"expected {expected}; the file is truncated or corrupt: copy or export it again"
            )
        first = series[0]
        if len(first.pages) > 1:
            raise CpsnakeError(
                f"{path}: found {name} metadata that {broken}, over {len(first.pages)} pages of "
                f"{' x '.join(str(n) for n in first.pages[0].shape)} whose order (channels, slices, frames) only "
                f"the metadata can tell; expected metadata that match the pages; the metadata, not the pixel data, "
                f"are broken: {RESAVE_METADATA}"
            )
        shape = " x ".join(str(n) for n in first.shape)
        ignored = (
            f"{path}: found {name} metadata that {broken}; expected metadata that match the file's pages; "
            f"read the pixels as the file stores them (one page of {shape}, axes {first.axes}) without "
            f"them; to keep the image's axes, {RESAVE_METADATA}"
        )
        return TiffHeader(tif, first, meta, ignored)
    except BaseException:
        tif.close()
        raise


def read_series(
    path: str | os.PathLike,
    *,
    expected: str,
    fix: str,
    max_pixels: int | None,
    per_pixel: int = 1,
    what: str = "image",
    sniffed: bool = False,
) -> tuple[np.ndarray, dict]:
    """Read the first series of a TIFF (:func:`open_tiff`) after checking its declared shape, its tile (or strip)
    shape and its type (before decoding). ``sniffed``: the caller already checked that the file is a regular file
    that starts like a TIFF.

    Returns the data and ``{"axes", "pixel_size", "unit", "calibration_problem", "has_alpha", ...}``. Every
    failure -- not a TIFF, truncated, corrupt, complex or non-numeric samples, more samples than
    ``max_pixels * per_pixel`` in the image or in one tile -- is one CpsnakeError naming ``path``,
    ``expected`` and ``fix``. Broken metadata set aside are one warning, emitted after the read succeeded.
    """
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
    chunk = tuple(int(n) for n in series.keyframe.chunks)
    limits.check_chunk(path, chunk, limit=limit, per_pixel=per_pixel, what="TIFF tiles", image=series.shape)
    return math.prod(chunk)


def _positive_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and value < float("inf") else None


def read_tiff(
    path: str | os.PathLike,
    *,
    expected: str,
    fix: str | None = None,
    max_pixels: int | None = None,
    per_pixel: int = 1,
    what: str = "image",
) -> tuple[np.ndarray, dict]:
    """Read a TIFF's first series and ``{"pixel_size": (y, x) | None, "unit": str | None, "calibration_problem"}``.

    ``expected`` names what the file should be (e.g. ``"a flows TIFF written by `cpsnake infer`"``) and
    ``fix`` what to do (default: pass such a file). A missing, non-regular, non-TIFF, truncated or
    corrupt file, complex samples, or more than ``max_pixels * per_pixel`` samples (checked from the
    header, before decoding; see :mod:`cpsnake.io.limits`) is a one-line CpsnakeError that says it.
    """
    data, meta = read_series(
        path, expected=expected, fix=fix or f"pass {expected}", max_pixels=max_pixels, per_pixel=per_pixel, what=what
    )
    return data, {
        k: meta[k]
        for k in ("pixel_size", "unit", "calibration_problem", "network_scale", "z_step", "frame_interval", "axes")
    }
