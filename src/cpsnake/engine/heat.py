"""Flows from label images by heat diffusion (the Cellpose target, and the reference of the flow-error check).

Conventions: labels are ``(Y, X)`` integer images, 0 = background, 1..N = objects; flows are
``(2, Y, X)`` = (dY, dX).

:func:`masks_to_flows`: heat diffuses from one source pixel per object (the object pixel nearest its
mean position, rounded: :func:`object_centers`; the Cellpose paper says "median"), ``2 * max(h + w + 2)``
Jacobi iterations of the 3x3 mean inside each object (``h, w`` = bounding-box size, the maximum over all
objects of the image), and the flow is the central-difference gradient of the heat, normalised to unit
length; as cellpose 4.2.1.1, to the last bit.

How, for speed and memory: every object's bounding box is copied (with a one-pixel zero border) into a
packed 2-D *atlas*, so all objects diffuse at once with plain shifted-array sums, band by band so that
each band stays in the CPU cache (threads over bands); the sum over the 3x3 neighbourhood is taken in
the same order as Cellpose and in float64. On a torch device (a GPU) the whole atlas diffuses at once
with the same float64 operations.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

__all__ = ["masks_to_flows", "flows_at", "object_centers", "atlas", "Atlas", "workers"]

# neighbour offsets (dy, dx) in Cellpose's summation order: centre, up, down, left, right, 4 diagonals
_NEIGHBOURS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
_BAND_PIXELS = 1 << 17  # atlas band size (pixels): three float64 bands fit a CPU's L2/L3 cache


def workers() -> int:
    """Threads for independent blocks of work (bands, point blocks): the CPUs this process may use."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def object_centers(labels: np.ndarray, slices: list) -> np.ndarray:
    """Source pixel of each object: the object pixel at its rounded mean position, else the nearest one.

    Parameters
    ----------
    labels : (Y, X) int ndarray
    slices : list of (slice, slice) | None
        ``scipy.ndimage.find_objects(labels)``; entry ``i`` belongs to label ``i + 1``.

    Returns
    -------
    (K, 2) int64 ndarray of (y, x), one row per non-None slice, in label order. The mean is taken in
    bounding-box coordinates and rounded half to even, then the first nearest pixel in raster order is
    taken when the rounded mean is outside the object (as Cellpose does).
    """
    present = np.array([i for i, s in enumerate(slices) if s is not None], dtype=np.int64)
    y0 = np.array([slices[i][0].start for i in present], dtype=np.int64)
    x0 = np.array([slices[i][1].start for i in present], dtype=np.int64)
    nz = np.flatnonzero(labels)
    lab = labels.reshape(-1)[nz].astype(np.int64)
    yy, xx = np.divmod(nz, labels.shape[1])
    top = len(slices) + 1
    n = np.bincount(lab, minlength=top)[present + 1]
    sy = np.bincount(lab, weights=yy, minlength=top)[present + 1]
    sx = np.bincount(lab, weights=xx, minlength=top)[present + 1]
    # local (bounding-box) sums are exact integers; the mean is rounded half to even like np.round
    cy = np.round((sy - n * y0) / n).astype(np.int64)
    cx = np.round((sx - n * x0) / n).astype(np.int64)
    centers = np.stack([cy + y0, cx + x0], axis=1)
    inside = labels[centers[:, 0], centers[:, 1]] == present + 1
    for k in np.flatnonzero(~inside):
        sl = slices[present[k]]
        yi, xi = np.nonzero(labels[sl] == present[k] + 1)
        j = int(np.argmin((xi - cx[k]) ** 2 + (yi - cy[k]) ** 2))
        centers[k] = (yi[j] + y0[k], xi[j] + x0[k])
    return centers


def _pack_atlas(heights: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, list]:
    """Shelf-pack boxes into bands of a 2-D atlas with one zero row/column between boxes.

    Returns (row offset, column offset) per box, the atlas width and the bands as (first row, last row),
    both zero rows: a band's objects lie strictly between them, and neighbouring bands share (only read)
    the separator row, so bands can be processed independently.
    """
    order = np.argsort(-heights, kind="stable")
    width = int(max(256, widths.max() + 2, np.sqrt(_BAND_PIXELS)))
    oy = np.zeros(len(heights), dtype=np.int64)
    ox = np.zeros(len(heights), dtype=np.int64)
    bands = []
    row, col, shelf_h, band_start = 1, 1, 0, 0
    for k in order:
        h, w = int(heights[k]), int(widths[k])
        if col + w + 1 > width:  # new shelf
            row += shelf_h + 1
            col, shelf_h = 1, 0
            if (row - band_start) * width >= _BAND_PIXELS:  # close the band at the zero separator row
                bands.append((band_start, row - 1))
                band_start = row - 1
        oy[k], ox[k] = row, col
        col += w + 1
        shelf_h = max(shelf_h, h)
    end = row + shelf_h + 1
    bands.append((band_start, end))
    return oy, ox, width, bands


def _diffuse_band(T: np.ndarray, M: np.ndarray, src: np.ndarray, niter: int) -> None:
    """Jacobi heat diffusion in place on one atlas band ``T (H, W)`` float64, object mask ``M (H-2, W-2)``.

    Each iteration adds 1 at the sources (flat indices into T) and replaces every object pixel by the
    mean of its 3x3 neighbourhood (neighbours outside the object hold 0), summed in Cellpose's order.
    """
    H, W = T.shape
    S = np.empty((H - 2, W - 2))
    inner = T[1:-1, 1:-1]
    flatT = T.reshape(-1)
    views = [T[1 + dy : H - 1 + dy, 1 + dx : W - 1 + dx] for dy, dx in _NEIGHBOURS]
    for _ in range(niter):
        flatT[src] += 1.0
        np.add(views[0], views[1], out=S)
        for v in views[2:]:
            np.add(S, v, out=S)
        np.divide(S, 9.0, out=S)
        np.multiply(S, M, out=inner)


def _diffuse_torch(M: np.ndarray, srcpos: np.ndarray, niter: int, device) -> np.ndarray:
    """:func:`_diffuse_band` over the whole atlas at once, in float64 through torch on ``device``.

    ``M (H, W)`` is the atlas's object mask (zero border and zero separator rows), ``srcpos`` the flat
    source indices. The additions, the division by 9 and the masking are the same float64 operations in
    the same order as the numpy bands (whose zero separator rows stay zero here too, as M is 0 there), so
    the heat is the same to the last bit. Returns the heat (H, W) as a numpy array.
    """
    import torch

    H, W = M.shape
    T = torch.zeros((H, W), dtype=torch.float64, device=device)
    mask = torch.from_numpy(np.ascontiguousarray(M[1:-1, 1:-1])).to(device)
    src = torch.from_numpy(np.asarray(srcpos, dtype=np.int64)).to(device)
    S = torch.empty((H - 2, W - 2), dtype=torch.float64, device=device)
    flat, inner = T.view(-1), T[1:-1, 1:-1]
    views = [T[1 + dy : H - 1 + dy, 1 + dx : W - 1 + dx] for dy, dx in _NEIGHBOURS]
    for _ in range(niter):
        flat[src] += 1.0  # one source per object: no repeated index
        torch.add(views[0], views[1], out=S)
        for v in views[2:]:
            S.add_(v)
        S.div_(9.0)
        torch.mul(S, mask, out=inner)
    return T.cpu().numpy()


class Atlas(NamedTuple):
    """Every object's bounding box packed into one small 2-D array (see :func:`_pack_atlas`)."""

    y0: np.ndarray  # (K,) top of each present object's box in the image
    x0: np.ndarray  # (K,) left of each box
    hh: np.ndarray  # (K,) box heights
    ww: np.ndarray  # (K,) box widths
    oy: np.ndarray  # (K,) top of each box in the atlas
    ox: np.ndarray  # (K,) left of each box in the atlas
    height: int
    width: int
    bands: list  # row bands of the atlas that share only zero separator rows
    nz: np.ndarray  # (N,) flat image indices of object pixels, raster order
    lab: np.ndarray  # (N,) their labels
    apos: np.ndarray  # (N,) their flat indices in the atlas


def atlas(labels: np.ndarray, slices: list, present: np.ndarray) -> Atlas:
    """Pack the boxes of the ``present`` objects (indices into ``slices``) and map object pixels into them."""
    y0 = np.array([slices[i][0].start for i in present], dtype=np.int64)
    x0 = np.array([slices[i][1].start for i in present], dtype=np.int64)
    hh = np.array([slices[i][0].stop for i in present], dtype=np.int64) - y0
    ww = np.array([slices[i][1].stop for i in present], dtype=np.int64) - x0
    oy, ox, width, bands = _pack_atlas(hh, ww)
    # box index of each label (labels may skip values)
    box = np.full(len(slices) + 1, -1, dtype=np.int64)
    box[present + 1] = np.arange(len(present))
    nz = np.flatnonzero(labels)
    lab = labels.reshape(-1)[nz]
    b = box[lab]
    yy, xx = np.divmod(nz, labels.shape[1])
    apos = (oy[b] + yy - y0[b]) * width + (ox[b] + xx - x0[b])
    return Atlas(y0, x0, hh, ww, oy, ox, bands[-1][1] + 1, width, bands, nz, lab, apos)


def _heat(
    labels: np.ndarray, slices: list, niter: int | None, device=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heat after diffusion, for every object pixel (diffused by numpy, or by torch on ``device``).

    Returns (flat pixel indices of object pixels in raster order (N,), their labels (N,),
    heat image (Y+2, X+2) float64 with a one-pixel zero border).
    """
    Ly, Lx = labels.shape
    present = np.array([i for i, s in enumerate(slices) if s is not None], dtype=np.int64)
    at = atlas(labels, slices, present)
    if niter is None:
        niter = int(2 * (at.hh + at.ww + 2).max())
    centers = object_centers(labels, slices)
    height, width, bands, nz, lab, apos = at.height, at.width, at.bands, at.nz, at.lab, at.apos
    M = np.zeros(height * width)
    M[apos] = 1.0
    M = M.reshape(height, width)
    T = np.zeros((height, width))
    srcpos = (at.oy + centers[:, 0] - at.y0) * width + (at.ox + centers[:, 1] - at.x0)
    src_row = srcpos // width

    if device is not None:
        T = _diffuse_torch(M, srcpos, niter, device)
    else:

        def run(band: tuple[int, int]) -> None:
            r0, r1 = band
            sel = (src_row > r0) & (src_row < r1)
            _diffuse_band(T[r0 : r1 + 1], M[r0 + 1 : r1, 1:-1], srcpos[sel] - r0 * width, niter)

        # bands only share zero separator rows, so they can run in parallel (numpy releases the GIL)
        with ThreadPoolExecutor(max_workers=workers()) as pool:
            list(pool.map(run, bands))
    M = None  # freed (the band closure above read it)
    heat = np.zeros((Ly + 2, Lx + 2))
    yy, xx = np.divmod(nz, Lx)
    heat[yy + 1, xx + 1] = T.reshape(-1)[apos]
    return nz, lab, heat


def flows_at(labels: np.ndarray, slices: list, niter: int | None = None, device=None):
    """Unit flows at the object pixels of ``labels`` (Y, X) whose objects' boxes are ``slices``
    (``ndimage.find_objects``): (flat indices (N,), labels (N,), mu (2, N) float64); :func:`masks_to_flows`
    spread over the image, and the flow-error check's reference (:func:`cpsnake.engine.dynamics.flow_errors`)."""
    nz, lab, heat = _heat(labels, slices, niter, device)
    Lx = labels.shape[1]
    yy, xx = np.divmod(nz, Lx)
    yy += 1
    xx += 1
    # central differences of the heat, neighbours of other objects included (as Cellpose does)
    mu = np.empty((2, nz.size))
    np.subtract(heat[yy + 1, xx], heat[yy - 1, xx], out=mu[0])
    np.subtract(heat[yy, xx + 1], heat[yy, xx - 1], out=mu[1])
    del heat, yy, xx
    norm = np.sqrt(mu[0] ** 2 + mu[1] ** 2)
    norm += 1e-60
    mu /= norm
    return nz, lab, mu


def masks_to_flows(labels: np.ndarray, *, niter: int | None = None, device=None) -> np.ndarray:
    """Flows of a label image: unit vectors (dY, dX) pointing to each object's centre.

    Parameters
    ----------
    labels : (Y, X) int ndarray
        0 = background; objects need not be numbered consecutively.
    niter : int, optional
        Diffusion iterations; default ``2 * max(h + w + 2)`` over the objects' bounding boxes.
    device : torch device, optional
        Diffuse through torch on this device (float64, the same result to the last bit); None: numpy.

    Returns
    -------
    (2, Y, X) float32 ndarray: dY, dX; zero on background.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels of shape {labels.shape}, expected (Y, X)")
    out = np.zeros((2, *labels.shape), dtype=np.float32)
    if labels.size == 0 or labels.max() <= 0:
        return out
    labels = labels.astype(np.int64, copy=False) if labels.dtype.kind != "i" else labels
    nz, _, mu = flows_at(labels, ndi.find_objects(labels), niter, device)
    out.reshape(2, -1)[:, nz] = mu
    return out
