"""Label images -> QuPath-compatible GeoJSON: one FeatureCollection of cell polygons per image.

:func:`feature_collection` makes one Feature of each label (the command, ``cpsnake geojson``, is
:mod:`cpsnake.steps.geojson`; ``cpsnake measure ... --geojson OUT.geojson``, ``cpsnake segment --geojson`` and
the workflow's ``geojson: true`` write the same file with the table's measurements):

* ``geometry``: a ``Polygon`` (one 8-connected piece) or a ``MultiPolygon`` (several), its rings along
  pixel *edges* in image pixel coordinates (x right, y down, origin at the image's top-left corner, the
  full-resolution image's: QuPath's and ImageJ's convention), the same outlines as the ImageJ ROIs
  (:func:`cpsnake.export.rois.trace_outlines`): corner vertices only, each ring closed (first vertex repeated).
  Outer rings have positive shoelace area in these coordinates and holes negative, so that the polygon
  area (outer minus holes) is exactly the label's pixel count. Where pixels of one piece touch only at a
  corner the ring passes that corner twice (as ImageJ's traced ROI does); JTS (QuPath's geometry library)
  calls such a ring self-touching, and QuPath imports it as it is.
* ``properties``: ``objectType`` (default ``detection``: QuPath's type for segmented objects without a
  separate nucleus; ``cell`` in QuPath implies a nucleus/cell pair), ``name`` (the label id, as the ROI
  names), ``label`` (the id, an integer) and, with a table, ``measurements``: every numeric column of
  the label's row except ``label`` (a value that is not finite is left out: JSON has no NaN).
* ``id``: a UUID derived from the image name and the label (the same ids on every run).

The file is written atomically (:func:`write_geojson`, or a Feature at a time: :class:`FeatureWriter`). 2-D label
images only (QuPath's GeoJSON holds one plane per object).
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from typing import TYPE_CHECKING

import numpy as np

from cpsnake.errors import CpsnakeWarning
from cpsnake.export.rois import shifted, trace_outlines
from cpsnake.export.table import INTENSITY_COLUMNS, QUALITY_COLUMNS
from cpsnake.io.outputs import atomic_output

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["label_polygons", "feature_collection", "table_rows", "write_geojson", "FeatureWriter", "warn_stack"]

_NAMESPACE = uuid.UUID("6f1c3a52-8d3e-4b7a-9a43-0c1f2e5d7b60")  # cpsnake's namespace for feature ids


def _shoelace(ring: np.ndarray) -> float:
    """Signed area of a closed ring ``(n, 2)`` (x, y) without the repeated vertex (positive: outer ring)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _inside(px: float, py: float, ring: np.ndarray) -> bool:
    """Whether point (px, py), never on a ring edge (a pixel centre), is inside the ring (even-odd)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    crosses = (y > py) != (y2 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x + (py - y) * (x2 - x) / (y2 - y)
    return bool(np.count_nonzero(crosses & (xc > px)) % 2)


def _hole_pixel(ring: np.ndarray) -> tuple[float, float]:
    """Centre of the background pixel on the left of a hole ring's first edge (the object is on the right)."""
    (x0, y0), (x1, y1) = ring[0], ring[1]
    dx, dy = int(np.sign(x1 - x0)), int(np.sign(y1 - y0))
    return x0 + 0.5 * dx + 0.5 * dy, y0 + 0.5 * dy - 0.5 * dx


def label_polygons(
    labels: np.ndarray, origin: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, list[list[list[np.ndarray]]]]:
    """Polygons of every label along pixel edges.

    Parameters
    ----------
    labels : (Y, X) int ndarray, 0 = background
    origin : (y, x) of ``labels[0, 0]`` in the image (a window of a larger label image)

    Returns
    -------
    ids : (N,) int64, the labels present, ascending
    polygons : for each label a list of polygons, each a list of closed rings ``(n + 1, 2)`` int (x, y):
        the outer ring (positive area) then its holes (negative area); one polygon per 8-connected piece.
    """
    ids, outlines = trace_outlines(labels)
    outlines = shifted(outlines, origin)
    polygons = []
    for rings in outlines:
        areas = [_shoelace(r) for r in rings]
        outer = [r for r, a in zip(rings, areas) if a > 0]
        polys = [[r] for r in outer]
        for r, a in zip(rings, areas):
            if a > 0:
                continue
            if len(outer) == 1:
                polys[0].append(r)
                continue
            px, py = _hole_pixel(r)  # the smallest outer ring around the hole holds it
            around = [k for k, o in enumerate(outer) if _inside(px, py, o)]
            k = min(around, key=lambda k: _shoelace(outer[k])) if around else 0
            polys[k].append(r)
        polygons.append([[np.vstack([r, r[:1]]) for r in p] for p in polys])
    return ids, polygons


def _number(v):
    """A finite JSON number from a table value (a CSV string or a number), or None."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return f
    return f


def feature_collection(
    labels: np.ndarray,
    *,
    rows: list[dict] | None = None,
    image_name: str = "",
    object_type: str = "detection",
    origin: tuple[int, int] = (0, 0),
    width: int | None = None,
) -> dict:
    """The GeoJSON FeatureCollection of ``labels`` (Y, X), one Feature per label (see the module docstring).

    ``rows``: measurement rows (dicts with a ``label`` key: the records of a measurement table,
    ``table.to_dict("records")``, or the rows of its CSV) whose numeric values become each Feature's
    ``measurements``. ``origin`` (y, x) and
    ``width`` (digits of the names) for a window of a larger label image (:mod:`cpsnake.export.blockout`).
    """
    ids, polygons = label_polygons(labels, origin)
    width = width or len(str(max(int(ids.max()) if ids.size else 1, 1)))
    by_label = {}
    for r in rows or []:
        by_label[int(float(r["label"]))] = r
    features = []
    for lab_id, polys in zip(ids.tolist(), polygons):
        coords = [[r.tolist() for r in p] for p in polys]
        geometry = (
            {"type": "Polygon", "coordinates": coords[0]}
            if len(coords) == 1
            else {"type": "MultiPolygon", "coordinates": coords}
        )
        props = {"objectType": object_type, "name": f"{lab_id:0{width}d}", "label": lab_id}
        if rows is not None:
            row = by_label.get(lab_id, {})
            meas = {}
            for k, v in row.items():
                if k in ("label", "image"):
                    continue
                num = _number(v)
                if num is not None:
                    meas[k] = num
            props["measurements"] = meas
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(_NAMESPACE, f"{image_name}:{lab_id}")),
                "geometry": geometry,
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _channel_group(column: str) -> int:
    """0 for the columns of an object's shape, k for the intensity columns of channel k (1-based), and last the
    quality columns."""
    if column in QUALITY_COLUMNS:
        return 1 << 30
    if column in INTENSITY_COLUMNS:
        return 1
    base, sep, channel = column.rpartition("_c")
    return int(channel) if sep and base in INTENSITY_COLUMNS and channel.isdigit() else 0


def table_rows(table: pd.DataFrame) -> list[dict]:
    """The rows of a 2-D measurement table (:func:`cpsnake.export.measure.measure_labels`) for
    :func:`feature_collection`, each Feature's measurements in the order cpsnake lists them: the shape columns, then
    each channel's intensity columns in turn (``Mean_c1 ... RawIntDen_c1``, then ``_c2``), then the quality columns.
    (The rows of a CSV keep the CSV's order.)"""
    order = sorted(table.columns, key=_channel_group)  # stable: ImageJ's order within each group
    return table[order].to_dict("records")


def write_geojson(path: str | os.PathLike, collection: dict) -> None:
    """Write a FeatureCollection as compact JSON, atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(collection, f, separators=(",", ":"), allow_nan=False)
            f.write("\n")


class FeatureWriter:
    """Writes a FeatureCollection a Feature at a time to ``path`` (a context manager): the same bytes as
    :func:`write_geojson` of the collection of those Features, for label images too large to hold."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.fh, self.n = path, None, 0

    def __enter__(self) -> "FeatureWriter":
        self.fh = open(self.path, "w")
        self.fh.write('{"type":"FeatureCollection","features":[')
        return self

    def add(self, feature: dict) -> None:
        self.fh.write(("," if self.n else "") + json.dumps(feature, separators=(",", ":"), allow_nan=False))
        self.n += 1

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.fh.write("]}\n")
        self.fh.close()


def warn_stack(path) -> None:
    """The warning for a stack given GeoJSON output (written for 2-D label images only; no file)."""
    warnings.warn(
        f"{path}: a stack; GeoJSON is written for 2-D label images only (QuPath holds one plane per "
        "object), none written: use the ROI set for stacks",
        CpsnakeWarning,
        stacklevel=3,
    )
