"""Reading and writing the files that flow between steps.

Axis order inside cpsnake: images (C, Y, X), stacks (Z, C, Y, X), labels (Y, X) or (Z, Y, X),
flows (3, Y, X) = dY, dX, cellprob logits. (x, y) order appears only at the ImageJ boundary.

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
    "read_flows",
    "write_labels",
    "read_labels",
    "label_dtype",
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
    """(y, x) pixel size and unit of an open TIFF, from ImageJ tags, OME-XML or the resolution tags; else (None, None)."""
    page = tif.pages.first
    unit = None
    ij = tif.imagej_metadata or {}
    if ij.get("unit"):
        unit = str(ij["unit"])
    try:
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
    except KeyError:
        xres = yres = None
    if tif.is_ome and tif.ome_metadata:
        import re

        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        n = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', tif.ome_metadata)
        u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m and n:
            return (float(n.group(1)), float(m.group(1))), (u.group(1) if u else "µm")
    if xres and yres and xres[0] and yres[0]:
        px, py = xres[1] / xres[0], yres[1] / yres[0]
        if unit is None:
            ru = page.tags.get("ResolutionUnit")
            ru = int(ru.value) if ru is not None else 1
            if ru == 3:  # centimetre
                unit, px, py = "micron", px * 1e4, py * 1e4
            elif ru == 2:  # inch: common default of 72 dpi is not a calibration
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


def read_flows(path: str | os.PathLike) -> tuple["np.ndarray", dict]:
    """Read a flows file: float32 ``(3, Y, X)`` and ``{"pixel_size": (y, x) | None, "unit": str | None}``."""
    import numpy as np
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            flows = tif.asarray()
            pixel_size, unit = read_calibration(tif)
    except FileNotFoundError:
        raise CpsnakeError(f"{path}: no such file; expected a flows TIFF written by `cpsnake infer`") from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise CpsnakeError(f"{path}: not a readable TIFF ({exc}); expected a flows TIFF written by `cpsnake infer`") from None
    if flows.ndim != 3 or flows.shape[0] != 3:
        raise CpsnakeError(
            f"{path}: found an array of shape {flows.shape}, expected flows (3, Y, X) = dY, dX, cellprob; "
            "pass the output of `cpsnake infer`"
        )
    return flows.astype(np.float32, copy=False), {"pixel_size": pixel_size, "unit": unit}


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
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            pixel_size, unit = read_calibration(tif)
    except FileNotFoundError:
        raise CpsnakeError(f"{path}: no such file; expected a label TIFF") from None
    except Exception as exc:
        raise CpsnakeError(f"{path}: not a readable TIFF ({exc}); expected a label TIFF") from None
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
    return out, {"pixel_size": pixel_size, "unit": unit}
