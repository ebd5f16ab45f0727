"""How an input is opened: the one place that decides, for every command, what an input is and how to read it.

An input is a TIFF / OME-TIFF / BigTIFF, a PNG or a JPEG file, or an OME-Zarr folder. :func:`input_format`
tells which: an OME-Zarr folder by its Zarr group (:func:`cpsnake.io.omezarr.is_ome_zarr`), a file by its
first bytes, never by its name (:func:`file_format`; a file that is none of them is one line saying what it
looks like, :func:`cpsnake.io.formats.describe`). Only a regular file is opened: a FIFO or device is refused
from ``os.stat`` before any read (:func:`cpsnake.io.files.regular_file`). Then, by what the caller needs:

* :func:`read_header` -- what the header declares (height, width, channels, planes, dtype), no pixel decoded:
  how ``cpsnake samples`` inspects thousands of images and ``cpsnake segment`` checks its inputs before the
  model loads;
* :func:`read_image` -- the whole image ``(C, Y, X)``, a stack ``(Z, C, Y, X)`` or ``(T, Z, C, Y, X)``:
  TIFF through :mod:`cpsnake.io.tiff`, PNG and JPEG through :mod:`cpsnake.io.png_jpeg`, a 2-D OME-Zarr
  through its region reader;
* :func:`open_regions` -- a :class:`cpsnake.io.regions.RegionImage` read region by region (TIFF:
  :func:`cpsnake.io.regions.open_tiff_regions`; OME-Zarr: :func:`cpsnake.io.omezarr.open_zarr_regions`);
* :func:`region_input` -- whole or by region for ``cpsnake segment``: an OME-Zarr always by region, a 2-D TIFF
  by region when blocks are asked for or when it is large, everything else whole.

Axis order inside cpsnake: images (C, Y, X), stacks (Z, C, Y, X), labels (Y, X) or (Z, Y, X).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np

from cpsnake.errors import CpsnakeError, CpsnakeWarning, library_text
from cpsnake.io import files, limits, png_jpeg
from cpsnake.io.formats import IMAGE_FORMATS, MAX_GUESSED_CHANNELS, describe, format_of
from cpsnake.io.omezarr import is_ome_zarr, open_zarr_regions
from cpsnake.io.regions import RegionImage, open_tiff_regions
from cpsnake.io.tiff import open_tiff, read_series

__all__ = ["REGION_FORMATS", "input_format", "file_format", "read_header", "read_image", "open_regions", "region_input"]

REGION_FORMATS = ("tiff", "ome-zarr")  # the inputs that can be read region by region
_UNKNOWN_AXES = "QIR"  # tifffile's names for axes without metadata (a numpy array saved as is)


def input_format(path: str | os.PathLike) -> str:
    """``"ome-zarr"`` for an OME-Zarr folder, else the file's format (:func:`file_format`): ``"tiff"``, ``"png"`` or
    ``"jpeg"``; anything else is a one-line CpsnakeError."""
    return "ome-zarr" if is_ome_zarr(path) else file_format(Path(path))


def file_format(path: Path) -> str:
    """Format of the file ``path`` from its first bytes: ``"tiff"``, ``"png"`` or ``"jpeg"``; else a CpsnakeError.

    ``path`` must be a regular file (checked with ``os.stat`` first: a FIFO, device or folder is refused, not
    read). The error says what the file looks like (text, a ZIP archive, ...) without quoting its bytes.
    """
    expected = f"an image ({IMAGE_FORMATS})"
    st = files.regular_file(path, expected)
    try:
        with open(path, "rb") as fh:
            first = fh.read(16)
    except OSError as exc:
        raise CpsnakeError(
            f"{path}: cannot be opened ({exc.strerror}); expected a readable image file; check its permissions"
        ) from None
    if not first or st.st_size == 0:
        raise CpsnakeError(f"{path}: found an empty file (0 bytes); expected {expected}; re-export or re-copy it")
    fmt = format_of(first)
    if fmt:
        return fmt
    raise CpsnakeError(
        f"{path}: not an image ({describe(path)}, not a TIFF, PNG or JPEG); expected {IMAGE_FORMATS} "
        "whatever the file name says; pass the image itself or convert it (e.g. Fiji: File > Save As > Tiff)"
    )


# --- the header only ---------------------------------------------------------------------------------


def read_header(path: str | os.PathLike, *, max_pixels: int | None = None) -> dict:
    """What an image's header declares, decoding no pixel: ``height, width, channels_in_file, planes, dtype, pixels``.

    TIFF / OME-TIFF: the first series' shape and axes (Y, X; C/S are channels; Z/T planes; axes without
    metadata count as channels up to 3 entries, else planes, as :func:`read_image` reads them); PNG: the IHDR
    chunk; JPEG: the frame header. ``pixels`` is Y x X x planes. A file that is missing, not a regular file,
    not an image, or whose header cannot be read is a one-line CpsnakeError. OME-Zarr: the first multiscale
    image's full resolution (:func:`open_regions`, which also refuses storage chunks of more than
    ``max_pixels`` samples). Broken TIFF metadata set aside (:func:`cpsnake.io.tiff.open_tiff`) are one warning.
    """
    path = Path(path)
    fmt = input_format(path)
    try:
        if fmt == "ome-zarr":
            with open_regions(path, max_pixels=max_pixels) as img:
                shape, axes, dtype = img.meta["shape"], img.meta["axes"], img.meta["dtype"]
        elif fmt == "tiff":
            head = open_tiff(path, expected="an image", fix="export it again", sniffed=True)
            with contextlib.closing(head):
                series = head.series
                shape, axes, dtype = tuple(int(n) for n in series.shape), series.axes, str(series.dtype)
            if head.ignored:  # broken metadata set aside: the pages are read as stored
                warnings.warn(head.ignored, CpsnakeWarning, stacklevel=2)
        else:
            shape, axes, dtype = png_jpeg.declared_shape(path, fmt)
    except CpsnakeError:
        raise
    except Exception as exc:  # readers raise many types for a broken header
        raise CpsnakeError(
            f"{path}: found a {fmt.upper()} whose header cannot be read ({library_text(exc)}); "
            "expected a complete image; the file is truncated or corrupt: copy or export it again"
        ) from None
    if "Y" not in axes or "X" not in axes:
        raise CpsnakeError(f"{path}: found shape {shape} with axes {axes!r}; expected an image with Y and X axes")
    channels = planes = 1
    for a, n in zip(axes, shape):
        if a in "CS":
            channels *= n
        elif a in "ZT" or (a in _UNKNOWN_AXES and n > MAX_GUESSED_CHANNELS):
            planes *= n
        elif a not in "YX":
            channels *= n
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    return {
        "height": height,
        "width": width,
        "channels_in_file": channels,
        "planes": planes,
        "dtype": dtype,
        "pixels": height * width * planes,
    }


# --- the whole image ---------------------------------------------------------------------------------


def _read_ome_zarr(path: Path, max_pixels: int | None) -> tuple[np.ndarray, dict]:
    """A 2-D OME-Zarr image read whole (:func:`open_regions`), its size (and its chunks') checked from the metadata
    first; the read refuses NaN and infinite values."""
    with open_regions(path, max_pixels=max_pixels) as img:
        if img.stack_axes:
            raise CpsnakeError(
                f"{path}: found an OME-Zarr stack (axes {img.meta['axes']!r}, shape "
                f"{img.meta['shape']}); expected a 2-D OME-Zarr image (C, Y, X); save the stack as an "
                "ImageJ or OME-TIFF hyperstack"
            )
        limits.check_samples(path, img.meta["shape"], limit=max_pixels)
        data = img.read(0, img.shape[1], 0, img.shape[2])
        meta = dict(img.meta)
    meta.pop("levels", None)
    return data, meta


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a 2-D image as ``(C, Y, X)``, a stack as ``(Z, C, Y, X)`` or a time series of stacks as
    ``(T, Z, C, Y, X)``, in its own dtype.

    Formats (told by content, not by extension): TIFF / OME-TIFF (first image series, full
    resolution; axes from ImageJ, OME or tifffile metadata), PNG (8 and 16 bit) and JPEG; and 2-D
    OME-Zarr folders (NGFF 0.4 / 0.5, the first multiscale image's full resolution, :mod:`cpsnake.io.omezarr`).

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
    path = Path(path)
    fmt = input_format(path)
    if fmt == "ome-zarr":
        return _read_ome_zarr(path, max_pixels)
    pixel_size = unit = problem = z_step = frame_interval = time_unit = None
    if fmt == "tiff":
        data, tmeta = read_series(
            path,
            expected="a complete TIFF image",
            fix="convert the image (e.g. Fiji: Image > Type > 32-bit)",
            max_pixels=max_pixels,
            sniffed=True,
        )
        axes, pixel_size, unit = tmeta["axes"], tmeta["pixel_size"], tmeta["unit"]
        has_alpha, problem = tmeta["has_alpha"], tmeta["calibration_problem"]
        z_step, frame_interval, time_unit = tmeta["z_step"], tmeta["frame_interval"], tmeta["time_unit"]
    else:
        data, axes, has_alpha = png_jpeg.read_png_jpeg(path, fmt, max_pixels)
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
            f"{path}: found pixels of type {dtype}; expected integer or real intensities (uint8, uint16, float32, "
            "...); convert the image (e.g. Fiji: Image > Type > 32-bit)"
        )
    if data.ndim != len(axes) or "Y" not in axes or "X" not in axes:
        raise CpsnakeError(
            f"{path}: found shape {shape} with axes {axes!r}; expected an image with Y and X axes; "
            "save the image again with its axes (e.g. Fiji: File > Save As > Tiff)"
        )
    if has_alpha and axes[-1] == "S" and data.shape[-1] in (2, 4):
        data = data[..., :-1]
        meta["dropped_alpha"] = True
    return _in_engine_order(path, data, axes, meta), meta


def _in_engine_order(path: Path, data: np.ndarray, axes: str, meta: dict) -> np.ndarray:
    """``data`` (axes ``axes``) as ``([T,] [Z,] C, Y, X)``, named as :func:`read_image` says; sets
    ``meta["stack_axes"]``. Interleaved RGB stays a view; bool becomes uint8; NaN and infinity are refused."""
    shape = meta["shape"]
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
    return data


# --- by region -----------------------------------------------------------------------------------------


def open_regions(path: str | os.PathLike, *, level: int = 0, max_pixels: int | None = None) -> RegionImage:
    """Open a TIFF (file) or OME-Zarr (folder) image for region reads; only its header is read.

    ``max_pixels`` bounds the samples of each storage chunk (see :class:`cpsnake.io.regions.RegionImage`; the
    image's own size is the caller's check, :func:`cpsnake.io.limits.check_samples`). Errors: one-line
    CpsnakeErrors (:mod:`cpsnake.io.regions`, :mod:`cpsnake.io.omezarr`)."""
    path = Path(path)
    if path.is_dir():
        if not is_ome_zarr(path):
            raise CpsnakeError(
                f"{path}: found a folder that is not a Zarr group (no zarr.json, .zgroup or .zattrs); "
                "expected an image file or an OME-Zarr folder; pass the .zarr folder itself"
            )
        return open_zarr_regions(path, level, max_pixels)
    return open_tiff_regions(path, level, max_pixels)


def region_input(
    path: Path, *, block_size: int | None, whole_up_to: int, max_pixels: int | None = None
) -> RegionImage | None:
    """A :class:`cpsnake.io.regions.RegionImage` for an input that ``cpsnake segment`` reads by region, or None for
    one it reads whole (:func:`read_image`).

    By region: an OME-Zarr folder, always (a stack is refused: one line); a 2-D TIFF when ``block_size`` > 0 (an
    error opening it is raised), or when ``block_size`` is None (automatic) and it holds more than
    ``whole_up_to`` pixels (Y x X) and opens for region reads (else the whole-image reader says what is wrong,
    if anything). Whole: ``block_size`` 0, PNG and JPEG, stacks, and paths that are not regular files (the
    whole-image reader refuses them with its line)."""
    if is_ome_zarr(path):
        image = open_regions(path, max_pixels=max_pixels)
        if image.stack_axes:
            image.close()
            raise CpsnakeError(
                f"{path}: found an OME-Zarr stack (axes {image.meta['axes']!r}, shape "
                f"{image.meta['shape']}); expected a 2-D OME-Zarr image (C, Y, X); save the stack as an "
                "ImageJ or OME-TIFF hyperstack"
            )
        return image
    if block_size == 0 or not path.is_file() or file_format(path) != "tiff":
        return None
    try:
        image = open_regions(path, max_pixels=max_pixels)
    except CpsnakeError:
        if block_size is None:  # not asked for blocks: the whole-image reader says what is wrong, if anything
            return None
        raise
    if image.stack_axes or (block_size is None and image.shape[1] * image.shape[2] <= whole_up_to):
        image.close()
        return None
    return image
