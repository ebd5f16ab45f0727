"""Segment a stack ``(Z, C, Y, X)``: plane by plane, planes stitched into 3-D objects, or in 3-D.

Three modes, as cellpose 4.2.1.1's ``CellposeModel.eval`` on a stack:

* ``"planes"`` (cellpose: neither ``do_3D`` nor ``stitch_threshold``): each plane is normalized and
  segmented on its own, as a 2-D image. Cellpose numbers each plane's masks from 1; here the ids of
  plane ``z`` follow those of the planes before it, so one id is one 2-D object and no two planes share
  an id by accident (ROI names ``0042-z03`` then never suggest a link that is not there). Time series
  (T planes) use this mode, linked afterwards by :mod:`cpsnake.stacks.track` when asked.
* ``"stitch"`` (cellpose ``stitch_threshold > 0``): the whole stack is normalized at once (each
  channel's percentiles over all planes, cellpose's ``norm3D``), each plane's flows are reconstructed
  in 2-D with no minimum size, the planes are linked by IoU (:func:`cpsnake.stacks.stitch.stitch_planes`),
  then 3-D holes are filled and objects under ``min_size`` *voxels* dropped
  (:func:`cpsnake.engine.reconstruct3d.fill_holes_and_remove_small_masks_3d`): cellpose 4.2.1.1 does the same
  (its per-plane ``min_size`` is -1 when stitching; older cellpose versions dropped small objects per
  plane). One difference, on purpose: each plane's ids are first shifted above the previous planes'
  (:func:`cpsnake.stacks.planes.offset_planes`), which avoids cellpose's id reuse after an empty plane (plane 0
  with objects,
  plane 1 empty, plane 2's objects given plane 0's ids: see :mod:`cpsnake.stacks.stitch`); otherwise the labels
  are cellpose's.
* ``"3d"`` (cellpose ``do_3D``): whole-stack normalization, the network on the YX, ZX and ZY planes
  (:func:`cpsnake.engine.infer3d.predict_3d`, with ``anisotropy`` and ``flow3d_smooth``), and 3-D flow following
  (:func:`cpsnake.engine.reconstruct3d.compute_masks_3d`, ``niter = int(200 / scale)`` as cellpose). Cellpose
  never runs its flow-error check in 3-D; ``flow3d_threshold > 0`` turns on the 3-D check here (off by
  default).

``diameter="auto"`` (a U-Net with a size model) is estimated on the middle plane of the normalized stack.

The options that choose a mode on the command line are :mod:`cpsnake.steps.stack_options`. Imported inside the
functions that need them: :mod:`cpsnake.engine.reconstruct3d` and :mod:`cpsnake.stacks.stitch` (numba,
scipy.ndimage: about a second, which a plane-by-plane stack never needs), and :mod:`cpsnake.stacks.track`.
"""

from __future__ import annotations

import time

import numpy as np

from cpsnake.engine.infer import predict_many, tiling
from cpsnake.engine.infer3d import predict_3d, smooth_flows_3d
from cpsnake.engine.normalize import normalize, select_channels
from cpsnake.engine.reconstruct import compute_masks
from cpsnake.engine.size import auto_diameter
from cpsnake.errors import CpsnakeError
from cpsnake.stacks.planes import offset_planes

__all__ = ["MODES", "segment_stack", "normalize_stack", "stack_flows", "reconstruct_planes"]

MODES = ("planes", "stitch", "3d")


def normalize_stack(
    stack: np.ndarray,
    *,
    per_plane: bool,
    channels=None,
    percentiles=(1.0, 99.0),
    low_high=None,
    invert: bool = False,
    tile_size: int = 0,
) -> tuple[np.ndarray, dict]:
    """Normalize a ``(Z, C, Y, X)`` stack plane by plane or as a whole; returns float32 ``(Z, C', Y, X)`` and the
    record.

    Per plane, the record holds ``"planes"``: one :func:`cpsnake.engine.normalize.normalize` record per plane; a blank
    or flat plane becomes 0 (its record says why), and only a stack with no spread in any plane is an error.
    As a whole, it is the record of one normalization of all planes (``"scope": "stack"``).
    """
    x = select_channels(stack, channels)
    opts = dict(percentiles=percentiles, low_high=low_high, invert=invert, tile_size=tile_size)
    if per_plane:  # a blank or flat plane becomes 0, as in cellpose; only a stack without any spread is an error
        out = np.empty(x.shape, np.float32)
        records = []
        for z in range(x.shape[0]):
            out[z], rec = normalize(x[z], allow_flat=True, **opts)
            records.append(rec)
        if not any(e["status"] == "scaled" for rec in records for e in rec["per_channel"]):
            normalize(x.transpose(1, 0, 2, 3), **opts)  # raises the whole stack's one-line reason
            raise CpsnakeError(
                f"found no plane with a spread of intensities between percentiles {percentiles[0]:g} and "
                f"{percentiles[1]:g}; expected low < high in some plane; use wider --percentiles"
            )
        return out, {"scope": "plane", "planes": records}
    out, rec = normalize(x.transpose(1, 0, 2, 3), **opts)
    rec["scope"] = "stack"
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3)), rec


def segment_stack(
    net,
    stack: np.ndarray,
    *,
    mode: str = "planes",
    stitch_threshold: float = 0.25,
    anisotropy: float | None = None,
    flow3d_smooth=0.0,
    flow3d_threshold: float = 0.0,
    channels=None,
    percentiles=(1.0, 99.0),
    low_high=None,
    invert: bool = False,
    tile_size: int = 0,
    diameter=None,
    augment: bool = False,
    tile_overlap: float = 0.1,
    batch_size: int = 8,
    device=None,
    dtype=None,
    cellprob_threshold: float = 0.0,
    flow_threshold: float = 0.4,
    niter: int | None = None,
    min_size: int = 15,
    max_size_fraction: float = 0.4,
    reconstruct_device=None,
    max_pixels: int | None = None,
    size_params: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Segment one stack (see the module docstring for the modes).

    Parameters
    ----------
    stack : (Z, C, Y, X) ndarray
        The raw stack, any numeric dtype, Z >= 2 for ``"stitch"`` and ``"3d"``.
    mode : ``"planes"``, ``"stitch"`` or ``"3d"``
    stitch_threshold : float
        ``"stitch"``: smallest IoU that links two planes' objects, in (0, 1].
    anisotropy, flow3d_smooth, flow3d_threshold
        ``"3d"`` only: Z step / pixel size; Gaussian sigma (one, or Z Y X) for the 3-D flows; largest mean
        squared flow error of a kept 3-D object (0: no check, as cellpose).
    Other parameters : as :func:`cpsnake.run.segment.segment_image`; ``min_size`` counts voxels of 3-D objects in
        ``"stitch"`` and ``"3d"``, pixels of each plane's objects in ``"planes"``.

    Returns
    -------
    labels : (Z, Y, X) int32 ndarray (ids unique over the stack)
    flows : (Z, 3, Y, X) float32 (dY, dX, cellprob per plane) or, in ``"3d"``, (4, Z, Y, X) (dZ, dY, dX, cellprob)
    normalization : dict, the values used (``diameter_estimated`` with ``diameter="auto"``)
    seconds : dict, wall time of each step
    """
    from cpsnake.engine.reconstruct3d import compute_masks_3d

    if mode not in MODES:
        raise CpsnakeError(f"stack mode {mode!r}; expected one of {', '.join(MODES)}")
    stack = np.asarray(stack)
    if stack.ndim != 4:
        raise CpsnakeError(f"found an array of shape {stack.shape}; expected a stack (Z, C, Y, X)")
    if mode != "planes" and stack.shape[0] < 2:
        flag = "--do-3d" if mode == "3d" else "--stitch-threshold"
        raise CpsnakeError(
            f"found a stack of {stack.shape[0]} plane(s); expected at least 2 planes for {flag}; "
            f"segment a single plane in 2-D (leave out {flag})"
        )
    t0 = time.perf_counter()
    data, record = normalize_stack(
        stack,
        per_plane=mode == "planes",
        channels=channels,
        percentiles=percentiles,
        low_high=low_high,
        invert=invert,
        tile_size=tile_size,
    )
    if diameter == "auto":
        diameter = auto_diameter(
            net,
            data[data.shape[0] // 2],
            None,
            None,
            dict(batch_size=batch_size, tile_overlap=tile_overlap, augment=augment, device=device, dtype=dtype),
            source=f"middle plane ({data.shape[0] // 2 + 1})",
            params=size_params,
        )
        record["diameter_estimated"] = diameter
    scale = tiling(net).scale(diameter) or 1.0
    niter = niter or int(200 / scale)
    t1 = time.perf_counter()
    opts = dict(batch_size=batch_size, tile_overlap=tile_overlap, augment=augment, device=device, dtype=dtype)
    flows = stack_flows(
        net,
        data,
        do_3d=mode == "3d",
        diameter=diameter,
        anisotropy=anisotropy,
        flow3d_smooth=flow3d_smooth,
        max_pixels=max_pixels,
        **opts,
    )
    del data
    t2 = time.perf_counter()
    if mode == "3d":
        labels = compute_masks_3d(
            flows,
            niter=niter,
            cellprob_threshold=cellprob_threshold,
            flow_threshold=flow3d_threshold,
            min_size=min_size,
            max_size_fraction=max_size_fraction,
        )
    else:
        labels = reconstruct_planes(
            flows,
            stitch_threshold=stitch_threshold if mode == "stitch" else 0.0,
            cellprob_threshold=cellprob_threshold,
            flow_threshold=flow_threshold,
            niter=niter,
            min_size=min_size,
            max_size_fraction=max_size_fraction,
            device=reconstruct_device,
        )
    t3 = time.perf_counter()
    return labels, flows, record, {"normalize": t1 - t0, "infer": t2 - t1, "reconstruct": t3 - t2}


def stack_flows(
    net,
    data: np.ndarray,
    *,
    do_3d: bool,
    diameter=None,
    anisotropy=None,
    flow3d_smooth=0.0,
    max_pixels: int | None = None,
    **opts,
) -> np.ndarray:
    """Flows of a normalized stack ``(S, C, Y, X)``: 3-D flows ``(4, Z, Y, X)`` with ``do_3d``
    (:func:`cpsnake.engine.infer3d.predict_3d`, then ``flow3d_smooth``), else each plane's ``(S, 3, Y, X)``, the planes'
    tiles pooled (:func:`cpsnake.engine.infer.predict_many`). ``opts``: batch_size, tile_overlap, augment, device,
    dtype."""
    if do_3d:
        flows = predict_3d(net, data, diameter=diameter, anisotropy=anisotropy, max_pixels=max_pixels, **opts)
        return smooth_flows_3d(flows, flow3d_smooth)
    S = data.shape[0]
    flows = np.empty((S, 3, *data.shape[2:]), np.float32)
    for z, out in enumerate(
        predict_many(net, (data[z] for z in range(S)), diameters=diameter, max_pixels=max_pixels, **opts)
    ):
        flows[z] = out
    return flows


def reconstruct_planes(
    flows: np.ndarray,
    *,
    stitch_threshold: float = 0.0,
    track: bool = False,
    track_threshold: float = 0.25,
    min_size: int = 15,
    **opts,
) -> np.ndarray:
    """Labels ``(S, Y, X)`` from per-plane flows ``(S, 3, Y, X)``: each plane by
    :func:`cpsnake.engine.reconstruct.compute_masks` (``opts``: its keywords), then stitched into 3-D objects
    (``stitch_threshold > 0``: per-plane ``min_size`` off, 3-D holes filled and ``min_size`` counted in voxels,
    as cellpose 4.2.1.1), linked frame to frame (``track``, :func:`cpsnake.stacks.track.track_frames`), or numbered
    plane after plane (:func:`cpsnake.stacks.planes.offset_planes`)."""
    per_plane = -1 if stitch_threshold > 0 else min_size
    planes = np.stack([compute_masks(f, min_size=per_plane, **opts) for f in flows])
    if stitch_threshold > 0:
        from cpsnake.engine.reconstruct3d import fill_holes_and_remove_small_masks_3d
        from cpsnake.stacks.stitch import stitch_planes

        return fill_holes_and_remove_small_masks_3d(
            stitch_planes(offset_planes(planes), stitch_threshold), min_size=min_size
        )
    if track:
        from cpsnake.stacks.track import track_frames

        return track_frames(planes, track_threshold)
    return offset_planes(planes)
