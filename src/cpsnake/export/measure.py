"""Per-cell measurements with ImageJ's names and definitions, equal to Fiji's Measure on our RoiSet.zip.

:func:`measure_labels` measures a 2-D label image on its image: one row per label, in label order (the
command, ``cpsnake measure``, is :mod:`cpsnake.steps.measure`; the table's type and CSV,
:mod:`cpsnake.export.table`). Columns: ``label``, ``image`` (the image's file name), ``area_px`` (pixels),
then ImageJ's Measure columns for the label's ROI as written by ``cpsnake rois`` (Analyze > Set Measurements:
area, mean, standard deviation, min & max, centroid, center of mass, perimeter, bounding rectangle, fit
ellipse, shape descriptors, Feret's diameter, integrated density), with ImageJ's exact names:

``Area Mean StdDev Min Max X Y XM YM Perim. BX BY Width Height Major Minor Angle Circ. Feret IntDen
RawIntDen FeretX FeretY FeretAngle MinFeret AR Round Solidity``

Definitions (as ImageJ 1.53t computes them; pw, ph = pixel width and height, 1 when uncalibrated):

* Area = pixels * pw * ph; Mean, StdDev (n - 1 denominator), Min, Max of the pixel values;
  RawIntDen = sum of values; IntDen = Area * Mean.
* X, Y = mean pixel centre (x + 0.5, y + 0.5) * (pw, ph); XM, YM = the same weighted by the values.
* Perim. = ImageJ's traced perimeter of each outline (edge length, minus (2 - sqrt 2) for each
  corner ImageJ counts), summed over the outlines of a composite ROI.
* BX, BY, Width, Height = bounding box of the pixels (calibrated).
* Major, Minor, Angle = ImageJ's best-fitting ellipse (second moments of the pixels, area-matched);
  AR = Major / Minor; Round = 4 Area / (pi Major^2); Circ. = 4 pi Area / Perim.^2 (at most 1).
  Like ImageJ, non-square pixels give Major = Minor = 0, AR = nan and Round = inf.
* Feret, FeretAngle (0-180 degrees), MinFeret, FeretX, FeretY = ImageJ's caliper values on the convex
  hull of the outline vertices (pixel corners); Solidity = pixels / area of that hull.

Lengths and areas are in the image's calibrated unit when it has a pixel size (read from its TIFF
tags), else in pixels. Multi-channel images: the shape columns appear once and the intensity columns
(``Mean StdDev Min Max XM YM IntDen RawIntDen``) once per channel with the suffix ``_c1``, ``_c2``, ...
(1-based, as ImageJ numbers channels); a single-channel image has no suffix. RGB images are
measured per colour channel (in Fiji: Image > Color > Make Composite, then Measure per channel).
An image without labels gives the header and no rows.

Quality columns (given the flows the labels were reconstructed from: ``cpsnake measure --flows FLOWS.tif``; the
workflow and ``cpsnake segment`` always add them), so doubtful cells can be filtered without rerunning:

* ``flow_error``: the statistic that ``--flow-threshold`` tests, computed on the final label image: the
  mean over the cell's pixels of the squared difference between the unit flows recomputed from the cell
  (heat diffusion, as cellpose) and the predicted flows divided by 5. 0 for a cell whose predicted flows
  are exactly its own; 1 where the network predicted no flow at all. (The reconstruction tested the same
  quantity before holes were filled and small masks dropped, so a cell whose holes were filled may show
  a slightly different value than the one that passed the threshold.)
* ``cellprob``: the mean over the cell's pixels of the predicted cell probability, 1 / (1 + exp(-logit)).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cpsnake.engine.dynamics import compact, flow_errors
from cpsnake.export.rois import shifted, trace_outlines
from cpsnake.export.table import channel_column, columns, new_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "measure_labels",
    "quality",
    "traced_perimeter",
    "convex_hull",
    "polygon_area",
    "feret_values",
    "fit_ellipse",
]


def quality(labels: np.ndarray, flows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell ``flow_error`` and mean ``cellprob`` (see the module docstring), in ascending label order.

    Parameters
    ----------
    labels : (Y, X) int ndarray, 0 = background, ids need not be consecutive
    flows : (3, Y, X) float ndarray: dY, dX (network scale, x5) and cellprob logits

    Returns
    -------
    (K,) float64 flow errors and (K,) float64 mean probabilities, K = number of labels
    """
    lab = np.asarray(labels)
    flows = np.asarray(flows)
    if flows.ndim != 3 or flows.shape[0] != 3 or flows.shape[1:] != lab.shape:
        raise ValueError(f"flows of shape {flows.shape}, expected (3, {lab.shape[0]}, {lab.shape[1]})")
    _, index = compact(lab)  # ranks 1..K in ascending id order
    k = int(index.max()) if index.size else 0
    if k == 0:
        return np.zeros(0), np.zeros(0)
    errors = flow_errors(index, flows[:2].astype(np.float32, copy=False))
    prob = 1.0 / (1.0 + np.exp(-flows[2].astype(np.float64)))
    counts = np.bincount(index.ravel(), minlength=k + 1)[1:]
    sums = np.bincount(index.ravel(), weights=prob.ravel(), minlength=k + 1)[1:]
    return errors, sums / counts


# --- geometry of the outlines (pixel-corner polygons, (x, y)) ---------------------------------


def traced_perimeter(xy: np.ndarray, pw: float = 1.0, ph: float = 1.0) -> float:
    """ImageJ's perimeter of a traced polygon (``PolygonRoi.getTracedPerimeter``), (n, 2) int (x, y) vertices."""
    x = xy[:, 0].astype(np.int64)
    y = xy[:, 1].astype(np.int64)
    dx = np.abs(np.roll(x, -1) - x)  # side i: vertex i -> i+1
    dy = np.abs(np.roll(y, -1) - y)
    side = dx + dy
    # ImageJ walks the vertices in order with side1 = the side arriving at vertex i; a vertex counts as a
    # corner when that side is longer than 1 pixel, or when the previous vertex did not count. So in a run
    # of k vertices whose arriving sides are 1 pixel long, every other vertex counts: ceil(k / 2) for a run
    # at the start (nothing counted before it), floor(k / 2) after a counted vertex.
    big = np.roll(side, 1) > 1
    small = np.flatnonzero(~big)
    corners = int(big.sum())
    if small.size:
        starts = np.flatnonzero(np.r_[True, np.diff(small) > 1])
        k = np.diff(np.append(starts, small.size))
        first_at_zero = small[starts] == 0
        corners += int(np.where(first_at_zero, (k + 1) // 2, k // 2).sum())
    # a counted corner replaces one horizontal and one vertical pixel side by the pixel's diagonal
    return float(dx.sum() * pw + dy.sum() * ph - corners * (pw + ph - math.hypot(pw, ph)))


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of (n, 2) (x, y) points in ImageJ's order: from the top-left-most point, anticlockwise on screen."""
    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)  # sorted by x, then y
    if len(pts) <= 2:
        return pts

    def half(seq):  # Andrew's monotone chain; drops collinear points
        out = []
        for p in seq:
            while len(out) >= 2:
                (ax, ay), (bx, by) = out[-2], out[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                out.pop()
            out.append(p)
        return out

    lower = half(pts)
    upper = half(pts[::-1])
    hull = np.array(lower[:-1] + upper[:-1])
    # ImageJ's gift wrap starts at the top-left-most point (smallest y, then x) and runs counterclockwise
    # on screen; the order decides which of two equal diameters ImageJ reports (FeretAngle)
    start = np.lexsort((hull[:, 0], hull[:, 1]))[0]
    hull = np.roll(hull, -start, axis=0)
    return np.concatenate([hull[:1], hull[1:][::-1]])


def polygon_area(xy: np.ndarray) -> float:
    """Absolute shoelace area of a closed polygon, (n, 2) (x, y)."""
    x, y = xy[:, 0], xy[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0


def feret_values(hull: np.ndarray, pw: float = 1.0, ph: float = 1.0) -> tuple[float, float, float, float, float]:
    """ImageJ's (Feret, FeretAngle, MinFeret, FeretX, FeretY) from the convex hull vertices (m, 2) (x, y).

    Feret = largest calibrated distance between hull vertices (first pair found wins ties), its angle
    in degrees (0-180, y up) from the left end; MinFeret = smallest caliper width over the hull edges.
    FeretX, FeretY = the left end (uncalibrated pixel coordinates, as ImageJ reports them).
    """
    h = np.asarray(hull, dtype=np.float64)
    m = len(h)
    dx = (h[:, None, 0] - h[None, :, 0]) * pw
    dy = (h[:, None, 1] - h[None, :, 1]) * ph
    d2 = np.triu(dx * dx + dy * dy, 1)
    k = int(np.argmax(d2))  # first maximum in row-major order = ImageJ's i < j loop with strict '>'
    p1, p2 = divmod(k, m)
    if h[p1, 0] > h[p2, 0]:
        p1, p2 = p2, p1
    (xf1, yf1), (xf2, yf2) = h[p1], h[p2]
    angle = math.degrees(math.atan2((yf1 - yf2) * ph, (xf2 - xf1) * pw))
    if angle < 0:
        angle += 180.0
    diameter = math.sqrt(d2.flat[k])
    if m < 3:
        min_feret = 0.0
    else:
        best = math.inf
        for i in range(m):
            a, b = h[i - 1], h[i]
            nx, ny = (b[1] - a[1]) * ph, (a[0] - b[0]) * pw
            norm = math.hypot(nx, ny)
            dist = np.abs(((h[:, 0] - b[0]) * nx * pw + (h[:, 1] - b[1]) * ny * ph) / norm).max()
            best = min(best, dist)
        min_feret = float(best)
    return diameter, angle, min_feret, float(xf1), float(yf1)


def fit_ellipse(ys: np.ndarray, xs: np.ndarray) -> tuple[float, float, float]:
    """ImageJ's ``EllipseFitter`` on a pixel set: (major, minor, angle in degrees), uncalibrated.

    ``ys, xs`` are the pixels' integer coordinates (any origin; ImageJ uses the bounding box's).
    """
    n = float(len(xs))
    x = xs.astype(np.float64) - xs.min()
    y = ys.astype(np.float64) - ys.min()
    xsum, ysum = x.sum(), y.sum()
    x2sum = (x * x).sum() + 0.08333333 * n
    y2sum = (y * y).sum() + 0.08333333 * n
    xysum = (x * y).sum()
    x1, y1 = xsum / n, ysum / n
    u20 = x2sum / n - x1 * x1
    u02 = y2sum / n - y1 * y1
    u11 = xysum / n - x1 * y1
    m4 = 4.0 * abs(u02 * u20 - u11 * u11)
    if m4 < 0.000001:
        m4 = 0.000001
    a11, a12, a22 = u02 / m4, u11 / m4, u20 / m4
    halfpi = 1.5707963267949
    tmp = a11 - a22
    if tmp == 0.0:
        tmp = 0.000001
    theta = 0.5 * math.atan(2.0 * a12 / tmp)
    if theta < 0.0:
        theta += halfpi
    if a12 > 0.0:
        theta += halfpi
    elif a12 == 0.0:
        if a22 > a11:
            theta = 0.0
            a11, a22 = a22, a11
        elif a11 != a22:
            theta = halfpi
    tmp = math.sin(theta)
    if tmp == 0.0:
        tmp = 0.000001
    z = a12 * math.cos(theta) / tmp
    major = math.sqrt(1.0 / abs(a22 + z))
    minor = math.sqrt(1.0 / abs(a11 - z))
    scale = math.sqrt(n / (math.pi * major * minor))
    major, minor = major * scale * 2.0, minor * scale * 2.0
    angle = 180.0 * theta / math.pi
    if angle == 180.0:
        angle = 0.0
    if major < minor:
        major, minor = minor, major
    return major, minor, angle


# --- the table ---------------------------------------------------------------------------------


def _div(a: float, b: float) -> float:
    """a / b with IEEE semantics (x/0 = +-inf, 0/0 = nan), as Java computes ImageJ's ratios."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)


def _shape_row(outlines: list[np.ndarray], ys: np.ndarray, xs: np.ndarray, pw: float, ph: float) -> dict:
    n = len(xs)
    area = n * pw * ph
    perim = sum(traced_perimeter(o, pw, ph) for o in outlines)
    verts = outlines[0] if len(outlines) == 1 else np.concatenate(outlines)
    hull = convex_hull(verts)
    feret, fangle, minferet, fx, fy = feret_values(hull, pw, ph)
    major, minor, angle = fit_ellipse(ys, xs)
    psize = pw if abs(pw - ph) / pw < 0.01 else 0.0  # ImageJ: no ellipse lengths for non-square pixels
    major, minor = major * psize, minor * psize
    circ = 4.0 * math.pi * area / (perim * perim) if perim > 0 else 0.0
    x0, y0 = xs.min(), ys.min()
    return {
        "area_px": n,
        "Area": area,
        "X": (xs.mean() + 0.5) * pw,
        "Y": (ys.mean() + 0.5) * ph,
        "Perim.": perim,
        "BX": x0 * pw,
        "BY": y0 * ph,
        "Width": (xs.max() - x0 + 1) * pw,
        "Height": (ys.max() - y0 + 1) * ph,
        "Major": major,
        "Minor": minor,
        "Angle": angle,
        "Circ.": min(circ, 1.0),
        "Feret": feret,
        "FeretX": fx,
        "FeretY": fy,
        "FeretAngle": fangle,
        "MinFeret": minferet,
        "AR": _div(major, minor),  # as in ImageJ: NaN (0/0) and Infinity for non-square pixels
        "Round": _div(4.0 * area, math.pi * major * major),
        "Solidity": n / polygon_area(hull) if len(hull) >= 3 else math.nan,
    }


def _intensity_row(v: np.ndarray, ys: np.ndarray, xs: np.ndarray, pw: float, ph: float) -> dict:
    v = v.astype(np.float64)
    n = v.size
    mean = v.mean()
    std = math.sqrt(max((np.dot(v, v) - n * mean * mean) / (n - 1), 0.0)) if n > 1 else 0.0
    total = v.sum()
    if total != 0:
        xm = (np.dot(v, xs + 0.5) / total) * pw
        ym = (np.dot(v, ys + 0.5) / total) * ph
    else:  # ImageJ falls back to the centroid
        xm, ym = (xs.mean() + 0.5) * pw, (ys.mean() + 0.5) * ph
    return {
        "Mean": mean, "StdDev": std, "Min": v.min(), "Max": v.max(), "XM": xm, "YM": ym,
        "IntDen": n * pw * ph * mean, "RawIntDen": total,
    }  # fmt: skip


def measure_labels(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    pixel_size: tuple[float, float] | None = None,
    image_name: str = "",
    flows: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
) -> pd.DataFrame:
    """Measure every label of a 2-D label image on a multi-channel image.

    Parameters
    ----------
    labels : (Y, X) int ndarray, 0 = background; ids need not be consecutive (memory follows the number
        of objects, not the largest id: a label of 4,000,000,000 costs what label 1 does)
    image : (C, Y, X) ndarray (any numeric dtype)
    pixel_size : (py, px) in the image's unit, or None for pixels
    flows : (3, Y, X) ndarray, optional: the flows the labels came from; adds :data:`QUALITY_COLUMNS`
    origin : (y, x) of ``labels[0, 0]`` in the image: a window of a larger image measures the objects it holds
        wholly in the image's coordinates, with the same values as the whole image (:mod:`cpsnake.export.blockout`)

    Returns
    -------
    the measurement table (:func:`cpsnake.export.table.new_table`, a pandas DataFrame) with the columns
    ``columns(C, quality=flows is not None)`` (:func:`cpsnake.export.table.columns`), one row per label in
    ascending order
    """
    lab = np.asarray(labels)
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[1:] != lab.shape:
        raise ValueError(f"image of shape {img.shape}, expected (C, {lab.shape[0]}, {lab.shape[1]})")
    ph, pw = (float(pixel_size[0]), float(pixel_size[1])) if pixel_size else (1.0, 1.0)
    C = img.shape[0]
    ids, outs = trace_outlines(lab)
    outs = shifted(outs, origin)
    # objects by rank (1..K), so per-object tables follow the number of objects, not the largest id
    _, index = compact(lab)
    slices = ndimage.find_objects(index)
    rows = []
    for k, (lab_id, outlines) in enumerate(zip(ids.tolist(), outs)):
        sl = slices[k]
        m = index[sl] == k + 1
        yy, xx = np.nonzero(m)
        ys, xs = yy + (sl[0].start + origin[0]), xx + (sl[1].start + origin[1])
        row = {"label": lab_id, "image": image_name}
        row.update(_shape_row(outlines, ys, xs, pw, ph))
        for c in range(C):
            vals = img[c][sl][m]
            inten = _intensity_row(vals, ys, xs, pw, ph)
            row.update({channel_column(name, c, C): v for name, v in inten.items()})
        rows.append(row)
    if flows is not None:
        for row, err, prob in zip(rows, *quality(lab, flows)):
            row["flow_error"], row["cellprob"] = float(err), float(prob)
    return new_table(rows, columns(C, quality=flows is not None))
