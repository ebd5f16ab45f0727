"""The files of a label image too large to hold, written window by window: label TIFF, ROI zip, measurement
table, GeoJSON, overlay and OME-Zarr labels, each equal byte for byte to what the whole-image path writes
from the same labels and image (tested).

A block-wise segmentation (:mod:`cpsnake.engine.blocks`) builds its labels in a Zarr array on disk; this module
reads that array and the image (:class:`cpsnake.io.regions.RegionImage`) a window at a time:

* One pass over the labels' chunks gives every object's bounding box (:func:`object_boxes`).
* An object belongs to the *tile* (a ``tile`` px square of the image) that holds its box's top-left
  corner; a tile's *window* is the union of its objects' boxes, so it holds each of them wholly. The
  objects of a block-wise segmentation lie inside their block's read region, so a window is at most
  ``tile + block + 2 halo`` px a side.
* In a window the other objects are set to 0 (an object's outline, ROI and measurements depend only on
  its own pixels and the image under them), and its objects are traced and measured in the image's
  coordinates (``origin``): the integer coordinates, and so every value computed from them, are the
  whole image's.
* Ids are numbered by first pixel in raster order, and an object's first pixel lies in its box's top
  row, so the objects of one row of tiles come after those of every earlier row: ROIs, table rows and
  GeoJSON features are written a row of tiles at a time, sorted by id, the order the whole-image path
  writes them in.
* The label TIFF is written band by band at its data offset (uncompressed, as :func:`cpsnake.io.labels.write_labels`
  writes it), or tile by tile for a BigTIFF; the overlay reads every k-th pixel tile by tile
  (:data:`cpsnake.export.overlay.MAX_SIDE`); the OME-Zarr pyramid band by band (:mod:`cpsnake.io.ngff`).

Memory: a window of labels and image, a band of label rows, four int64 per object for the boxes and the
records (about 1 KB each) of one row of tiles, not the image's pixels.

The steps that read a label TIFF this way (``cpsnake batch rois | measure | overlay`` for images segmented
block by block) are ``export_file_by_window`` in :mod:`cpsnake.steps.rois`, ``measure_file_by_window`` in
:mod:`cpsnake.steps.measure` and ``overlay_file_by_window`` in :mod:`cpsnake.steps.overlay`.
tifffile is imported by :func:`write_label_tiff`, which alone uses it (the ROI, table and overlay steps read
their label TIFF through :mod:`cpsnake.io.regions`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from cpsnake.errors import CpsnakeError
from cpsnake.export import geojson as gj
from cpsnake.export import overlay, rois
from cpsnake.export.measure import measure_labels
from cpsnake.export.table import columns, formatted
from cpsnake.io import labels as label_files
from cpsnake.io.inputs import open_regions
from cpsnake.io.ngff import write_label_zarr
from cpsnake.io.outputs import all_or_nothing, atomic_output
from cpsnake.io.tiff import imagej_tiff_options

__all__ = [
    "TILE",
    "object_boxes",
    "tile_rows",
    "strided",
    "write_label_tiff",
    "write_objects",
    "write_overlay",
    "write_outputs",
    "TiffLabels",
]

TILE = 2048  # side of the tiles that objects are assigned to (see the module docstring)


def object_boxes(labels, chunk: int = 1024) -> np.ndarray:
    """Bounding boxes of the objects of a label array ``(Y, X)`` that slices (a Zarr array or a TIFF read by
    region included), read ``chunk`` x ``chunk`` px at a time.

    Returns ``(n + 1, 4)`` int64 rows ``(y0, y1, x0, x1)`` (half-open) for ids 0..n, n the largest id; row 0
    and absent ids hold ``y0 = Y`` (empty).
    """
    Y, X = (int(v) for v in labels.shape)
    box = np.empty((0, 4), np.int64)
    for y in range(0, Y, chunk):
        for x in range(0, X, chunk):
            c = np.asarray(labels[y : y + chunk, x : x + chunk])
            ids, rank = np.unique(c, return_inverse=True)
            if ids[-1] >= len(box):  # grow, empty rows
                grown = np.empty((max(int(ids[-1]) + 1, 2 * len(box)), 4), np.int64)
                grown[:] = (Y, 0, X, 0)
                grown[: len(box)] = box
                box = grown
            found = ndimage.find_objects(rank.reshape(c.shape) + 1)
            sl = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in found], np.int64)
            keep = ids > 0
            ids, sl = ids[keep], sl[keep] + (y, y, x, x)
            np.minimum.at(box[:, 0], ids, sl[:, 0])
            np.maximum.at(box[:, 1], ids, sl[:, 1])
            np.minimum.at(box[:, 2], ids, sl[:, 2])
            np.maximum.at(box[:, 3], ids, sl[:, 3])
    present = np.flatnonzero(box[:, 0] < Y)
    return box[: int(present[-1]) + 1 if present.size else 1]


def tile_rows(box: np.ndarray, shape: tuple[int, int], tile: int = TILE):
    """Rows of tiles, top to bottom: for each, a list of ``(ids, window)`` per tile with objects, ``ids``
    ascending and ``window = (y0, y1, x0, x1)`` the union of their boxes (see the module docstring)."""
    ids = np.flatnonzero(box[:, 0] < shape[0])
    ids = ids[ids > 0]
    tr, tc = box[ids, 0] // tile, box[ids, 2] // tile
    for r in np.unique(tr).tolist():
        row = ids[tr == r]
        cols = tc[tr == r]
        out = []
        for c in np.unique(cols).tolist():
            sel = row[cols == c]
            b = box[sel]
            out.append((sel, (int(b[:, 0].min()), int(b[:, 1].max()), int(b[:, 2].min()), int(b[:, 3].max()))))
        yield out


def strided(
    read: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int], k: int, step: int = 256
) -> np.ndarray:
    """Every ``k``-th pixel (rows and columns from 0) of an array ``(..., Y, X)`` read by region
    (``read(y0, y1, x0, x1)``), at least 1024 and ``step * k`` px a side at a time (a multiple of ``k``):
    ``(..., ceil(Y / k), ceil(X / k))``."""
    Y, X = shape
    side = k * max(step, -(-1024 // k))
    rows = []
    for y in range(0, Y, side):
        rows.append(
            np.concatenate(
                [np.asarray(read(y, min(Y, y + side), x, min(X, x + side)))[..., ::k, ::k] for x in range(0, X, side)],
                axis=-1,
            )
        )
    return np.concatenate(rows, axis=-2)


def write_label_tiff(path: str | os.PathLike, labels, n: int, *, pixel_size=None, unit=None, band: int = 1024) -> None:
    """The label TIFF of :func:`cpsnake.io.labels.write_labels` (same bytes) from a label array ``(Y, X)`` that slices,
    with ``n`` its largest id: the file is laid out first, then its pixels written ``band`` rows at a time at
    their offset; beyond 4 GB a BigTIFF OME-TIFF written tile by tile."""
    import tifffile

    Y, X = (int(v) for v in labels.shape)
    dtype = label_files.label_dtype(n, path)
    label_files.warn_label_dtype(path, n, dtype)
    if Y * X * dtype.itemsize > label_files.CLASSIC_TIFF_BYTES:  # looked up here: tests lower the bound
        meta = label_files.big_labels_metadata(path, "YX", Y * X * dtype.itemsize, pixel_size, unit)
        t = label_files.BIG_TILE

        def tiles():
            for y in range(0, Y, t):
                for x in range(0, X, t):
                    out = np.zeros((t, t), dtype)
                    part = np.asarray(labels[y : y + t, x : x + t])
                    out[: part.shape[0], : part.shape[1]] = part
                    yield out

        with atomic_output(path) as tmp:
            tifffile.imwrite(
                tmp,
                tiles(),
                shape=(Y, X),
                dtype=dtype,
                bigtiff=True,
                ome=True,
                metadata=meta,
                tile=(t, t),
                compression="zlib",
            )
        return
    meta, kwargs = imagej_tiff_options("YX", pixel_size, unit)
    with atomic_output(path) as tmp:
        offset, _ = tifffile.imwrite(
            tmp, shape=(Y, X), dtype=dtype, imagej=True, metadata=meta, returnoffset=True, **kwargs
        )
        with open(tmp, "r+b") as fh:
            fh.seek(offset)
            for y in range(0, Y, band):
                fh.write(np.asarray(labels[y : y + band]).astype(dtype.newbyteorder("<")).tobytes())


def write_objects(
    labels,
    image=None,
    *,
    rois_path=None,
    table_path=None,
    geojson_path=None,
    pixel_size=None,
    image_name: str = "",
    tile: int = TILE,
) -> int:
    """Any of the ROI zip, the measurement table (no flow columns) and the GeoJSON of a label image, window by
    window, the bytes :func:`cpsnake.export.rois.write_rois`, :func:`cpsnake.export.table.write_table` and
    :func:`cpsnake.export.geojson.write_geojson` write for the whole image; returns the number of objects.

    labels : ``(Y, X)`` int array that slices (e.g. Zarr, :class:`TiffLabels`)
    image : reads ``(C, h, w)`` regions (``image.read(y0, y1, x0, x1)``, ``image.shape`` (C, Y, X)); needed
        for the table and the GeoJSON (whose features carry the rows)
    """
    Y, X = (int(v) for v in labels.shape)
    measured = table_path is not None or geojson_path is not None
    if measured and (image is None or tuple(image.shape[1:]) != (Y, X)):
        raise CpsnakeError(
            f"{image_name}: image of shape {None if image is None else image.shape}, expected "
            f"(C, {Y}, {X}) to match its labels; pass the image the labels were made from"
        )
    box = object_boxes(labels)
    n = len(box) - 1
    present = np.flatnonzero(box[:, 0] < Y)
    ordered = bool(np.all(np.diff(box[present, 0]) >= 0))  # ids by first pixel in raster order: flush per row
    width = len(str(max(n, 1)))
    with all_or_nothing(), contextlib.ExitStack() as files:  # the files asked for, all or none
        zf = table = features = None
        if rois_path is not None:
            zf = files.enter_context(_zip(files.enter_context(atomic_output(rois_path))))
        if table_path is not None:
            fh = files.enter_context(open(files.enter_context(atomic_output(table_path)), "w", newline=""))
            table = csv.DictWriter(fh, fieldnames=columns(image.shape[0]), extrasaction="raise")
            table.writeheader()
        if geojson_path is not None:
            features = files.enter_context(gj.FeatureWriter(files.enter_context(atomic_output(geojson_path))))
        done = []
        for row in tile_rows(box, (Y, X), tile):
            for ids, (y0, y1, x0, x1) in row:
                lut = np.zeros(n + 1, np.int32)
                lut[ids] = ids
                win = lut[np.asarray(labels[y0:y1, x0:x1])]  # the tile's objects only
                rows = (
                    gj.table_rows(
                        measure_labels(
                            win,
                            image.read(y0, y1, x0, x1),
                            pixel_size=pixel_size,
                            image_name=image_name,
                            origin=(y0, x0),
                        )
                    )
                    if measured
                    else [None] * ids.size
                )
                rs = rois.labels_to_rois(win, origin=(y0, x0), width=width) if zf is not None else [None] * ids.size
                fs = (
                    gj.feature_collection(win, rows=rows, image_name=image_name, origin=(y0, x0), width=width)[
                        "features"
                    ]
                    if features is not None
                    else [None] * ids.size
                )
                done.extend(zip(ids.tolist(), rows, rs, fs))
            if ordered:
                _flush(done, zf, table, features)
        _flush(done, zf, table, features)
    return int(present.size)


def _flush(done: list, zf, table, features) -> None:
    """Write the objects collected so far in id order, and forget them."""
    done.sort(key=lambda d: d[0])
    for _, r, roi, f in done:
        if zf is not None:
            zf.writestr(f"{roi.name}.roi", roi.tobytes())
        if table is not None:
            table.writerow(formatted(r))
        if features is not None:
            features.add(f)
    done.clear()


def write_overlay(path, image, labels) -> None:
    """The overlay PNG of :func:`cpsnake.export.overlay.render` (same bytes), every k-th pixel read tile by tile."""
    Y, X = (int(v) for v in labels.shape)
    k = -(-max(Y, X) // overlay.MAX_SIDE)
    small = strided(image.read, (Y, X), k)
    small_labels = strided(lambda y0, y1, x0, x1: labels[y0:y1, x0:x1], (Y, X), k)
    overlay.write_png(path, overlay.render(small, small_labels, max_side=max(small_labels.shape)))


def write_outputs(
    out: Path,
    name: str,
    path: Path,
    image,
    labels,
    n: int,
    meta: dict,
    *,
    geojson: bool = False,
    ome_zarr: bool = False,
    tile: int = TILE,
) -> None:
    """Write ``out/masks/NAME.tif`` (and ``NAME.zarr``), ``rois/NAME.zip``, ``measurements/NAME.csv``,
    ``geojson/NAME.geojson`` and ``overlays/NAME.png`` as :mod:`cpsnake.run.segment` writes them for a whole image.

    image : reads ``(C, h, w)`` regions (``image.read(y0, y1, x0, x1)``, ``image.shape`` (C, Y, X))
    labels : ``(Y, X)`` int array that slices (e.g. Zarr), ids ``1..n``
    meta : the image's ``pixel_size`` and ``unit``
    """
    pixel_size, unit = meta["pixel_size"], meta["unit"]
    write_label_tiff(out / "masks" / f"{name}.tif", labels, n, pixel_size=pixel_size, unit=unit)
    if ome_zarr:
        write_label_zarr(out / "masks" / f"{name}.zarr", labels, pixel_size=pixel_size, unit=unit)
    write_objects(
        labels,
        image,
        rois_path=out / "rois" / f"{name}.zip",
        table_path=out / "measurements" / f"{name}.csv",
        geojson_path=out / "geojson" / f"{name}.geojson" if geojson else None,
        pixel_size=pixel_size,
        image_name=path.name,
        tile=tile,
    )
    write_overlay(out / "overlays" / f"{name}.png", image, labels)


class TiffLabels:
    """A label TIFF (as :func:`cpsnake.io.labels.write_labels` writes it) read by region: ``shape`` (Y, X) and
    ``labels[y0:y1, x0:x1]`` as int32, without reading the file whole (:mod:`cpsnake.io.regions`)."""

    def __init__(self, path):
        self.path = path
        self.image = open_regions(path)
        if self.image.shape[0] != 1 or self.image.stack_axes:
            self.image.close()
            raise CpsnakeError(f"{path}: found a label image of shape {self.image.shape}, expected one 2-D plane")
        self.shape = tuple(self.image.shape[1:])

    def __getitem__(self, key):
        ys, xs = key if isinstance(key, tuple) else (key, slice(None))
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        return self.image.read(y0, max(y0, y1), x0, max(x0, x1))[0].astype(np.int32)

    def close(self) -> None:
        self.image.close()


@contextlib.contextmanager
def _zip(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        yield zf
