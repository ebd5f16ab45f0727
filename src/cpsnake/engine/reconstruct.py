"""Flows (dY, dX, cellprob) -> label image: Cellpose's mask reconstruction. Arrays in, arrays out.

The Cellpose mask reconstruction (as in cellpose 4.2.1.1, ``dynamics.resize_and_compute_masks``), options
named as ``cpsnake reconstruct`` spells them (the command, with its files and stacks, is
:mod:`cpsnake.steps.reconstruct`):

1. pixels with cellprob logit > ``--cellprob-threshold`` (default 0.0) follow the flow field
   (``flows / 5``, zeroed elsewhere) for ``--niter`` steps (default 200; ``int(200 / (30 / D))`` when a
   cell diameter ``--diameter D`` was given to the network) with bilinear interpolation;
2. a histogram of the end points seeds the masks (local maxima with > 10 end points), each grown
   through bins with > 2 end points; masks larger than ``--max-size-fraction`` (0.4) of the image are
   dropped;
3. flow-error quality control: flows are recomputed from each mask (heat diffusion) and compared with
   the predicted flows; masks with mean squared error > ``--flow-threshold`` (0.4) are dropped
   (``--flow-threshold 0`` turns this off);
4. masks under ``--min-size`` pixels (15) are dropped, holes filled, small masks dropped again;
5. labels are renumbered 1..N (order of first appearance, row by row).

:func:`compute_masks` does all five; :func:`seed_masks` (1-2) and :func:`finish_masks` (3-5) are its halves,
which the block-wise segmentation runs apart (:mod:`cpsnake.engine.blocks`).

:mod:`cpsnake.engine.dynamics` and :mod:`cpsnake.engine.follow_block` (scipy.ndimage, numba: about a second to
import) are imported inside the functions that follow flows, so that the commands importing this module for
its names alone (``cpsnake batch normalize``) do not pay for them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compute_masks", "seed_masks", "finish_masks", "niter_for_diameter"]


def niter_for_diameter(diameter: float | None, niter: int | None = None) -> int:
    """Flow-following iterations: ``niter`` if given, else 200, scaled as Cellpose does for a diameter.

    With a diameter ``D`` the network ran at scale ``30 / D``, and Cellpose uses ``int(200 / (30 / D))``.
    """
    if niter is not None and niter > 0:
        return int(niter)
    if diameter is None or diameter <= 0:
        return 200
    return int(200 / (30.0 / diameter))


def compute_masks(
    flows: np.ndarray,
    *,
    cellprob_threshold: float = 0.0,
    flow_threshold: float = 0.4,
    niter: int = 200,
    min_size: int = 15,
    max_size_fraction: float = 0.4,
    device=None,
    interp: bool = True,
) -> np.ndarray:
    """Label image from flows.

    Parameters
    ----------
    flows : (3, Y, X) float ndarray
        dY, dX (network scale, ~5 at unit speed) and cellprob logits.
    cellprob_threshold : float
        Pixels with cellprob above it follow the flows.
    flow_threshold : float
        Maximum flow error of a kept mask; ``<= 0`` (or None) skips the check.
    niter : int
        Flow-following iterations.
    min_size : int
        Smallest kept mask in pixels (``<= 0`` keeps all); holes are filled in any case.
    max_size_fraction : float
        Masks larger than this fraction of the image are removed.
    device : torch device, optional
        Run flow following, seeding and the flow-error check through torch on this device (a GPU; as
        cellpose 4 does on a GPU, but keeping float64 heat diffusion so that the labels equal the CPU
        path's, which tests check by forcing this path on the CPU device). None: the CPU path. Hole
        filling and the size filter run on the CPU either way.
    interp : bool
        Follow the flows with bilinear interpolation (True, cellpose's default) or without (False, what
        cellpose 3's size estimation uses; CPU only).

    Returns
    -------
    (Y, X) int32 labels, 0 = background, 1..N renumbered; all zero when no pixel is above threshold
    (or the image is thinner than 2 pixels).
    """
    labels = seed_masks(
        flows,
        cellprob_threshold=cellprob_threshold,
        niter=niter,
        max_size_fraction=max_size_fraction,
        device=device,
        interp=interp,
    )
    return finish_masks(labels, flows, flow_threshold=flow_threshold, min_size=min_size, device=device)


def seed_masks(
    flows: np.ndarray,
    *,
    cellprob_threshold: float = 0.0,
    niter: int = 200,
    max_size_fraction: float = 0.4,
    device=None,
    interp: bool = True,
    origin: tuple[int, int] | None = None,
    full_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """The first half of :func:`compute_masks`: flow following, seeds, masks grown, masks over
    ``max_size_fraction`` dropped, renumbered; before the flow-error check, hole filling and the size filter.
    ``flows (3, Y, X)``; returns (Y, X) int32 labels (parameters as :func:`compute_masks`).

    ``origin`` and ``full_shape``: the flows are a crop at ``origin`` (y, x) of an image of ``full_shape``;
    the pixels are followed with the whole image's arithmetic (:mod:`cpsnake.engine.follow_block`), so that a
    trajectory that stays in the crop ends where it ends in the whole image (:mod:`cpsnake.engine.blocks`)."""
    from cpsnake.engine import dynamics

    if origin is not None:
        return _seed_masks_crop(flows, cellprob_threshold, niter, max_size_fraction, origin, full_shape)

    flows = np.asarray(flows)
    if flows.ndim != 3 or flows.shape[0] != 3:
        raise ValueError(f"flows of shape {flows.shape}, expected (3, Y, X) = dY, dX, cellprob")
    dP = flows[:2].astype(np.float32, copy=False)
    cellprob = flows[2]
    shape = cellprob.shape
    cell = cellprob > cellprob_threshold
    inds = np.nonzero(cell)
    if len(inds[0]) == 0 or min(shape) < 2:  # nothing to follow (or no room to move: Cellpose gives NaN)
        return np.zeros(shape, dtype=np.int32)
    # step field: flows / 5 inside cells, zero elsewhere (float32, as the network gives it)
    step = dP * cell
    step /= np.float32(5.0)
    del cell
    p = dynamics.follow_flows(step, inds, niter=int(niter), device=None if not interp else device, interp=interp)
    del step
    return dynamics.get_masks(p, inds, shape, max_size_fraction=max_size_fraction, device=device)


def _seed_masks_crop(flows, cellprob_threshold, niter, max_size_fraction, origin, full_shape) -> np.ndarray:
    """:func:`seed_masks` of a crop, followed with the whole image's arithmetic (compiled, CPU threads)."""
    from cpsnake.engine import dynamics
    from cpsnake.engine.follow_block import follow_points, step_field

    dP = np.asarray(flows[:2], dtype=np.float32)
    cell = np.asarray(flows[2]) > cellprob_threshold
    shape = cell.shape
    ys, xs = np.nonzero(cell)
    if ys.size == 0 or min(full_shape) < 2:
        return np.zeros(shape, dtype=np.int32)
    field = step_field(dP, cell, full_shape)
    del cell
    ys, xs = ys.astype(np.int64), xs.astype(np.int64)
    n = ys.size
    p = np.full((2, n), np.nan, np.float32)
    oy, ox = (int(v) for v in origin)

    def run(a: int) -> None:
        follow_points(
            field, ys, xs, p, a, min(a + (1 << 16), n), int(niter), int(full_shape[0]), int(full_shape[1]), oy, ox
        )

    dynamics.run_blocks(run, n, 1 << 16, uses_torch=False)
    field = None  # freed (the closure above read it)
    q = p.astype(np.int64)  # truncated in the whole image's coordinates, then shifted into the crop
    q[0] -= oy
    q[1] -= ox
    return dynamics.get_masks(q, (ys, xs), shape, max_size_fraction=max_size_fraction)


def finish_masks(
    labels: np.ndarray,
    flows: np.ndarray,
    *,
    flow_threshold: float = 0.4,
    min_size: int = 15,
    device=None,
    heat_niter: int | None = None,
) -> np.ndarray:
    """The second half of :func:`compute_masks` on :func:`seed_masks`' labels (modified): masks whose flow
    error exceeds ``flow_threshold`` dropped (their own flows diffused ``heat_niter`` steps; None: cellpose's
    rule from these labels), then holes filled and masks under ``min_size`` dropped, renumbered.
    ``flows (3, Y, X)`` (or (2, Y, X): dY, dX); returns (Y, X) int32 labels."""
    from cpsnake.engine import dynamics

    if labels.size == 0 or labels.max() == 0:
        return labels
    if flow_threshold is not None and flow_threshold > 0:
        dP = np.asarray(flows)[:2].astype(np.float32, copy=False)
        labels = dynamics.remove_bad_flow_masks(labels, dP, threshold=flow_threshold, device=device, niter=heat_niter)
    return dynamics.fill_holes_and_remove_small_masks(labels, min_size=int(min_size))
