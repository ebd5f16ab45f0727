"""Cellpose flow dynamics: label image <-> flow field, the building blocks of reconstruction.

Conventions: labels are ``(Y, X)`` integer images, 0 = background, 1..N = objects; flows are
``(2, Y, X)`` = (dY, dX). Everything here is 2-D.

* :func:`cpsnake.engine.heat.masks_to_flows` -- the Cellpose training target and the flow-error reference, by
  heat diffusion, lives in :mod:`cpsnake.engine.heat`.
* :func:`follow_flows` -- Euler integration of pixels along ``dP / 5`` with bilinear interpolation
  (torch ``grid_sample``, the same sampling as Cellpose, ``align_corners=False`` included): the whole image's
  2-D flow following. (A block of a large image is followed in :mod:`cpsnake.engine.follow_block`, a 3-D stack
  in :mod:`cpsnake.engine.follow3d`.)
* :func:`get_masks` -- histogram of end points, seeds at local maxima (> 10 end points in a 5x5
  neighbourhood), each seed grown 5 steps (8-connected) through bins with > 2 end points inside its
  11x11 window; pixels take the label of their end point's bin; masks above ``max_size_fraction`` of
  the image are dropped.
* :func:`flow_errors`, :func:`remove_bad_flow_masks` -- mean squared difference between the flows of a
  mask and the predicted flows ``dP / 5``; masks above the threshold are dropped.
* :func:`fill_holes_and_remove_small_masks` -- drop masks under ``min_size`` pixels, fill holes,
  drop again; :func:`remove_labels`, :func:`remove_small` -- the dropping, in place (3-D uses them too).
* :func:`renumber` -- labels 1..N in order of first appearance in a raster scan; :func:`compact` --
  distinct labels and their ranks, with memory that follows the number of objects, not the largest id.

The algorithms follow cellpose 4.2.1.1 (``cellpose.dynamics``, ``cellpose.utils``) step by step so that
results agree with it, but the work is organised differently, for speed and memory:

* heat diffusion runs on a packed *atlas* of the objects' boxes (:mod:`cpsnake.engine.heat`);
* flow following runs only on pixels above the cell-probability threshold, in blocks of points that
  stay within cache, with in-place updates (no per-iteration temporaries);
* seeding uses a ``bincount`` histogram and small per-seed windows; flow errors are computed only at
  mask pixels; no full-image float64 temporaries beyond one heat image.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from cpsnake.engine.heat import atlas, flows_at, workers

__all__ = [
    "follow_flows",
    "get_masks",
    "flow_errors",
    "remove_bad_flow_masks",
    "fill_holes_and_remove_small_masks",
    "renumber",
    "compact",
    "remove_labels",
    "remove_small",
]


def compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct labels of ``labels`` and the image with each mapped to its rank, whatever the largest id.

    Parameters
    ----------
    labels : (...) integer ndarray, 0 = background, no negative values; ids need not be consecutive

    Returns
    -------
    ids : (K,) int64, the distinct non-zero labels, ascending
    index : int32 (int64 above 2**31 - 1 objects) ndarray of the shape of ``labels``: 0 where 0, else
        k + 1 where ``labels == ids[k]``.

    Memory follows the number of pixels and objects, never the largest id: a lookup table when the
    largest id is at most the number of pixels, else ``np.unique`` (a sort).
    """
    flat = np.asarray(labels).reshape(-1)
    top = int(flat.max()) if flat.size else 0
    if top <= max(flat.size, 1 << 16):
        present = np.zeros(top + 1, dtype=bool)
        present[flat] = True
        present[0] = False
        ids = np.flatnonzero(present).astype(np.int64)
        lut = np.zeros(top + 1, dtype=np.int32 if ids.size < 2**31 - 1 else np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lut[labels]
    uniq, inv = np.unique(flat, return_inverse=True)
    if uniq[0] == 0:
        ids = uniq[1:]
    else:  # no background pixel
        ids, inv = uniq, inv + 1
    index = inv.astype(np.int32 if ids.size < 2**31 - 1 else np.int64).reshape(np.shape(labels))
    return ids.astype(np.int64), index


def renumber(labels: np.ndarray) -> np.ndarray:
    """Relabel ``labels (Y, X)`` in place to 1..N in order of first appearance (raster scan); 0 stays 0.

    Returns the same array (like ``fastremap.renumber``, which Cellpose uses). Tables are sized by the
    number of objects, not the largest id (sparse ids go through :func:`compact`).
    """
    flat = labels.reshape(-1)
    nz = np.flatnonzero(flat)
    if nz.size == 0:
        return labels
    vals = flat[nz]
    top = int(vals.max())
    if top > flat.size:  # sparse ids: rank them first (the order of first appearance does not change)
        vals = compact(vals)[1]
        top = int(vals.max())
    first = np.full(top + 1, nz.size, dtype=np.int64)
    first[vals[::-1]] = np.arange(nz.size - 1, -1, -1)  # last write wins -> first occurrence
    present = np.flatnonzero(first < nz.size)
    present = present[present > 0]
    order = present[np.argsort(first[present], kind="stable")]
    lut = np.zeros(top + 1, dtype=labels.dtype)
    lut[order] = np.arange(1, order.size + 1, dtype=labels.dtype)
    flat[nz] = lut[vals]
    return labels


def remove_labels(labels: np.ndarray, remove: np.ndarray) -> None:
    """Set the labels listed in ``remove`` to 0, in place."""
    if len(remove) == 0:
        return
    top = int(labels.max())
    drop = np.zeros(top + 1, dtype=bool)
    remove = np.asarray(remove)
    drop[remove[(remove > 0) & (remove <= top)]] = True
    labels[drop[labels]] = 0


def follow_flows(
    dP: np.ndarray,
    inds: tuple[np.ndarray, np.ndarray],
    niter: int = 200,
    *,
    block: int = 1 << 16,
    device=None,
    interp: bool = True,
) -> np.ndarray:
    """Euler-integrate pixels along the flow field with bilinear interpolation.

    Parameters
    ----------
    dP : (2, Y, X) float32 ndarray
        Step field (dY, dX) in pixels per iteration (Cellpose uses flows / 5, zeroed outside cells).
    inds : (ys, xs) int arrays (N,)
        Start pixels.
    niter : int
        Iterations.
    block : int
        Points integrated together (all iterations), so their neighbourhood stays in cache.
    device : torch device, optional
        Integrate every point at once on this device (a GPU); each point's path is computed by the same
        operations either way, so on the same device type the end points are the same. None: CPU blocks.
    interp : bool
        False: no interpolation, each step is the flow at the pixel the point is in (its coordinates
        truncated), in float32, as cellpose 3's ``steps2D`` (what its size estimation uses).

    Returns
    -------
    (2, N) float32 ndarray: final (y, x), clamped to the image. Sampling is torch ``grid_sample``
    (bilinear, zero padding, ``align_corners=False``) in normalised coordinates exactly as Cellpose
    4 does it, so the trajectories are Cellpose's.
    """
    import torch
    import torch.nn.functional as F

    Ly, Lx = dP.shape[1:]
    n = len(inds[0])
    out = np.empty((2, n), dtype=np.float32)
    if n == 0:
        return out
    if not interp:
        return _steps_nearest(np.asarray(dP, np.float32), inds, niter)
    ext = (float(Lx - 1), float(Ly - 1))  # (x, y) order, as grid_sample wants
    on = torch.device(device) if device is not None else torch.device("cpu")
    im = torch.empty((1, 2, Ly, Lx), dtype=torch.float32, device=on)
    im[0, 0] = torch.from_numpy(np.ascontiguousarray(dP[1], dtype=np.float32)).to(on)  # x first
    im[0, 1] = torch.from_numpy(np.ascontiguousarray(dP[0], dtype=np.float32)).to(on)
    for k in range(2):
        im[:, k] *= 2.0 / ext[k]
    ys = torch.from_numpy(np.asarray(inds[0])).to(on)
    xs = torch.from_numpy(np.asarray(inds[1])).to(on)

    def run(a: int) -> None:
        b = min(a + block, n)
        pt = torch.empty((1, 1, b - a, 2), dtype=torch.float32, device=on)
        pt[0, 0, :, 0] = xs[a:b].to(torch.float32)
        pt[0, 0, :, 1] = ys[a:b].to(torch.float32)
        for k in range(2):
            pt[..., k] /= ext[k]
        pt *= 2
        pt -= 1
        flat = pt.view(b - a, 2)
        for _ in range(niter):
            d = F.grid_sample(im, pt, align_corners=False).view(2, b - a)  # (1, 2, 1, m) -> (2, m)
            flat[:, 0].add_(d[0])
            flat[:, 1].add_(d[1])
            flat.clamp_(-1.0, 1.0)
        pt += 1
        pt *= 0.5
        for k in range(2):
            pt[..., k] *= ext[k]
        out[0, a:b] = flat[:, 1].cpu().numpy()
        out[1, a:b] = flat[:, 0].cpu().numpy()

    if device is not None:  # one block of every point, on the device
        with torch.inference_mode():
            block = n
            run(0)
        return out

    run_blocks(run, n, block)
    return out


def run_blocks(run, n: int, block: int, *, uses_torch: bool = True) -> None:
    """Call ``run(start)`` for ``start`` in ``range(0, n, block)``, blocks spread over a small thread pool.

    Blocks are independent. With ``uses_torch`` each runs with one torch thread (small ops with torch's own
    threading are slow on a busy machine), under ``torch.inference_mode``, and torch's thread count is
    restored after; without it torch is not imported (compiled code that releases the GIL).
    """
    if not uses_torch:
        with ThreadPoolExecutor(max_workers=workers()) as pool:
            list(pool.map(run, range(0, n, block)))
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode(), ThreadPoolExecutor(max_workers=workers()) as pool:
            list(pool.map(run, range(0, n, block)))
    finally:
        torch.set_num_threads(threads)


def _steps_nearest(dP: np.ndarray, inds, niter: int) -> np.ndarray:
    """Euler steps without interpolation: (2, N) float32 end points, clamped to the image (see follow_flows)."""
    Ly, Lx = dP.shape[1:]
    p = np.stack([np.asarray(inds[0]), np.asarray(inds[1])]).astype(np.float32)
    hi = np.array([Ly - 1, Lx - 1], np.float32)[:, None]
    for _ in range(niter):
        step = dP[:, p[0].astype(np.intp), p[1].astype(np.intp)]  # both steps read before either moves
        np.add(p, step, out=p)
        np.clip(p, 0, hi, out=p)
    return p


def get_masks(
    p: np.ndarray,
    inds: tuple[np.ndarray, np.ndarray],
    shape: tuple[int, int],
    *,
    max_size_fraction: float = 0.4,
    device=None,
) -> np.ndarray:
    """Masks from end points: histogram seeds grown in 11x11 windows, big masks dropped, renumbered.

    Parameters
    ----------
    p : (2, N) float or int ndarray
        End points (y, x) of the pixels ``inds``; truncated to integer bins.
    inds : (ys, xs) int arrays (N,)
    shape : (Y, X)
    max_size_fraction : float
        Masks with more than this fraction of ``Y * X`` pixels are removed.
    device : torch device, optional
        Histogram, seeds and seed growth through torch on this device (:func:`_seed_labels_torch`,
        the same labels); None: numpy.

    Returns
    -------
    (Y, X) int32 labels 1..K in order of first appearance.
    """
    import torch

    rpad = 20
    Ly, Lx = shape
    Hy, Hx = Ly + 2 * rpad, Lx + 2 * rpad
    py = np.clip(p[0].astype(np.int64) + rpad, 0, Ly + rpad - 1)
    px = np.clip(p[1].astype(np.int64) + rpad, 0, Lx + rpad - 1)
    fp = py * Hx + px
    del py, px
    labels = np.zeros(shape, dtype=np.int32)
    if device is not None:
        seeded = _seed_labels_torch(fp, (Hy, Hx), device)
        if seeded is None:
            return labels
        return _finish_masks(labels, inds, seeded, max_size_fraction)
    h = np.bincount(fp, minlength=Hy * Hx).astype(np.int32).reshape(Hy, Hx)
    hmax = ndi.maximum_filter(h, size=5, mode="constant", cval=0)
    seeds = np.flatnonzero((h >= hmax) & (h > 10))
    del hmax
    if seeds.size == 0:
        return labels
    # ascending end-point count; torch's sort so that ties fall as in Cellpose (larger index wins overlaps)
    npts = torch.from_numpy(h.reshape(-1)[seeds])
    seeds = seeds[torch.argsort(npts).numpy()]
    sy, sx = np.divmod(seeds, Hx)
    off = np.arange(-5, 6)
    win = (sy[:, None, None] + off[None, :, None]) * Hx + (sx[:, None, None] + off[None, None, :])
    big = h.reshape(-1)[win] > 2  # (n, 11, 11)
    grow = np.zeros(big.shape, dtype=bool)
    grow[:, 5, 5] = True
    for _ in range(5):  # 8-connected geodesic dilation inside the window
        grow = ndi.binary_dilation(grow, structure=np.ones((1, 3, 3), bool)) & big
    k, wy, wx = np.nonzero(grow)
    del grow, big
    M1 = np.zeros(Hy * Hx, dtype=np.int32)
    np.maximum.at(M1, win[k, wy, wx], (k + 1).astype(np.int32))
    del win
    return _finish_masks(labels, inds, M1[fp], max_size_fraction)


def _finish_masks(labels: np.ndarray, inds, seeded: np.ndarray, max_size_fraction: float) -> np.ndarray:
    """Paint each followed pixel with its end point's seed label, drop masks over the size limit, renumber."""
    Ly, Lx = labels.shape
    flat = labels.reshape(-1)
    flat[np.asarray(inds[0]) * Lx + np.asarray(inds[1])] = seeded
    counts = np.bincount(flat)
    bigl = np.flatnonzero(counts > Ly * Lx * max_size_fraction)
    remove_labels(labels, bigl[bigl > 0])
    return renumber(labels)


def _seed_labels_torch(fp: np.ndarray, hshape: tuple[int, int], device) -> np.ndarray | None:
    """:func:`get_masks`'s seeding through torch on ``device``: the seed label of each end-point bin ``fp``.

    Same steps as the numpy code: histogram of the end points, local maxima over 5x5 with more than 10
    end points, seeds ordered by count (on the CPU, with the numpy path's sort, so ties fall alike),
    each grown 5 steps (8-connected) through bins with more than 2 end points in its 11x11 window,
    overlaps won by the later seed. Returns (N,) int32 labels (0: no seed), or None when no bin is a seed.
    """
    import torch
    import torch.nn.functional as F

    Hy, Hx = hshape
    fpt = torch.from_numpy(fp).to(device)
    h = torch.bincount(fpt, minlength=Hy * Hx).to(torch.int32)
    hf = h.view(1, 1, Hy, Hx).to(torch.float64)  # counts are exact in float64
    hmax = F.max_pool2d(hf, 5, stride=1, padding=2)  # padding never wins: counts are >= 0
    seeds = torch.nonzero(((hf >= hmax) & (hf > 10)).view(-1)).view(-1)  # ascending, as np.flatnonzero
    if seeds.numel() == 0:
        return None
    order = torch.argsort(h[seeds].cpu())
    seeds = seeds[order.to(device)]
    sy, sx = seeds // Hx, seeds % Hx
    off = torch.arange(-5, 6, device=device)
    win = (sy[:, None, None] + off[None, :, None]) * Hx + (sx[:, None, None] + off[None, None, :])
    big = h[win] > 2  # (n, 11, 11)
    grow = torch.zeros(big.shape, dtype=torch.bool, device=device)
    grow[:, 5, 5] = True
    for _ in range(5):  # 8-connected dilation inside the window (outside it counts as empty)
        grow = (F.max_pool2d(grow[:, None].to(torch.float32), 3, stride=1, padding=1)[:, 0] > 0) & big
    k, wy, wx = torch.nonzero(grow, as_tuple=True)
    M1 = torch.zeros(Hy * Hx, dtype=torch.int32, device=device)
    M1.scatter_reduce_(0, win[k, wy, wx], (k + 1).to(torch.int32), reduce="amax")
    return M1[fpt].cpu().numpy()


def flow_errors(labels: np.ndarray, dP: np.ndarray, *, device=None, niter: int | None = None) -> np.ndarray:
    """Mean squared error per mask between its own flows and the predicted flows ``dP / 5``.

    Parameters
    ----------
    labels : (Y, X) int ndarray, labels 1..K consecutive.
    dP : (2, Y, X) float32 ndarray, network flows (dY, dX) at the network's scale (x5).
    device : torch device, optional: the masks' heat diffusion runs there (:func:`cpsnake.engine.heat.masks_to_flows`).
    niter : int, optional: diffusion iterations; default cellpose's, ``2 * max(h + w + 2)`` over the masks'
        bounding boxes (a block of a large image passes the whole image's, :mod:`cpsnake.engine.blocks`).

    Returns
    -------
    (K,) float64 ndarray; entry ``k`` for label ``k + 1``.
    """
    slices = ndi.find_objects(labels)
    nz, lab, mu = flows_at(labels, slices, niter, device=device)
    dp = dP.reshape(2, -1)
    err = np.zeros(nz.size)
    for c in range(2):
        d = mu[c] - (dp[c, nz] / np.float32(5.0)).astype(np.float64)
        err += d * d
    counts = np.bincount(lab, minlength=len(slices) + 1)[1:]
    sums = np.bincount(lab, weights=err, minlength=len(slices) + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def remove_bad_flow_masks(
    labels: np.ndarray, dP: np.ndarray, *, threshold: float = 0.4, device=None, niter: int | None = None
) -> np.ndarray:
    """Drop masks whose :func:`flow_errors` (``niter`` diffusion steps) exceed ``threshold``; renumber.
    ``labels (Y, X)`` is modified."""
    err = flow_errors(labels, dP, device=device, niter=niter)
    remove_labels(labels, 1 + np.flatnonzero(err > threshold))
    return renumber(labels)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    counts = np.bincount(labels.reshape(-1))
    small = np.flatnonzero((counts < min_size) & (counts > 0))
    remove_labels(labels, small[small > 0])
    return renumber(labels)


def fill_holes_and_remove_small_masks(labels: np.ndarray, *, min_size: int = 15) -> np.ndarray:
    """Drop masks under ``min_size`` pixels, fill holes (4-connected background), drop again; renumber.

    Parameters
    ----------
    labels : (Y, X) int ndarray, modified in place and returned.
    min_size : int
        Masks with fewer pixels are removed (before and after filling); ``<= 0`` keeps all.

    Holes are filled object by object in label order inside each bounding box, so an object lying in
    another object's hole is absorbed by it, as in Cellpose.
    """
    if min_size > 0:
        remove_small(labels, min_size)
    slices = ndi.find_objects(labels)
    for i in _objects_with_holes(labels, slices):
        # sequential, in label order, on the current labels (a fill may absorb a later object)
        crop = labels[slices[i - 1]]
        msk = crop == i
        if msk.any():
            crop[ndi.binary_fill_holes(msk)] = i
    if min_size > 0:
        remove_small(labels, min_size)
    return labels


def _objects_with_holes(labels: np.ndarray, slices: list) -> np.ndarray:
    """Labels (ascending) whose mask encloses a 4-connected region inside its bounding box.

    All objects are packed into one atlas (each bounding box alone, with a zero margin) and filled with
    one ``binary_fill_holes``. A hole pixel belongs to the object pixel first met to its left (a hole's
    4-neighbours are hole or enclosing-object pixels).
    """
    present = np.array([i for i, s in enumerate(slices) if s is not None], dtype=np.int64)
    if present.size == 0:
        return present
    at = atlas(labels, slices, present)
    width = at.width
    packed = np.zeros((at.height, width), dtype=np.int32)
    packed.reshape(-1)[at.apos] = at.lab
    del at
    fg = packed > 0
    hy, hx = np.nonzero(ndi.binary_fill_holes(fg) & ~fg)
    if hy.size == 0:
        return hy
    rows, r = np.unique(hy, return_inverse=True)
    last = np.where(fg[rows], np.arange(width), 0)
    np.maximum.accumulate(last, axis=1, out=last)
    return np.unique(packed[hy, last[r, hx]])
