"""Flows from 3-D label stacks by heat diffusion (the 3-D Cellpose target, and the reference of the 3-D flow-error
check).

Conventions: labels are ``(Z, Y, X)`` integer stacks, 0 = background, 1..N = objects; flows are
``(3, Z, Y, X)`` = (dZ, dY, dX).

:func:`masks_to_flows_3d` computes what ``cellpose.dynamics.masks_to_flows_gpu_3d`` computes in cellpose
4.2.1.1 (its 3-D rule differs from its 2-D one in every detail, so it has its own module):

* one source voxel per object: the object voxel nearest the object's *mean* position (not rounded; the
  squared distance summed as dz^2 + dx^2 + dy^2, in box coordinates shifted by one, first voxel in raster
  order on a tie) -- :func:`object_centers_3d`;
* ``6 * max(dz + dy + dx + 3)`` Jacobi iterations (``dz, dy, dx`` = bounding-box sizes, the maximum over
  all objects of the stack) of the mean over the voxel and its 6 face neighbours (divided by 7; neighbours
  outside the object count as 0), the source adding 1 before each iteration;
* the flow is the central-difference gradient of the heat (heat of touching *other* objects included,
  as cellpose does), normalised to unit length.

How, for speed and memory: every object's bounding box is copied (with a one-voxel zero border) into
*slabs*: boxes of similar depth and height side by side along X, one zero column between neighbours;
each slab diffuses with plain shifted-array sums in float64, slabs in parallel threads. The sum over the
7 neighbours is taken in cellpose's order (centre, z+1, z-1, y+1, y-1, x+1, x-1).

Difference from cellpose: cellpose diffuses in float32 when the padded stack has more than 4e7 voxels
(on CPU and GPU alike); this module always uses float64 (flows then differ from cellpose's in the last
bits of float32 on such stacks only).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from cpsnake.engine.heat import workers

__all__ = ["masks_to_flows_3d", "object_centers_3d", "flows_at_3d"]

# neighbour offsets (dz, dy, dx) in cellpose's summation order
_NEIGHBOURS = ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
_SLAB_VOXELS = 1 << 17  # target slab size: three float64 slabs stay in a CPU's L2/L3 cache


def _present(slices: list) -> np.ndarray:
    return np.array([i for i, s in enumerate(slices) if s is not None], dtype=np.int64)


def _boxes(slices: list, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3) box starts and (K, 3) box sizes (dz, dy, dx) of the present objects."""
    start = np.array([[s.start for s in slices[i]] for i in present], dtype=np.int64).reshape(-1, 3)
    stop = np.array([[s.stop for s in slices[i]] for i in present], dtype=np.int64).reshape(-1, 3)
    return start, stop - start


def object_centers_3d(labels: np.ndarray, slices: list) -> np.ndarray:
    """Source voxel of each object, as cellpose 4.2.1.1 picks it in 3-D.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
    slices : list of 3-tuples of slices | None
        ``scipy.ndimage.find_objects(labels)``; entry ``i`` belongs to label ``i + 1``.

    Returns
    -------
    (K, 3) int64 ndarray of (z, y, x), one row per non-None slice, in label order: the object voxel
    nearest the object's mean position (first in raster order on a tie). Coordinates are taken in the
    bounding box plus one (cellpose's padded box coordinates), and the squared distance is summed in
    cellpose's order (z, then x, then y), so that near-ties fall as in cellpose.
    """
    present = _present(slices)
    start, _ = _boxes(slices, present)
    box = np.full(len(slices) + 1, -1, dtype=np.int64)
    box[present + 1] = np.arange(len(present))
    nz = np.flatnonzero(labels)
    b = box[labels.reshape(-1)[nz]]
    zyx = np.unravel_index(nz, labels.shape)
    local = [np.asarray(zyx[a] - start[b, a] + 1, dtype=np.int64) for a in range(3)]
    n = np.bincount(b, minlength=len(present)).astype(np.float64)
    # integer sums are exact in float64, so sum / n is np.mean's value
    mean = [np.bincount(b, weights=local[a], minlength=len(present)) / n for a in range(3)]
    d = (local[0] - mean[0][b]) ** 2
    d += (local[2] - mean[2][b]) ** 2
    d += (local[1] - mean[1][b]) ** 2
    order = np.lexsort((d, b))  # by object, then distance; stable, so raster order on ties
    first = order[np.r_[0, np.flatnonzero(np.diff(b[order])) + 1]]
    return np.stack([zyx[a][first] for a in range(3)], axis=1).astype(np.int64)


def _pack_slabs(sizes: np.ndarray) -> tuple[np.ndarray, list]:
    """Assign boxes (K, 3) sizes to slabs along X.

    Returns the X offset of each box inside its slab (K,) and the slabs as (box indices, depth, height,
    width) with depth/height the largest box's plus a zero border, width with one zero column between
    boxes and at both ends.
    """
    order = np.lexsort((sizes[:, 1], sizes[:, 0]))[::-1]  # deepest, then tallest first
    ox = np.zeros(len(sizes), dtype=np.int64)
    slabs: list = []
    members: list = []
    col = 1
    hz = hy = 0
    for k in order:
        dz, dy, dx = (int(v) for v in sizes[k])
        nz, ny = max(hz, dz), max(hy, dy)
        if members and (nz + 2) * (ny + 2) * (col + dx + 1) > _SLAB_VOXELS:
            slabs.append((np.array(members), hz + 2, hy + 2, col))
            members, col, nz, ny = [], 1, dz, dy
        hz, hy = nz, ny
        members.append(k)
        ox[k] = col
        col += dx + 1
    slabs.append((np.array(members), hz + 2, hy + 2, col))
    return ox, slabs


def _diffuse_slab(T: np.ndarray, M: np.ndarray, src: np.ndarray, niter: int) -> None:
    """Jacobi diffusion in place on one slab ``T (D, H, W)`` float64 with object mask ``M (D-2, H-2, W-2)``.

    Each iteration adds 1 at the sources (flat indices into T) and replaces every object voxel by the
    mean of itself and its 6 face neighbours (neighbours outside the object hold 0), in cellpose's order.
    """
    D, H, W = T.shape
    S = np.empty((D - 2, H - 2, W - 2))
    inner = T[1:-1, 1:-1, 1:-1]
    flat = T.reshape(-1)
    views = [T[1 + dz : D - 1 + dz, 1 + dy : H - 1 + dy, 1 + dx : W - 1 + dx] for dz, dy, dx in _NEIGHBOURS]
    for _ in range(niter):
        flat[src] += 1.0
        np.add(views[0], views[1], out=S)
        for v in views[2:]:
            np.add(S, v, out=S)
        np.divide(S, 7.0, out=S)
        np.multiply(S, M, out=inner)


def _heat_3d(labels: np.ndarray, slices: list, niter: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Diffused heat of every object voxel: (flat indices of object voxels in raster order (N,), heat (N,) float64)."""
    present = _present(slices)
    start, sizes = _boxes(slices, present)
    if niter is None:
        niter = int(6 * (sizes + 1).sum(axis=1).max())
    centers = object_centers_3d(labels, slices)
    box = np.full(len(slices) + 1, -1, dtype=np.int64)
    box[present + 1] = np.arange(len(present))
    nz = np.flatnonzero(labels)
    b = box[labels.reshape(-1)[nz]]
    zyx = np.unravel_index(nz, labels.shape)
    ox, slabs = _pack_slabs(sizes)
    slab_of = np.zeros(len(present), dtype=np.int64)
    for s, (members, *_rest) in enumerate(slabs):
        slab_of[members] = s
    heat = np.empty(nz.size)
    vs = slab_of[b]
    by_slab = np.argsort(vs, kind="stable")
    bounds = np.searchsorted(vs[by_slab], np.arange(len(slabs) + 1))

    def run(s: int) -> None:
        members, D, H, W = slabs[s]
        sel = by_slab[bounds[s] : bounds[s + 1]]
        bs = b[sel]
        # position of each voxel in the slab (z, y shifted by the zero border, x by the box's column)
        pos = ((zyx[0][sel] - start[bs, 0] + 1) * H + (zyx[1][sel] - start[bs, 1] + 1)) * W + (
            zyx[2][sel] - start[bs, 2] + ox[bs]
        )
        M = np.zeros(D * H * W)
        M[pos] = 1.0
        M = M.reshape(D, H, W)[1:-1, 1:-1, 1:-1].copy()
        c = centers[members]
        src = ((c[:, 0] - start[members, 0] + 1) * H + (c[:, 1] - start[members, 1] + 1)) * W + (
            c[:, 2] - start[members, 2] + ox[members]
        )
        T = np.zeros((D, H, W))
        _diffuse_slab(T, M, src, niter)
        heat[sel] = T.reshape(-1)[pos]

    # slabs are separate arrays: they run in parallel (numpy releases the GIL)
    with ThreadPoolExecutor(max_workers=workers()) as pool:
        list(pool.map(run, range(len(slabs))))
    return nz, heat


def flows_at_3d(labels: np.ndarray, slices: list | None = None, niter: int | None = None):
    """Unit flows at object voxels: (flat indices (N,) in raster order, labels (N,), mu (3, N) float64 = dZ, dY, dX).

    ``labels (Z, Y, X)`` int; ``slices`` = ``scipy.ndimage.find_objects(labels)`` (computed when None).
    """
    if slices is None:
        slices = ndi.find_objects(labels)
    nz, hv = _heat_3d(labels, slices, niter)
    Lz, Ly, Lx = labels.shape
    # heat of the whole stack with a one-voxel zero border: the central differences read the heat of
    # touching objects too (as cellpose does)
    heat = np.zeros((Lz + 2, Ly + 2, Lx + 2))
    z, y, x = np.unravel_index(nz, labels.shape)
    pz, py, px = z + 1, y + 1, x + 1
    del z, y, x
    pflat = (pz * (Ly + 2) + py) * (Lx + 2) + px
    heat.reshape(-1)[pflat] = hv
    del hv, pz, py, px
    hflat = heat.reshape(-1)
    sz, sy = (Ly + 2) * (Lx + 2), Lx + 2
    mu = np.empty((3, nz.size))
    for a, step in enumerate((sz, sy, 1)):
        np.subtract(hflat[pflat + step], hflat[pflat - step], out=mu[a])
    del heat, hflat, pflat
    norm = mu[0] ** 2
    norm += mu[1] ** 2
    norm += mu[2] ** 2
    np.sqrt(norm, out=norm)
    norm += 1e-60
    mu /= norm
    return nz, labels.reshape(-1)[nz], mu


def masks_to_flows_3d(labels: np.ndarray, *, niter: int | None = None) -> np.ndarray:
    """Flows of a label stack: unit vectors (dZ, dY, dX) pointing to each object's centre.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
        0 = background; objects need not be numbered consecutively.
    niter : int, optional
        Diffusion iterations; default ``6 * max(dz + dy + dx + 3)`` over the objects' bounding boxes.

    Returns
    -------
    (3, Z, Y, X) float32 ndarray: dZ, dY, dX; zero on background.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels of shape {labels.shape}, expected (Z, Y, X)")
    out = np.zeros((3, *labels.shape), dtype=np.float32)
    if labels.size == 0 or labels.max() <= 0:
        return out
    labels = labels.astype(np.int64, copy=False) if labels.dtype.kind != "i" else labels
    nz, _, mu = flows_at_3d(labels, ndi.find_objects(labels), niter)
    out.reshape(3, -1)[:, nz] = mu
    return out
