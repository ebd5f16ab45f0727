"""3-D mask reconstruction: flows (dZ, dY, dX, cellprob) of a stack -> 3-D label stack.

The Cellpose reconstruction in 3-D (``dynamics.resize_and_compute_masks(..., do_3D=True)`` in cellpose
4.2.1.1), which :func:`compute_masks_3d` reproduces label for label:

1. voxels with cellprob logit > ``cellprob_threshold`` (default 0.0) follow the step field
   ``flows / 5`` (zeroed elsewhere) for ``niter`` steps (default 200) with *trilinear* interpolation:
   torch ``grid_sample`` on the 5-D field, ``align_corners=False``, zero padding, positions in the
   normalised [-1, 1] coordinates of cellpose (each axis scaled by ``2 / (L - 1)``) and clamped to
   [-1, 1] after every step. The end points are truncated to integer voxels;
2. a 3-D histogram of the end points seeds the masks: seeds are bins with more than 10 end points that
   are the maximum of their 5x5x5 neighbourhood, taken in ascending order of count (equal counts in the
   order of cellpose's unstable ``torch.argsort``: :mod:`cpsnake.engine.tieorder`); each seed grows 5
   steps (26-connected) through bins with more than 2 end points inside its 11x11x11 window (a later
   seed wins a bin two seeds reach); every followed voxel takes the label of its end point's bin;
3. masks with more than ``max_size_fraction`` (0.4) of the stack's voxels are dropped; renumbered;
4. holes are filled and small objects dropped as ``cellpose.utils.fill_holes_and_remove_small_masks``
   does it in 3-D: objects under ``min_size`` *voxels* (15, counted over the whole 3-D object, not per
   plane) are dropped, then each object's 3-D voids (background inside its bounding box not
   6-connected to the box's faces) are filled in label order (an object inside another's void is
   absorbed by it), then small objects are dropped again. Cellpose fills with ``fill_voids.fill``
   (2.1.2), which also fills some background voxels *on* the box's faces (a run of background that
   wraps from the end of one scan row of a face to the start of the next seeds only its first part:
   :func:`_face_seeds`); by default these voxels are filled here too, for cellpose's labels;
   ``exact_voids=True`` fills only true voids;
5. labels are renumbered 1..N in order of first appearance (raster order, Z slowest).

Flow-error check: cellpose skips it in 3-D (its ``flow_error`` is 2-D only), whatever its
``flow_threshold``. Here it is available and off by default (``flow_threshold=None`` or ``<= 0``): with a
positive threshold the flows of the masks found at step 3 are recomputed by 3-D heat diffusion
(:func:`cpsnake.engine.heat3d.masks_to_flows_3d`, cellpose's 3-D rule) and an object whose mean squared error
``mean over its voxels of |mu - flows / 5|^2`` (the three components summed, as the 2-D check sums two)
exceeds the threshold is dropped before step 4. Its errors are :func:`flow_errors_3d`.

How it differs from cellpose in the work, not the labels: only the followed voxels are kept (flat
indices, no (3, N) index arrays); the compiled follower (:mod:`cpsnake.engine.follow3d`, numba) walks each point
through all its steps before the
next, with torch's ``grid_sample`` arithmetic reproduced to the bit, on a step field whose three channels
are interleaved; points are
followed in blocks (65,536 points), blocks in parallel threads (cellpose's one ``grid_sample`` batch runs on
one core); the histogram is one int32 stack padded by 5 voxels (not 20), local maxima are looked for only
at bins with more than 10 end points, and the same stack is reused for the seed labels; holes are found by
labelling each object's background.

Axis order: flows ``(4, Z, Y, X)`` = dZ, dY, dX, cellprob; labels ``(Z, Y, X)``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cpsnake.engine.dynamics import remove_labels, remove_small, renumber, run_blocks
from cpsnake.engine.tieorder import argsort_like_torch
from cpsnake.errors import CpsnakeError

__all__ = [
    "compute_masks_3d",
    "follow_flows_3d",
    "get_masks_3d",
    "flow_errors_3d",
    "fill_holes_and_remove_small_masks_3d",
]

_PAD = 5  # histogram border: room for the 11x11x11 seed windows
_SEED_CHUNK = 4096  # seeds grown together


def compute_masks_3d(
    flows: np.ndarray,
    *,
    niter: int = 200,
    cellprob_threshold: float = 0.0,
    flow_threshold: float | None = None,
    min_size: int = 15,
    max_size_fraction: float = 0.4,
    exact_voids: bool = False,
    block: int = 1 << 16,
) -> np.ndarray:
    """Label stack from 3-D flows (see the module docstring for the steps).

    Parameters
    ----------
    flows : (4, Z, Y, X) float ndarray, Z, Y, X >= 2
        dZ, dY, dX (network scale, ~5 at unit speed) and cellprob logits; finite.
    niter : int
        Flow-following iterations (cellpose: 200, or ``int(200 / rescale)`` for a resized network input).
    cellprob_threshold : float
        Voxels with cellprob above it follow the flows.
    flow_threshold : float or None
        Largest mean squared flow error of a kept object; None or ``<= 0`` (default) skips the check,
        as cellpose always does in 3-D.
    min_size : int
        Smallest kept object in voxels (``<= 0`` keeps all); voids are filled in any case.
    max_size_fraction : float
        Objects with more than this fraction of ``Z * Y * X`` voxels are dropped.
    exact_voids : bool
        Fill only true voids (True), or also the box-face voxels that cellpose's ``fill_voids`` fills
        (False, default: cellpose's labels); see :func:`fill_holes_and_remove_small_masks_3d`.
    block : int
        Points followed together (blocks run in parallel threads).

    Returns
    -------
    (Z, Y, X) int32 labels, 0 = background, 1..N; all zero when no voxel is above the threshold or no
    histogram bin holds more than 10 end points.

    Raises
    ------
    CpsnakeError
        Flows not of shape (4, Z, Y, X) with Z, Y, X >= 2, not real, or with NaN or infinite values.
    """
    flows = _check_flows(flows)
    shape = flows.shape[1:]
    cell = flows[3] > cellprob_threshold
    idx = np.flatnonzero(cell)
    if idx.size == 0:
        return np.zeros(shape, dtype=np.int32)
    p = follow_flows_3d(flows[:3], cell, idx, niter=int(niter), block=block)
    del cell
    labels = get_masks_3d(p, idx, shape, max_size_fraction=max_size_fraction)
    del p, idx
    if labels.max() > 0 and flow_threshold is not None and flow_threshold > 0:
        err = flow_errors_3d(labels, flows[:3])
        remove_labels(labels, 1 + np.flatnonzero(err > flow_threshold))
        renumber(labels)
    return fill_holes_and_remove_small_masks_3d(labels, min_size=int(min_size), exact_voids=exact_voids)


def _check_flows(flows) -> np.ndarray:
    """``flows`` as a real (4, Z, Y, X) float32 ndarray with Z, Y, X >= 2 and finite values, else a CpsnakeError."""
    flows = np.asarray(flows)
    if flows.ndim != 4 or flows.shape[0] != 4:
        raise CpsnakeError(
            f"compute_masks_3d: found flows of shape {flows.shape}, expected (4, Z, Y, X) = dZ, dY, dX, cellprob; "
            "pass 3-D flows (for a 2-D image (3, Y, X) use cpsnake.engine.reconstruct.compute_masks)"
        )
    if min(flows.shape[1:]) < 2:
        raise CpsnakeError(
            f"compute_masks_3d: found flows of shape {flows.shape}, expected at least 2 planes, rows and columns "
            "(4, Z>=2, Y>=2, X>=2); segment a single plane in 2-D"
        )
    if flows.dtype.kind not in "fiu":
        raise CpsnakeError(f"compute_masks_3d: found flows of dtype {flows.dtype}, expected real numbers (float32)")
    flows = flows.astype(np.float32, copy=False)
    for c, name in enumerate(("dZ", "dY", "dX", "cellprob")):
        if not np.isfinite(flows[c]).all():
            raise CpsnakeError(
                f"compute_masks_3d: found NaN or infinite values in {name} (flows channel {c}), expected finite "
                "flows; check the network output"
            )
    return flows


def follow_flows_3d(
    dP: np.ndarray, cell: np.ndarray, idx: np.ndarray, *, niter: int = 200, block: int = 1 << 16
) -> np.ndarray:
    """Euler-integrate voxels along ``dP / 5`` (zeroed outside ``cell``) with trilinear interpolation.

    Parameters
    ----------
    dP : (3, Z, Y, X) float ndarray
        Network flows dZ, dY, dX (the step is ``dP / 5`` where ``cell``, 0 elsewhere); float32 is used as
        it is, anything else is converted.
    cell : (Z, Y, X) bool ndarray
        Voxels whose flows count (cellprob above threshold).
    idx : (N,) int ndarray
        Flat (raster) indices of the start voxels.
    niter : int
    block : int
        Points per block; blocks run in parallel threads.

    Returns
    -------
    (3, N) float32 ndarray: final (z, y, x), within [0, L - 1] per axis. The arithmetic is cellpose's
    ``steps_interp`` in 3-D operation for operation (torch ``grid_sample``, 5-D, trilinear, zero padding,
    ``align_corners=False``, clamp to [-1, 1] after each step), done per point by the compiled
    :func:`cpsnake.engine.follow3d.follow_points`, so the end points are cellpose's to the bit.
    """
    from cpsnake.engine.follow3d import follow_points, step_field

    shape = dP.shape[1:]
    n = idx.size
    out = np.full((3, n), np.nan, dtype=np.float32)  # a point never followed stays NaN, never stale memory
    if n == 0:
        return out
    field = step_field(np.asarray(dP, dtype=np.float32), np.asarray(cell, dtype=bool))
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    ext = np.array([L - 1 for L in shape[::-1]], np.float32)  # (x, y, z)

    def run(a: int) -> None:
        follow_points(field, idx, out, a, min(a + block, n), int(niter), ext)

    run_blocks(run, n, block, uses_torch=False)
    return out


def get_masks_3d(
    p: np.ndarray, idx: np.ndarray, shape: tuple[int, int, int], *, max_size_fraction: float = 0.4
) -> np.ndarray:
    """Masks from end points: 3-D histogram seeds grown in 11x11x11 windows, big masks dropped, renumbered.

    Parameters
    ----------
    p : (3, N) float ndarray
        End points (z, y, x) of the voxels ``idx``, within the stack; truncated to integer bins.
    idx : (N,) int ndarray
        Flat (raster) indices of the followed voxels.
    shape : (Z, Y, X)
    max_size_fraction : float
        Masks with more than this fraction of ``Z * Y * X`` voxels are dropped.

    Returns
    -------
    (Z, Y, X) int32 labels 1..K in order of first appearance.
    """
    from cpsnake.engine.follow3d import histogram

    H = tuple(int(L) + 2 * _PAD for L in shape)
    fp = p[0].astype(np.int64)  # truncation (end points are >= 0), as cellpose's .int()
    for a in (1, 2):
        fp += _PAD
        fp *= H[a]
        fp += p[a].astype(np.int64)
    fp += _PAD
    labels = np.zeros(shape, dtype=np.int32)
    h = histogram(fp, int(np.prod(H)))
    cand = np.flatnonzero(h > 10)
    if cand.size == 0:
        return labels
    # local maxima over 5x5x5 (candidates lie >= 5 bins inside the padded histogram)
    hc = h[cand]
    is_max = np.ones(cand.size, dtype=bool)
    for off in _offsets(2, H):
        if off:
            is_max &= hc >= h[cand + off]
    seeds = cand[is_max]
    # ascending end-point count, equal counts in the order of cellpose's torch.argsort (a later seed wins a bin
    # two seeds reach, so the order of equal counts is part of the labels), reproduced without importing torch
    ranked = seeds[argsort_like_torch(h[seeds])]
    pos, lab = _grow(ranked, h, H)
    h[:] = 0  # the histogram's memory now holds the seed label of each bin (the later seed wins)
    np.maximum.at(h, pos, lab)
    del pos, lab
    labels.reshape(-1)[idx] = h[fp]
    del h, fp
    counts = np.bincount(labels.reshape(-1))
    bigl = np.flatnonzero(counts > labels.size * max_size_fraction)
    remove_labels(labels, bigl[bigl > 0])
    return renumber(labels)


def _grow(ranked: np.ndarray, h: np.ndarray, H: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grow each seed (flat bins, in rank order) 5 steps, 26-connected, through bins with more than 2 end points
    inside its 11x11x11 window; returns the bins reached and the 1-based rank of the seed reaching them."""
    off = _offsets(5, H)
    pos, lab = [], []
    for s0 in range(0, ranked.size, _SEED_CHUNK):  # seeds in chunks: windows use bounded memory
        chunk = ranked[s0 : s0 + _SEED_CHUNK]
        win = chunk[:, None] + off[None, :]  # (n, 1331) flat bins of each seed's window
        big = (h[win] > 2).reshape(chunk.size, 11, 11, 11)
        grow = np.zeros(big.shape, dtype=bool)
        grow[:, 5, 5, 5] = True
        for _ in range(5):  # 26-connected dilation inside the window (outside it counts as empty)
            grow = ndi.binary_dilation(grow, structure=np.ones((1, 3, 3, 3), bool)) & big
        k, w = np.nonzero(grow.reshape(chunk.size, -1))
        pos.append(win[k, w])
        lab.append((k + s0 + 1).astype(np.int32))
        del win, big, grow, k, w
    return np.concatenate(pos), np.concatenate(lab)


def _offsets(r: int, H: tuple[int, int, int]) -> np.ndarray:
    """Flat offsets of the (2r+1)^3 cube in a C-ordered array of shape ``H``, raster order (z slowest)."""
    d = np.arange(-r, r + 1)
    return ((d[:, None, None] * H[1] + d[None, :, None]) * H[2] + d[None, None, :]).reshape(-1)


def flow_errors_3d(labels: np.ndarray, dP: np.ndarray) -> np.ndarray:
    """Mean squared error per object between its own 3-D flows and the network's flows ``dP / 5``.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray, labels 1..K consecutive.
    dP : (3, Z, Y, X) float32 ndarray: dZ, dY, dX at the network's scale (x5).

    Returns
    -------
    (K,) float64 ndarray, entry ``k`` for label ``k + 1``: the mean over the object's voxels of
    ``(mu_z - dZ/5)^2 + (mu_y - dY/5)^2 + (mu_x - dX/5)^2``, ``mu`` = :func:`cpsnake.engine.heat3d.masks_to_flows_3d`
    of ``labels`` (``dP / 5`` in float32, the difference in float64, as the 2-D check). 0 for a mask's own
    flows (up to float32 rounding); 4 for flows reversed everywhere.
    """
    from cpsnake.engine.heat3d import flows_at_3d

    K = int(labels.max())
    if K == 0:
        return np.zeros(0)
    nz, lab, mu = flows_at_3d(labels)
    err = np.zeros(nz.size)
    for c in range(3):
        d = mu[c] - (dP[c].reshape(-1)[nz] / np.float32(5.0)).astype(np.float64)
        err += d * d
    counts = np.bincount(lab, minlength=K + 1)[1:]
    sums = np.bincount(lab, weights=err, minlength=K + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def fill_holes_and_remove_small_masks_3d(
    labels: np.ndarray, *, min_size: int = 15, exact_voids: bool = False
) -> np.ndarray:
    """Drop objects under ``min_size`` voxels, fill each object's 3-D voids, drop again; renumber.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray, modified in place and returned.
    min_size : int
        Objects with fewer voxels (the whole 3-D object) are removed before and after filling; ``<= 0``
        keeps all (and then, as in cellpose, labels are not renumbered).
    exact_voids : bool
        False (default, cellpose's labels): the voids that ``fill_voids.fill`` 2.1.2 (what cellpose
        calls) finds, see :func:`_face_seeds`; True: exactly the background inside the object's bounding
        box that is not 6-connected to the box's faces.

    Objects are filled in label order on the current labels, so an object lying in another's void is
    absorbed by it, as in cellpose.
    """
    if min_size > 0:
        remove_small(labels, min_size)
    slices = ndi.find_objects(labels)
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        crop = labels[sl]
        bg = crop != i
        comp, nb = ndi.label(bg)  # 6-connected background components of the box
        if nb == 0:
            continue
        open_ = np.zeros(nb + 1, dtype=bool)
        for a in range(3):
            for side in (0, -1):
                face = np.take(comp, side, axis=a)
                if exact_voids:
                    open_[face] = True
                else:
                    open_[face[_face_seeds(np.take(bg, side, axis=a))]] = True
        if open_[1:].all():
            continue
        open_[0] = True
        crop[~open_[comp]] = i
    if min_size > 0:
        remove_small(labels, min_size)
    return labels


def _face_seeds(face: np.ndarray) -> np.ndarray:
    """Background voxels of one box face from which ``fill_voids.fill`` (2.1.2) starts its flood fill.

    ``face (A, B)`` bool, background = True, the face of a C-ordered ``(Z, Y, X)`` box with its remaining
    axes in order. fill_voids works on a Fortran-ordered copy and scans each face with the first
    remaining axis fastest (``face.T`` raveled), pushing a seed at the start of every run of background
    voxels -- but it does not end a run at the end of a scan row, so a background voxel that starts a row
    right after a row ending in background is no seed. Voxels that no seed's 6-connected component
    reaches are filled as voids, so a background voxel on the box's face (which no void can hold) is
    sometimes filled into the object; cellpose's 3-D labels carry that, and so do ours by default.
    Returns the seeds, a bool array shaped like ``face``.
    """
    seq = face.T.ravel()
    seed = seq.copy()
    seed[1:] &= ~seq[:-1]
    return seed.reshape(face.T.shape).T
