"""Label images as OME-Zarr (NGFF 0.5): a labels group with a multiscale ``image-label`` pyramid.

Layout of ``NAME.zarr`` (Zarr v3; NGFF 0.5 keeps its metadata under ``"ome"`` in each ``zarr.json``)::

    NAME.zarr/                 group  {"ome": {"version": "0.5"}}
      labels/                  group  {"ome": {"version": "0.5", "labels": ["cells"]}}
        cells/                 group  multiscales (axes y, x with the image's unit; scale per level)
                                      + image-label {"version": "0.5", "source": {"image": "../../"}}
          0/ 1/ 2/ ...         int32 arrays, level k = level 0 taken every 2**k-th pixel (labels are
                               never averaged), chunks of 1024 x 1024, until the longer side <= 1024

NGFF puts a ``labels`` group inside the image's own ``.zarr`` folder. cpsnake never writes into its
inputs, so it writes the same ``labels/`` tree in a folder of its own: to see the cells over the image in
napari or QuPath, copy ``NAME.zarr/labels`` into the image's ``.zarr`` folder (the ``source`` path then
points at the image). Level 0 is written band by band from any array that slices (a Zarr array on disk
included), and each level from the one before it, so the whole label image is never in memory.

The folder is written under a temporary name beside the final one and renamed when complete
(:func:`cpsnake.io.outputs.atomic_output`: a previous folder of that name is replaced whole; a file or a link
there is refused, never deleted or followed).

OME-Zarr inputs are read by :mod:`cpsnake.io.omezarr`. zarr is imported inside :func:`write_label_zarr` (its
import takes a second): a command that writes no OME-Zarr does not pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cpsnake.errors import CpsnakeError
from cpsnake.io.outputs import atomic_output

__all__ = ["write_label_zarr", "LEVEL_MIN", "CHUNK"]

CHUNK = 1024
LEVEL_MIN = 1024  # the pyramid stops at the first level whose longer side is at most this
_UNIT_NAMES = {
    "micron": "micrometer",
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
}


def _levels(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Shapes of the pyramid's levels: level k is ``ceil(shape / 2**k)``."""
    out = [tuple(shape)]
    while max(out[-1]) > LEVEL_MIN:
        out.append(tuple((n + 1) // 2 for n in out[-1]))
    return out


def write_label_zarr(
    path: str | os.PathLike,
    labels,
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    name: str = "cells",
) -> int:
    """Write ``labels`` ``(Y, X)`` (any int array that slices, e.g. a Zarr array) as OME-Zarr labels at ``path``
    (see the module doc); returns the number of pyramid levels. ``pixel_size`` (y, x) in ``unit`` goes to each
    level's ``scale`` (1 px when None)."""
    import zarr

    path = Path(path)
    Y, X = (int(n) for n in labels.shape)
    if len(labels.shape) != 2:
        raise CpsnakeError(f"{path}: labels of shape {labels.shape}, expected (Y, X)")
    with atomic_output(path, folder=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs["ome"] = {"version": "0.5"}
        group = root.create_group("labels")
        group.attrs["ome"] = {"version": "0.5", "labels": [name]}
        cells = group.create_group(name)
        shapes = _levels((Y, X))
        py, px = pixel_size if pixel_size is not None else (1.0, 1.0)
        previous = labels
        for k, (h, w) in enumerate(shapes):
            arr = cells.create_array(
                str(k),
                shape=(h, w),
                chunks=(min(CHUNK, h), min(CHUNK, w)),
                dtype="int32",
                fill_value=0,
                dimension_names=["y", "x"],
            )
            band = CHUNK
            for y in range(0, h, band):
                if k == 0:
                    arr[y : y + band] = np.asarray(previous[y : y + band], dtype=np.int32)
                else:  # every other row and column of the level before
                    arr[y : y + band] = np.asarray(previous[2 * y : 2 * (y + band) : 2, ::2], dtype=np.int32)
            previous = arr
        axis_unit = _UNIT_NAMES.get(unit or "", unit) if pixel_size is not None else None
        axes = [{"name": a, "type": "space", **({"unit": axis_unit} if axis_unit else {})} for a in "yx"]
        cells.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "name": name,
                    "axes": axes,
                    "datasets": [
                        {
                            "path": str(k),
                            "coordinateTransformations": [
                                {"type": "scale", "scale": [float(py) * 2**k, float(px) * 2**k]}
                            ],
                        }
                        for k in range(len(shapes))
                    ],
                }
            ],
            "image-label": {"version": "0.5", "source": {"image": "../../"}},
        }
    return len(shapes)
