"""Label images -> ImageJ ROI sets (``RoiSet.zip``) that are pixel-exact in Fiji's ROI Manager.

:func:`labels_to_rois` gives one ROI per label (per slice for 3-D label images), named by the label id
zero-padded to the width of the largest id (``0007``; ``0007-z03`` / ``0007-t03`` in stacks), so the ROI
Manager lists them in label order. Each ROI carries its stack position (z or t, 1-based on disk as ImageJ
wants). An image without labels gives no ROIs (:func:`write_rois` then writes a valid zip with no entries).

ROI encoding (fixed, because ImageJ's measurements depend on it)
----------------------------------------------------------------
ImageJ counts a pixel inside a ROI when its centre is inside the outline. Outlines are therefore
traced along pixel *edges* on the pixel-corner grid (vertices are integer corner coordinates, (x, y),
origin at the top-left corner of the image), never through pixel centres. Each closed outline:

* keeps only the corners where the direction changes (collinear vertices dropped);
* starts at its top-left-most vertex (smallest y, then smallest x), like ImageJ's wand tool;
* runs clockwise on screen for the outside of an object and anticlockwise around a hole, so the
  outline encloses the same pixels under ImageJ's even-odd and non-zero fill rules;
* joins pixels that touch only at a corner (8-connectivity): at such a "pinch" corner the outline
  turns left and continues around the diagonal neighbour, touching itself at that corner.

A label whose pixels form one 8-connected piece without holes becomes one ImageJ *traced* polygon
(type TRACED, integer coordinates) -- exactly what the wand makes, so ImageJ's perimeter
(``Perim.``: edge length minus (2 - sqrt 2) per corner) and Feret values apply to it unchanged.
A label with holes or several pieces becomes one *composite* (shape) ROI whose sub-paths are the
traced outlines (MOVETO, LINETO..., CLOSE), outer outlines and holes alike. A 1-pixel object is the
1x1 square around the pixel (a traced polygon of 4 vertices); a 1-pixel-wide line is the thin
rectangle or staircase around its pixels. Both have the right ImageJ area (1 px, the line's length).

The way back (an ROI set painted into a label image) is :mod:`cpsnake.export.roi_import`; the command
``cpsnake rois`` (both ways, files in and out) is :mod:`cpsnake.steps.rois`.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from cpsnake.io.outputs import atomic_output

__all__ = ["trace_outlines", "shifted", "outlines_to_roi", "labels_to_rois", "write_rois"]

# ---------------------------------------------------------------------------------------------
# Export: tracing outlines on the pixel-corner grid
# ---------------------------------------------------------------------------------------------
# Directed edges keep the object on their right (y points down). Direction d: 0 east (top edge of the
# pixel), 1 south (right edge), 2 west (bottom edge), 3 north (left edge).
_DY = np.array([0, 1, 0, -1])
_DX = np.array([1, 0, -1, 0])
# start corner of each pixel edge, relative to the pixel's top-left corner (x, y)
_SX = np.array([0, 1, 1, 0])
_SY = np.array([0, 0, 1, 1])
_INT16_MAX = 32767  # largest bound the ROI header's signed 16-bit fields hold


def trace_outlines(labels: np.ndarray) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Outlines of every label along pixel edges (see the module docstring for the exact encoding).

    Parameters
    ----------
    labels : (Y, X) int ndarray, 0 = background

    Returns
    -------
    ids : (N,) int64, the labels present, ascending
    outlines : list of N lists of (n, 2) int32 arrays of (x, y) corner vertices, one array per closed
        outline of that label (first its outline holding the top-left-most vertex, then the others in
        order of their top-left-most vertex); the closing vertex is not repeated.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels of shape {lab.shape}, expected (Y, X)")
    H, W = lab.shape
    if H == 0 or W == 0 or not lab.any():
        return np.zeros(0, np.int64), []
    P = np.zeros((H + 2, W + 2), dtype=lab.dtype)
    P[1:-1, 1:-1] = lab
    c = P[1:-1, 1:-1]
    fg = c != 0
    # directed boundary edges, keyed (pixel raster index) * 4 + d; pixel (y, x) owns the edge in direction d
    # when its neighbour on that side (up, right, down, left) holds another label
    nbrs = (P[:-2, 1:-1], P[1:-1, 2:], P[2:, 1:-1], P[1:-1, :-2])
    ekey = np.concatenate([np.flatnonzero(fg & (nb != c)) * 4 + d for d, nb in enumerate(nbrs)])
    ekey.sort(kind="stable")  # four sorted runs: a cheap merge
    ed = (ekey & 3).astype(np.int8)
    pix = ekey >> 2
    ey, ex = np.divmod(pix, W)
    L = lab.ravel()[pix]
    # end vertex (vx, vy) of each edge; the two pixels ahead of it: ahead-right (AR), ahead-left (AL).
    # Pixels around corner (vx, vy): NW (vy-1, vx-1), NE (vy-1, vx), SW (vy, vx-1), SE (vy, vx).
    # heading east: AR = SE, AL = NE; south: AR = SW, AL = SE; west: AR = NW, AL = SW; north: AR = NE, AL = NW
    vx = ex + (_SX + _DX)[ed]
    vy = ey + (_SY + _DY)[ed]
    ary, arx = vy + np.array([0, 0, -1, -1])[ed], vx + np.array([0, -1, -1, 0])[ed]
    aly, alx = vy + np.array([-1, 0, 0, -1])[ed], vx + np.array([0, 0, -1, -1])[ed]
    Pf = P.ravel()
    AR = Pf[(ary + 1) * (W + 2) + arx + 1] == L
    AL = Pf[(aly + 1) * (W + 2) + alx + 1] == L
    # successor: AL same label -> turn left onto AL's edge (also at a pinch corner: 8-connectivity);
    # else AR same label -> straight on along AR's edge; else turn right along the same pixel's next edge.
    nd = np.where(AL, (ed + 3) % 4, np.where(AR, ed, (ed + 1) % 4))
    spix = np.where(AL, aly * W + alx, np.where(AR, ary * W + arx, pix))
    succ = np.searchsorted(ekey, spix * 4 + nd)
    del AR, AL, ary, arx, aly, alx, vx, vy, spix, nd
    # order key: start vertex (y, x), then direction -> each cycle's minimum is its top-left-most vertex
    sx = ex + _SX[ed]
    sy = ey + _SY[ed]
    okey = (sy * (W + 1) + sx) * 4 + ed
    cmin, rem = _cycle_order(succ, okey)
    # keep corners only (direction differs from the previous edge's); a cycle's start is always a corner
    pred = np.empty_like(succ)
    pred[succ] = np.arange(succ.size)
    kidx = np.flatnonzero(ed != ed[pred])
    # sort the corners by cycle (its start key), then by position along the cycle
    order = kidx[np.argsort(cmin[kidx] * (succ.size + 1) + (succ.size - rem[kidx]))]
    kc = cmin[order]
    xy = np.stack([sx[order], sy[order]], axis=1).astype(np.int32)
    cb = np.flatnonzero(np.r_[True, kc[1:] != kc[:-1]])
    ce = np.append(cb[1:], kc.size)
    cyc_label = L[order[cb]]
    by_label = np.argsort(cyc_label, kind="stable")  # cycles of a label stay in order of their start vertex
    ids, first = np.unique(cyc_label[by_label], return_index=True)
    bounds = np.append(first, cb.size)
    outlines = []
    for i in range(ids.size):
        outlines.append([xy[cb[j] : ce[j]] for j in by_label[bounds[i] : bounds[i + 1]]])
    return ids.astype(np.int64), outlines


def shifted(outlines: list[list[np.ndarray]], origin: tuple[int, int]) -> list[list[np.ndarray]]:
    """:func:`trace_outlines`' outlines of a window whose pixel (0, 0) is ``origin`` (y, x) of the image, moved
    to the image's coordinates (exact: integer vertices)."""
    if not any(origin):
        return outlines
    xy = np.array([origin[1], origin[0]], np.int32)
    return [[o + xy for o in rings] for rings in outlines]


def _cycle_order(succ: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cycle minimum of ``key`` and steps left to the cycle's end, for every element of permutation ``succ``.

    Parameters
    ----------
    succ : (n,) int permutation, element -> next element on its cycle
    key : (n,) int64 distinct keys

    Returns
    -------
    cmin : (n,) int64, smallest key on the element's cycle (names the cycle and its start element)
    rem : (n,) int64, steps from the element to its cycle's last element (the start has length - 1)
    """
    # cycle minimum by pointer doubling: after k rounds mn[i] = min over 2**k successors of i. Once mn is
    # constant along every cycle it is the cycle minimum (the minimum lies in some element's window).
    succ = succ.astype(np.int32 if succ.size < 2**31 else np.int64)
    mn = key.copy()
    nxt = succ
    while not np.array_equal(mn, np.take(mn, succ)):
        mn = np.minimum(mn, np.take(mn, nxt))
        nxt = np.take(nxt, nxt)
    # list ranking (Wyllie): cut each cycle before its start, then jump pointers towards the end
    last = np.take(key == mn, succ)
    nxt = np.where(last, np.arange(succ.size, dtype=succ.dtype), succ)
    rem = (~last).astype(np.int32 if succ.size < 2**31 else np.int64)
    while True:
        nn = np.take(nxt, nxt)
        if np.array_equal(nn, nxt):
            return mn, rem
        rem += np.take(rem, nxt)
        nxt = nn


# ---------------------------------------------------------------------------------------------
# Export: outlines -> ImageJ ROIs -> zip
# ---------------------------------------------------------------------------------------------


def outlines_to_roi(outlines: list[np.ndarray], name: str, *, z: int | None = None, t: int | None = None):
    """One ImageJ ROI (``roifile.ImagejRoi``) from a label's outlines (list of (n, 2) int (x, y) arrays).

    One outline -> a TRACED polygon with integer coordinates; several -> a composite (shape) ROI whose
    sub-paths are the outlines (float coordinates). ``z`` / ``t`` are 0-based stack positions (stored 1-based).
    A traced polygon reaching beyond x or y = 32,767 also carries its vertices as floats (ImageJ's
    sub-pixel option, exact for integers below 2**24), which ImageJ reads in place of the header's 16-bit
    bounds; within 32,767 the file stays what ImageJ's wand would save.
    """
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    roi = ImagejRoi()
    roi.name = name
    allxy = outlines[0] if len(outlines) == 1 else np.concatenate(outlines)
    x0, y0 = allxy.min(axis=0)
    x1, y1 = allxy.max(axis=0)
    roi.left, roi.top, roi.right, roi.bottom = int(x0), int(y0), int(x1), int(y1)
    if z is not None:
        roi.z_position = roi.position = z + 1
    if t is not None:
        roi.t_position = t + 1
        roi.position = roi.position or t + 1
    roi.options = ROI_OPTIONS.NONE
    if len(outlines) == 1:
        roi.roitype = ROI_TYPE.TRACED
        roi.integer_coordinates = (outlines[0] - (x0, y0)).astype(np.int32)
        roi.n_coordinates = len(outlines[0])
        if max(x1, y1) > _INT16_MAX:  # beyond the header's int16 bounds: ImageJ's float (sub-pixel) coordinates
            roi.options |= ROI_OPTIONS.SUB_PIXEL_RESOLUTION
            roi.subpixel_coordinates = outlines[0].astype(np.float32)
    else:
        roi.roitype = ROI_TYPE.RECT
        parts = []
        for o in outlines:
            seg = np.empty((len(o), 3), np.float32)
            seg[:, 0] = 1.0  # LINETO
            seg[0, 0] = 0.0  # MOVETO
            seg[:, 1:] = o
            parts.append(seg.ravel())
            parts.append(np.array([4.0], np.float32))  # CLOSE
        roi.multi_coordinates = np.concatenate(parts)
        roi.shape_roi_size = roi.multi_coordinates.size
    return roi


def labels_to_rois(
    labels: np.ndarray, *, stack_axis: str = "z", origin: tuple[int, int] = (0, 0), width: int | None = None
) -> list:
    """ImageJ ROIs for a label image, in the order they go into the zip.

    Parameters
    ----------
    labels : (Y, X), (S, Y, X) or (T, Z, Y, X) int ndarray, 0 = background; S is z or t (``stack_axis``)
    origin : (y, x) of ``labels[..., 0, 0]`` in the image: a window of a larger label image gives the ROIs of
        the whole image's objects it holds wholly (:mod:`cpsnake.export.blockout`)
    width : digits of the names (default: those of the largest label present)

    Returns
    -------
    list of ``roifile.ImagejRoi``: per label (ascending), per slice (ascending) for stacks. A (T, Z, Y, X)
    hyperstack's ROIs carry both positions and are named ``LABEL-tTT-zZZ``.
    """
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3, 4):
        raise ValueError(f"labels of shape {lab.shape}, expected (Y, X), (S, Y, X) or (T, Z, Y, X)")
    if stack_axis not in ("z", "t"):
        raise ValueError(f"stack_axis {stack_axis!r}, expected 'z' or 't'")
    planes = lab.reshape((-1, *lab.shape[-2:]))
    top = int(lab.max()) if lab.size else 0
    width = width or len(str(max(top, 1)))
    items = []  # (label, plane index, roi)
    for s, sl in enumerate(planes):
        ids, outs = trace_outlines(sl)
        for lab_id, o in zip(ids.tolist(), shifted(outs, origin)):
            name = f"{lab_id:0{width}d}"
            if lab.ndim == 3:
                name += f"-{stack_axis}{s + 1:0{len(str(lab.shape[0]))}d}"
                roi = outlines_to_roi(o, name, **{stack_axis: s})
            elif lab.ndim == 4:
                t, z = divmod(s, lab.shape[1])
                name += f"-t{t + 1:0{len(str(lab.shape[0]))}d}-z{z + 1:0{len(str(lab.shape[1]))}d}"
                roi = outlines_to_roi(o, name, z=z, t=t)
                roi.position = 0  # a hyperstack position (c, z, t), not a stack index
            else:
                roi = outlines_to_roi(o, name)
            items.append((lab_id, s, roi))
    items.sort(key=lambda it: (it[0], it[1]))
    return [it[2] for it in items]


def write_rois(path: str | os.PathLike, rois: list) -> None:
    """Write ROIs to an ImageJ ROI-set zip (entries ``NAME.roi``, stored), atomically."""
    with atomic_output(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for roi in rois:
                zf.writestr(f"{roi.name}.roi", roi.tobytes())
