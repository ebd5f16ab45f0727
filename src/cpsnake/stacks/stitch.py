"""Stitch mode for stacks: per-plane 2-D label images -> 3-D objects, by intersection over union (IoU).

A stack ``(Z, Y, X)`` segmented plane by plane has labels that mean nothing from one plane to the next.
:func:`stitch_planes` walks down the stack and gives each object of plane ``z + 1`` the id of the object
of plane ``z`` it continues, or a new id. This is Cellpose's ``stitch_threshold`` mode (``cellpose.utils.stitch3D`` in
cellpose 4.2.1.1), and the labels are equal to it bit for bit. The rule, for each pair of neighbouring
planes ``z`` (already stitched ids) and ``z + 1`` (its own ids):

1. IoU of every object ``k`` of plane ``z + 1`` with every object ``j`` of plane ``z`` it touches:
   ``|k & j| / (|k| + |j| - |k & j|)``, pixel counts as integers, the division in float64 (as cellpose,
   so equal IoUs are equal to the last bit and ties fall the same way);
2. pairs with IoU below ``threshold`` are dropped;
3. each object ``j`` of plane ``z`` keeps only its best partner(s) in plane ``z + 1`` (every ``k`` whose
   IoU equals ``j``'s highest remaining IoU; several on an exact tie);
4. each object ``k`` of plane ``z + 1`` takes the id of the ``j`` with its highest remaining IoU, the
   smallest id on a tie. So an object of plane ``z`` continues into at most one object of plane ``z + 1``
   (more only on an exact tie: a split then keeps one id for both pieces), and an object of plane ``z``
   that is not some ``k``'s choice ends there even if another ``k`` overlaps it above the threshold;
5. every other ``k`` gets a new id. New ids are numbered as cellpose numbers them: with ``M`` the largest
   id given so far and ``K`` the largest id of plane ``z + 1``, the ids ``1..K`` of plane ``z + 1`` that
   found no partner -- *including ids absent from the plane* -- get ``M + 1, M + 2, ...`` in ascending
   order; then ``M`` grows by their number. An unmatched id ``k`` thus gets ``M + k - (number of matched
   ids below k)``, which is how it is computed here, without a table up to ``K``.

Empty planes (all background), as cellpose treats them: a pair where either plane is empty links
nothing. Once some pair of non-empty planes has been stitched, the plane after an empty one gets all new
ids (its own ids shifted by ``M``). Before that first stitched pair, the plane after the pair keeps its
own ids and ``M`` becomes *that plane's* largest id -- so with plane 0 = objects 1..5, plane 1 empty and
plane 2 = objects 1..3, cellpose (and this module, for parity) gives plane 2's objects the ids 1..3 of
plane 0's unrelated objects: one id then names pieces that do not touch. :func:`stitch_planes` reproduces
this; renumber each plane above the previous planes' largest id beforehand to avoid it.

Differences from ``cellpose.utils.stitch3D``, none in the label values:

* no dense ``(K + 1) x (M + 1)`` IoU matrix per plane pair (cellpose's grows with the largest id given
  so far and with sparse ids): overlaps are counted from the pixel pairs of each plane pair (a sort of
  the object ranks), so memory follows the number of pixels and objects, never the largest id (a plane
  may hold an id of 3,000,000,000);
* the input is not modified (cellpose overwrites its input array plane by plane);
* the output dtype is the input's when the sum of the planes' largest ids fits in it (no new id can then
  overflow), else uint32, else int64. Cellpose keeps the input dtype (its ids wrap around silently on
  overflow) except uint16, which it turns into uint32 when the largest id comes near 65,535;
* bad input (fewer than 2 planes, not 3-D, non-integer or negative labels, a threshold outside (0, 1])
  is refused with one :class:`~cpsnake.errors.CpsnakeError` line.

Minimum size and holes (the whole stitch mode is :func:`cpsnake.stacks.stack.segment_stack`): cellpose 4.2.1.1
reconstructs each plane with no minimum size (``min_size=-1`` when stitching), stitches, and then fills
3-D holes and drops objects under ``min_size`` *voxels* of the whole 3-D object
(``fill_holes_and_remove_small_masks`` on the stack); cpsnake does the same with
:func:`cpsnake.engine.reconstruct3d.fill_holes_and_remove_small_masks_3d`. (Cellpose 3 and older applied
``min_size`` to each plane before stitching, losing objects small in every plane but large in 3-D.)

Axis order everywhere: ``(Z, Y, X)``; 0 = background.
"""

from __future__ import annotations

import numpy as np

from cpsnake.engine.dynamics import compact
from cpsnake.errors import CpsnakeError
from cpsnake.io.label_check import check_labels

__all__ = ["stitch_planes"]

_MAX_ID = 2**63 - 1  # ids are computed in int64


def stitch_planes(masks: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Link per-plane labels into 3-D objects by IoU, as ``cellpose.utils.stitch3D(masks, threshold)``.

    Parameters
    ----------
    masks : (Z, Y, X) integer ndarray, Z >= 2
        Labels of each plane, numbered independently (0 = background, no negative values; ids need not
        be consecutive). Not modified.
    threshold : float in (0, 1]
        Smallest IoU at which an object of plane ``z + 1`` continues an object of plane ``z``
        (cellpose's ``stitch_threshold``).

    Returns
    -------
    (Z, Y, X) ndarray of labels equal to cellpose's; plane 0 keeps its ids. The dtype is the input's
    when the sum of the planes' largest ids fits in it, else uint32, else int64. The rule (matching,
    ties, numbering of new ids, empty planes) is in the module docstring.

    Raises
    ------
    CpsnakeError
        Not a 3-D integer array of at least 2 planes, negative labels, a threshold outside (0, 1], or
        ids so large that the new ids would pass 2**63 - 1.
    """
    masks = check_labels(masks, "stitch_planes")
    _check_threshold(threshold)
    if masks.ndim != 3:
        raise CpsnakeError(
            f"stitch_planes: found {masks.ndim} dimensions {masks.shape}, expected a stack (Z, Y, X) of 2-D "
            "label planes; pass one label image per plane, stacked along the first axis"
        )
    if masks.shape[0] < 2:
        raise CpsnakeError(
            f"stitch_planes: found {masks.shape[0]} plane(s) {masks.shape}, expected at least 2 planes "
            "(Z, Y, X) to stitch; a single plane needs no stitching, use its labels as they are"
        )
    tops = [int(plane.max()) if plane.size else 0 for plane in masks]
    bound = sum(tops)  # no id given can exceed it: each plane adds at most its largest id
    if bound > _MAX_ID:
        raise CpsnakeError(
            f"stitch_planes: the planes' largest ids sum to {bound}, expected at most 2**63 - 1 so that new "
            "ids fit in int64; renumber each plane's labels 1..N first"
        )
    out = np.empty(masks.shape, dtype=_output_dtype(masks.dtype, bound))
    out[0] = masks[0]
    prev_ids, prev_index = compact(masks[0])  # plane 0: its ids are its stitched ids
    prev_new = prev_ids
    top = tops[0]  # M: the largest id given so far
    linked = False  # has some pair of non-empty planes been stitched?
    for z in range(1, masks.shape[0]):
        ids, index = compact(masks[z])
        if prev_new.size and ids.size:
            new, top = _link(prev_new, prev_index, ids, index, tops[z], top, threshold)
            linked = True
        elif linked:  # an empty neighbour after the first stitch: all new ids, shifted by M
            new, top = ids + top, top + tops[z]
        else:  # an empty neighbour before any stitch: cellpose keeps the ids and resets M
            new, top = ids, tops[z]
        lut = np.zeros(new.size + 1, dtype=out.dtype)
        lut[1:] = new
        out[z] = lut[index]
        prev_new, prev_index = new, index
    return out


def _link(prev_new, prev_index, ids, index, top_next, top, threshold) -> tuple[np.ndarray, int]:
    """Stitched ids of one plane from the plane before it (both non-empty).

    Parameters
    ----------
    prev_new : (Kp,) int64, the stitched id of each object of the previous plane (ascending original ids;
        two objects may share a stitched id after a tie).
    prev_index, index : (Y, X) int, 0 = background, else 1 + the object's rank (:func:`compact`) in the
        previous / this plane.
    ids : (K,) int64, this plane's ids, ascending; ``top_next`` its largest id.
    top : int, M, the largest id given so far.

    Returns
    -------
    (K,) int64 stitched ids of this plane's objects, and the new M.
    """
    # the previous plane as cellpose sees it: objects are its *stitched* ids (a tie may have merged two)
    groups, group_of = np.unique(prev_new, return_inverse=True)
    group_of = group_of.reshape(-1)
    n_obj = ids.size
    p = prev_index.reshape(-1)
    c = index.reshape(-1)
    area_next = np.bincount(c, minlength=n_obj + 1)[1:]
    area_prev = np.zeros(groups.size, dtype=np.int64)
    np.add.at(area_prev, group_of, np.bincount(p, minlength=prev_new.size + 1)[1:])
    # overlaps: distinct (group, object) pixel pairs and their counts
    both = (p > 0) & (c > 0)
    pair = group_of[p[both] - 1].astype(np.int64) * n_obj + (c[both] - 1)
    pair, inter = np.unique(pair, return_counts=True)
    gp, cp = np.divmod(pair, n_obj)
    iou = inter / (area_prev[gp] + area_next[cp] - inter)  # float64, as cellpose divides
    keep = iou >= threshold
    gp, cp, iou = gp[keep], cp[keep], iou[keep]
    # each previous object keeps only its best partner(s)
    best = np.zeros(groups.size)
    np.maximum.at(best, gp, iou)
    keep = iou >= best[gp]
    gp, cp, iou = gp[keep], cp[keep], iou[keep]
    # each object takes its best remaining partner, the smallest id on a tie
    order = np.lexsort((gp, -iou, cp))
    cp, gp = cp[order], gp[order]
    first = np.ones(cp.size, dtype=bool)
    first[1:] = cp[1:] != cp[:-1]
    matched, partner = cp[first], gp[first]  # matched: ascending ranks
    new = np.empty(n_obj, dtype=np.int64)
    new[matched] = groups[partner]
    lone = np.ones(n_obj, dtype=bool)
    lone[matched] = False
    lone_ids = ids[lone]
    # new ids count every unmatched id 1..top_next, absent ids included (cellpose's numbering)
    new[lone] = top + lone_ids - np.searchsorted(ids[matched], lone_ids)
    return new, top + top_next - matched.size


def _check_threshold(threshold) -> None:
    try:
        ok = 0.0 < float(threshold) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CpsnakeError(
            f"stitch_planes: found threshold {threshold!r}, expected an IoU in (0, 1]; "
            "pass e.g. 0.25 (cellpose's usual stitch_threshold)"
        )


def _output_dtype(dtype: np.dtype, bound: int) -> np.dtype:
    """The input's dtype if it holds ``bound``, else uint32, else int64."""
    for candidate in (np.dtype(dtype), np.dtype(np.uint32), np.dtype(np.int64)):
        if np.iinfo(candidate).max >= bound:
            return candidate
    raise AssertionError(bound)  # bound <= 2**63 - 1 was checked
