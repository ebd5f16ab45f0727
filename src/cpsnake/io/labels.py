"""Label images: 0 = background, 1..N = objects, as ImageJ, Fiji and QuPath read them.

Written (:func:`write_labels`) as an ImageJ hyperstack TIFF, ``(Y, X)``, ``(Z, Y, X)``, ``(T, Y, X)`` or
``(T, Z, Y, X)``, with the pixel size, unit, Z step and frame interval that Fiji shows. The type follows
the largest label (:func:`label_dtype`): uint16 up to 65,535 labels, float32 above (ImageJ 1 has no 32-bit
integer type; float32 is exact up to 16,777,216), with a message on stderr saying so; above that an error.
Label data beyond the 4 GB of a classic TIFF (:data:`CLASSIC_TIFF_BYTES`) are written as a BigTIFF
OME-TIFF (tiles of :data:`BIG_TILE` px, zlib), with a message: ImageJ 1 cannot open BigTIFF; Fiji opens it
with Bio-Formats. :mod:`cpsnake.export.blockout` writes the same bytes window by window from the pieces
here (:func:`label_dtype`, :func:`warn_label_dtype`, :func:`big_labels_metadata`).

Read (:func:`read_labels`) as int32 (int64 above 2**31 - 1) from any TIFF whose values are whole numbers
>= 0; a binary mask, negative, fractional, NaN or complex values are one line with the fix
(:data:`cpsnake.io.label_check.LABELS_FIX`).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from cpsnake.errors import CpsnakeError
from cpsnake.io.label_check import LABELS_FIX, check_labels
from cpsnake.io.outputs import atomic_output
from cpsnake.io.tiff import read_tiff, write_tiff

__all__ = [
    "LABEL_UINT16_MAX",
    "LABEL_FLOAT32_MAX",
    "CLASSIC_TIFF_BYTES",
    "BIG_TILE",
    "label_dtype",
    "write_labels",
    "warn_label_dtype",
    "big_labels_metadata",
    "read_labels",
]


LABEL_UINT16_MAX = 65535
LABEL_FLOAT32_MAX = 16_777_216  # integers above this are not exact in float32
CLASSIC_TIFF_BYTES = 2**32 - 2**25  # label data above this go to a BigTIFF (classic TIFF offsets are 32-bit)


def label_dtype(n_labels: int, path: object = None) -> np.dtype:
    """uint16 up to 65,535 labels; float32 above (ImageJ 1 has no 32-bit integer type; exact to 2**24).

    ``n_labels`` is the largest label; above 16,777,216 a CpsnakeError (naming ``path`` when given).
    """
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
    labels: np.ndarray,
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    stack_axes: str | None = None,
    z_step: float | None = None,
    frame_interval: float | None = None,
) -> np.dtype:
    """Write a label image ``(Y, X)``, stack ``(Z, Y, X)`` / ``(T, Y, X)`` or ``(T, Z, Y, X)`` (0 = background) as an
    ImageJ hyperstack TIFF; return the dtype used.

    ``stack_axes`` names the planes: ``"Z"`` (default for 3-D), ``"T"`` or ``"TZ"`` (4-D). ``z_step`` (in
    ``unit``) and ``frame_interval`` (seconds) go to ImageJ's ``spacing`` and ``finterval``, so Fiji shows the
    voxel depth and the frame rate. uint16 when the largest label is at most 65,535, else float32 (exact up
    to 16,777,216), with a message on stderr saying so, because ImageJ 1 has no 32-bit integer images.
    Label data beyond 4 GB (:data:`CLASSIC_TIFF_BYTES`) are written as a BigTIFF OME-TIFF, with a message:
    ImageJ 1 cannot open BigTIFF; Fiji opens it with Bio-Formats.
    """
    labels = np.asarray(labels)
    stack_axes = stack_axes if stack_axes is not None else {2: "", 3: "Z", 4: "TZ"}.get(labels.ndim, "")
    if labels.ndim not in (2, 3, 4) or labels.ndim != 2 + len(stack_axes) or stack_axes not in ("", "Z", "T", "TZ"):
        raise CpsnakeError(
            f"{path}: labels of shape {labels.shape} with stack axes {stack_axes!r}, expected (Y, X), "
            "(Z, Y, X), (T, Y, X) or (T, Z, Y, X)"
        )
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
    write_tiff(
        path, labels.astype(dtype), axes=stack_axes + "YX", pixel_size=pixel_size, unit=unit, metadata=extra or None
    )
    return dtype


def warn_label_dtype(path, top: int, dtype) -> None:
    """The stderr message of labels written as float32 (more than 65,535)."""
    if dtype == np.float32:
        print(
            f"{path}: {top} labels exceed uint16 (65,535); written as float32, exact up to 16,777,216 "
            "(ImageJ 1 has no 32-bit integer type)",
            file=sys.stderr,
        )


BIG_TILE = 1024  # tile side of a BigTIFF label image


def big_labels_metadata(path, axes: str, nbytes: int, pixel_size, unit) -> dict:
    """The OME metadata of a BigTIFF label image, after the message saying why it is one (see
    :func:`_write_big_labels`)."""
    meta: dict = {"axes": axes}
    if pixel_size is not None:
        meta.update(
            PhysicalSizeY=float(pixel_size[0]),
            PhysicalSizeX=float(pixel_size[1]),
            PhysicalSizeYUnit=_ome_unit(unit),
            PhysicalSizeXUnit=_ome_unit(unit),
        )
    print(
        f"{path}: {nbytes / 1e9:.1f} GB of labels exceed the 4 GB of a classic TIFF; written as a BigTIFF "
        "(OME-TIFF), which ImageJ 1 cannot open: in Fiji use File > Import > Bio-Formats, or write OME-Zarr "
        "labels (cpsnake segment --ome-zarr) for napari and QuPath",
        file=sys.stderr,
    )
    return meta


def _write_big_labels(path, labels: np.ndarray, axes: str, pixel_size, unit) -> None:
    """Labels beyond the 4 GB of a classic TIFF: a BigTIFF OME-TIFF (tiles of 1024 px, zlib), calibrated in its
    OME-XML. ImageJ 1 cannot open BigTIFF (tested with Debian's 1.53t); Fiji opens it with Bio-Formats."""
    import tifffile

    meta = big_labels_metadata(path, axes, labels.nbytes, pixel_size, unit)
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp, labels, bigtiff=True, ome=True, metadata=meta, tile=(BIG_TILE, BIG_TILE), compression="zlib"
        )


def _ome_unit(unit: str | None) -> str:
    """A unit as OME-XML names it (µm for ImageJ's micron)."""
    return {"micron": "µm", "um": "µm", "μm": "µm", None: "pixel", "": "pixel"}.get(unit, unit)


def read_labels(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a label image as int32/int64 ``(Y, X)``, ``(Z, Y, X)`` or ``(T, Z, Y, X)`` plus ``{"pixel_size", "unit"}``.

    Accepted (:func:`cpsnake.io.label_check.check_labels`): unsigned or signed integers without negative values,
    and floats holding only whole non-negative numbers. Bool masks, complex, negative, fractional or NaN values
    are a CpsnakeError with the fix. The declared size is checked against ``max_pixels`` before decoding.
    """
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
