"""Reading and writing the files that flow between steps.

Axis order inside cpsnake: images (C, Y, X), stacks (Z, C, Y, X), labels (Y, X) or (Z, Y, X),
flows (3, Y, X) = dY, dX, cellprob logits. (x, y) order appears only at the ImageJ boundary.

:func:`read_image` reads input images (TIFF / OME-TIFF, PNG, JPEG; told by content, not extension) as
``(C, Y, X)`` (stacks ``(Z, C, Y, X)``) in their own dtype, with pixel size, unit and original axes.

Every writer goes through :func:`atomic_output`: the file is written under a temporary name in the
destination folder and renamed only when complete, so no partial file ever sits under a final name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from cpsnake.errors import CpsnakeError

__all__ = [
    "CpsnakeError",
    "atomic_output",
    "write_tiff",
    "read_calibration",
    "write_flows",
    "read_tiff",
    "read_flows",
    "write_labels",
    "read_labels",
    "label_dtype",
    "read_image",
    "IMAGE_FORMATS",
]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds, else delete it.

    The temporary name keeps the final suffix (``.NAME.tif.<pid>.tmp.tif``) so writers that pick a
    format from the extension still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# --- TIFF with ImageJ metadata -------------------------------------------------------------------
# ImageJ 1 reads calibration only from ImageJ-style TIFF tags (resolution + `unit`), not OME-XML,
# so every TIFF cpsnake writes is an ImageJ hyperstack with its axes, pixel size and unit.


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

    meta = {"axes": axes}
    if metadata:
        meta.update(metadata)
    kwargs = {}
    if pixel_size is not None:
        py, px = (float(v) for v in pixel_size)
        kwargs["resolution"] = (1.0 / px, 1.0 / py)
        meta["unit"] = {"um": "micron", "µm": "micron", "μm": "micron"}.get(unit or "", unit or "pixel")
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(array), imagej=True, metadata=meta, **kwargs)


def read_calibration(tif: "tifffile.TiffFile") -> tuple[tuple[float, float] | None, str | None]:
    """(y, x) pixel size and unit of an open TIFF, from OME-XML, ImageJ tags or the resolution tags; else (None, None).

    OME-XML ``PhysicalSizeY``/``PhysicalSizeX`` (unit ``PhysicalSizeXUnit``, OME's default µm) win when
    present (a missing Y size means square pixels); then the TIFF resolution tags with the ImageJ
    ``unit``, or ResolutionUnit centimetre (converted to micron). Inch resolutions (the 72 dpi that
    many programs write) and 1 pixel-per-pixel without a unit are no calibration.
    """
    import re

    page = tif.pages.first
    if tif.is_ome and tif.ome_metadata:
        # the first <Pixels ...> element belongs to the first image, the one read_image reads
        pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", tif.ome_metadata)
        attrs = pixels.group(0) if pixels else tif.ome_metadata
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', attrs)
        n = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', attrs)
        u = re.search(r'PhysicalSizeXUnit="([^"]+)"', attrs)
        if m and float(m.group(1)) > 0:
            px = float(m.group(1))
            py = float(n.group(1)) if n and float(n.group(1)) > 0 else px
            return (py, px), (u.group(1) if u else "µm")
    unit = None
    ij = tif.imagej_metadata or {}
    if ij.get("unit"):
        unit = str(ij["unit"])
    try:
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
    except KeyError:
        xres = yres = None
    if xres and yres and xres[0] and yres[0] and xres[1] and yres[1]:
        px, py = xres[1] / xres[0], yres[1] / yres[0]
        if unit is None:
            ru = page.tags.get("ResolutionUnit")
            ru = int(ru.value) if ru is not None else 2  # TIFF default is inch
            if ru == 3:  # centimetre
                unit, px, py = "micron", px * 1e4, py * 1e4
            elif ru == 2:  # inch: the common default of 72 dpi is not a calibration
                return None, None
        if unit in (None, "pixel", "pixels") and px == 1.0 and py == 1.0:
            return None, None
        return (py, px), unit
    return None, None


def write_flows(
    path: str | os.PathLike,
    flows: "np.ndarray",
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
) -> None:
    """Write flows, float32 ``(3, Y, X)`` = dY, dX, cellprob logits, as an ImageJ TIFF (axes CYX)."""
    import numpy as np

    flows = np.asarray(flows, dtype=np.float32)
    if flows.ndim != 3 or flows.shape[0] != 3:
        raise CpsnakeError(f"{path}: flows of shape {flows.shape}, expected (3, Y, X) = dY, dX, cellprob")
    write_tiff(path, flows, axes="CYX", pixel_size=pixel_size, unit=unit)


def read_tiff(path: str | os.PathLike, *, expected: str) -> tuple["np.ndarray", dict]:
    """Read a TIFF's array and ``{"pixel_size": (y, x) | None, "unit": str | None}``.

    ``expected`` names what the file should be (e.g. ``"a flows TIFF written by `cpsnake infer`"``); a
    missing or unreadable file is a one-line CpsnakeError that says it.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            pixel_size, unit = read_calibration(tif)
    except FileNotFoundError:
        raise CpsnakeError(f"{path}: no such file; expected {expected}") from None
    except Exception as exc:  # tifffile raises many types for corrupt or non-TIFF files
        raise CpsnakeError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}); expected {expected}") from None
    return data, {"pixel_size": pixel_size, "unit": unit}


def read_flows(path: str | os.PathLike) -> tuple["np.ndarray", dict]:
    """Read a flows file: float32 ``(3, Y, X)`` and ``{"pixel_size": (y, x) | None, "unit": str | None}``."""
    import numpy as np

    flows, meta = read_tiff(path, expected="a flows TIFF written by `cpsnake infer`")
    if flows.ndim != 3 or flows.shape[0] != 3:
        raise CpsnakeError(
            f"{path}: found an array of shape {flows.shape}, expected flows (3, Y, X) = dY, dX, cellprob; "
            "pass the output of `cpsnake infer`"
        )
    return flows.astype(np.float32, copy=False), meta


LABEL_UINT16_MAX = 65535
LABEL_FLOAT32_MAX = 16_777_216  # integers above this are not exact in float32


def label_dtype(n_labels: int) -> "np.dtype":
    """uint16 up to 65,535 labels; float32 above (ImageJ 1 has no 32-bit integer type; exact to 2**24)."""
    import numpy as np

    if n_labels <= LABEL_UINT16_MAX:
        return np.dtype(np.uint16)
    if n_labels <= LABEL_FLOAT32_MAX:
        return np.dtype(np.float32)
    raise CpsnakeError(
        f"{n_labels} labels, more than float32 holds exactly ({LABEL_FLOAT32_MAX}); split the image into smaller parts"
    )


def write_labels(
    path: str | os.PathLike,
    labels: "np.ndarray",
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
) -> "np.dtype":
    """Write a label image ``(Y, X)`` or ``(Z, Y, X)`` (0 = background) as an ImageJ TIFF; return the dtype used.

    uint16 when the largest label is at most 65,535, else float32 (exact up to 16,777,216), with a
    message on stderr saying so, because ImageJ 1 has no 32-bit integer images.
    """
    import sys

    import numpy as np

    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise CpsnakeError(f"{path}: labels of shape {labels.shape}, expected (Y, X) or (Z, Y, X)")
    top = int(labels.max()) if labels.size else 0
    dtype = label_dtype(top)
    if dtype == np.float32:
        print(
            f"{path}: {top} labels exceed uint16 (65,535); written as float32, exact up to 16,777,216 "
            "(ImageJ 1 has no 32-bit integer type)",
            file=sys.stderr,
        )
    write_tiff(path, labels.astype(dtype), axes="YX" if labels.ndim == 2 else "ZYX", pixel_size=pixel_size, unit=unit)
    return dtype


def read_labels(path: str | os.PathLike) -> tuple["np.ndarray", dict]:
    """Read a label image as int32/int64 ``(Y, X)`` or ``(Z, Y, X)`` plus ``{"pixel_size", "unit"}``."""
    import numpy as np

    data, meta = read_tiff(path, expected="a label TIFF")
    data = np.squeeze(data)
    if data.ndim not in (2, 3):
        raise CpsnakeError(f"{path}: labels of shape {data.shape}, expected (Y, X) or (Z, Y, X)")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)) or (data.size and data.min() < 0):
            raise CpsnakeError(f"{path}: float labels with non-integer, negative or NaN values; expected integer labels")
    elif data.dtype.kind not in "ui":
        raise CpsnakeError(f"{path}: labels of type {data.dtype}, expected an integer (or integral float32) image")
    elif data.size and data.min() < 0:
        raise CpsnakeError(f"{path}: negative labels; expected 0 = background and 1..N = objects")
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


def _sniff(path: Path) -> str:
    """Format of ``path`` from its first bytes: ``"tiff"``, ``"png"`` or ``"jpeg"``; else a CpsnakeError."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        raise CpsnakeError(f"{path}: no such file; expected an image ({IMAGE_FORMATS}); check the path") from None
    except IsADirectoryError:
        raise CpsnakeError(f"{path}: is a folder; expected an image file ({IMAGE_FORMATS}); pass a file") from None
    except OSError as exc:
        raise CpsnakeError(f"{path}: cannot be opened ({exc.strerror}); expected a readable image file") from None
    if not head:
        raise CpsnakeError(f"{path}: found an empty file (0 bytes); expected an image ({IMAGE_FORMATS}); re-export or re-copy it")
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    raise CpsnakeError(
        f"{path}: not an image (the file starts with {head[:12]!r}); expected {IMAGE_FORMATS} "
        "whatever the file name says; pass the image itself or convert it (e.g. Fiji: File > Save As > Tiff)"
    )


def _read_tiff(path: Path) -> tuple["np.ndarray", str, tuple[float, float] | None, str | None, bool]:
    """(data, axes, pixel_size, unit, has_alpha) of the first image series of a TIFF / OME-TIFF."""
    import logging

    import tifffile

    # tifffile logs (rather than raises) some decode failures and fills the data with zeros:
    # collect its errors and treat them as an unreadable file.
    problems: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                problems.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray(maxworkers=1)
            axes = series.axes
            pixel_size, unit = read_calibration(tif)
            page = series.pages[0] if series.pages else tif.pages.first
            has_alpha = bool(getattr(page, "extrasamples", ())) and "S" in axes
    except CpsnakeError:
        raise
    except Exception as exc:  # tifffile raises many types for truncated or corrupt files
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise CpsnakeError(
            f"{path}: found a TIFF whose data cannot be read ({msg}); expected a complete TIFF; "
            "the file is truncated or corrupt: copy or export it again"
        ) from None
    finally:
        logger.removeHandler(handler)
    if problems:
        raise CpsnakeError(
            f"{path}: found a TIFF whose data cannot be decoded ({problems[0]}); expected a complete TIFF; "
            "the file is truncated or corrupt: copy or export it again"
        )
    return data, axes, pixel_size, unit, has_alpha


def _read_png_jpeg(path: Path, fmt: str) -> tuple["np.ndarray", str, bool]:
    """(data, axes, has_alpha) of a PNG (imagecodecs: 8 and 16 bit kept, grey and RGB) or a JPEG (Pillow)."""
    import numpy as np

    try:
        if fmt == "png":
            import imagecodecs  # Pillow would cut 16-bit RGB PNGs to 8 bits

            data = imagecodecs.png_decode(path.read_bytes())
        else:
            from PIL import Image  # raises on a truncated JPEG (libjpeg alone only warns)

            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB")
                data = np.asarray(im)
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise CpsnakeError(
            f"{path}: found a {fmt.upper()} whose data cannot be decoded ({msg}); expected a complete {fmt.upper()}; "
            "the file is truncated or corrupt: copy or export it again"
        ) from None
    if data.ndim == 2:
        return data, "YX", False
    # grey+alpha (2 samples) or RGB+alpha (4 samples): the last sample is alpha
    return data, "YXS", data.shape[-1] in (2, 4)


def read_image(path: str | os.PathLike) -> tuple["np.ndarray", dict]:
    """Read a 2-D image as ``(C, Y, X)`` or a stack as ``(Z, C, Y, X)``, in its own dtype.

    Formats (told by content, not by extension): TIFF / OME-TIFF (first image series, full
    resolution; axes from ImageJ, OME or tifffile metadata), PNG (8 and 16 bit) and JPEG.

    Axes: ``C`` and ``S`` (RGB samples) become C; grey images get C = 1; an alpha sample (RGBA,
    grey+alpha) is dropped. A ``Z`` or ``T`` axis makes a stack ``(Z, C, Y, X)`` (time points are
    returned as planes). An axis without metadata (tifffile's ``Q``/``I``, e.g. a numpy array saved
    as it is) is taken as channels when it has at most 3 entries and as stack planes otherwise.
    Singleton axes are dropped. Two stack axes, or two channel axes, are an error.

    Returns
    -------
    data : ndarray
        ``(C, Y, X)`` or ``(Z, C, Y, X)``; interleaved samples (RGB stored as Y, X, 3) come back as
        a strided view rather than a copy; bool data comes back as uint8.
    meta : dict
        ``pixel_size`` ((y, x) or None), ``unit`` (str or None), ``axes`` (the file's axes, e.g.
        ``"YXS"``), ``shape`` (the file's shape), ``dtype`` (str), ``format`` (``"tiff"``, ``"png"``,
        ``"jpeg"``), ``dropped_alpha`` (bool).

    Raises
    ------
    CpsnakeError
        Missing, empty, truncated, corrupt or non-image files; NaN or infinite values; complex data;
        shapes that are not 2-D images or stacks of them.
    """
    import numpy as np

    path = Path(path)
    fmt = _sniff(path)
    pixel_size = unit = None
    if fmt == "tiff":
        data, axes, pixel_size, unit, has_alpha = _read_tiff(path)
    else:
        data, axes, has_alpha = _read_png_jpeg(path, fmt)
    shape, dtype = tuple(int(n) for n in data.shape), data.dtype
    meta = {
        "pixel_size": pixel_size,
        "unit": unit,
        "axes": axes,
        "shape": shape,
        "dtype": str(dtype),
        "format": fmt,
        "dropped_alpha": False,
    }
    if dtype.kind not in "buif":
        raise CpsnakeError(
            f"{path}: found pixels of type {dtype}; expected integer or real intensities (uint8, uint16, float32, ...); "
            "convert the image (e.g. Fiji: Image > Type > 32-bit)"
        )
    if data.ndim != len(axes) or "Y" not in axes or "X" not in axes:
        raise CpsnakeError(f"{path}: found shape {shape} with axes {axes!r}; expected an image with Y and X axes")
    if has_alpha and axes[-1] == "S" and data.shape[-1] in (2, 4):
        data = data[..., :-1]
        meta["dropped_alpha"] = True

    # drop singleton axes except Y and X
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape(tuple(data.shape[i] for i in keep))
    axes = "".join(axes[i] for i in keep)
    axes = axes.replace("S", "C").replace("T", "Z")
    named = list(axes)
    for i, a in enumerate(named):
        if a in _UNKNOWN_AXES:  # no metadata: few entries are channels, more are planes
            named[i] = "C" if data.shape[i] <= MAX_GUESSED_CHANNELS and "C" not in named else "Z"
    axes = "".join(named)
    unknown = [a for a in axes if a not in "ZCYX"]
    if unknown or axes.count("C") > 1 or axes.count("Z") > 1:
        raise CpsnakeError(
            f"{path}: found {len(shape)} dimensions {shape} with axes {meta['axes']!r}; expected a 2-D image (Y, X) "
            "with channels, or one stack of such planes (Z or T); save one plane, channel set or time series per file"
        )
    if "C" not in axes:
        data, axes = data[np.newaxis], "C" + axes
    if "Z" in axes:
        order = [axes.index(a) for a in "ZCYX"]
    else:
        order = [axes.index(a) for a in "CYX"]
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
