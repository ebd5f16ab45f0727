"""Link the objects of a time series frame to frame, so that one cell keeps one id (``--track``).

Rule (overlap-based assignment, frame ``t`` to frame ``t + 1``, the same rule as the plane linking of
:func:`cpsnake.stacks.stitch.stitch_planes`, applied to whole frames, 2-D or 3-D):

1. the intersection over union (IoU) of every object of frame ``t + 1`` with every object of frame ``t``
   it overlaps, in pixels (voxels for 3-D frames);
2. pairs below ``threshold`` (default 0.25) are not linked;
3. each object of frame ``t`` continues into its best partner of frame ``t + 1`` only, and each object of
   frame ``t + 1`` takes the id of its best remaining partner of frame ``t``;
4. every other object of frame ``t + 1`` gets a new id: a cell that appears, and the second daughter of a
   division (the daughter that overlaps the mother more keeps the mother's id).

Not resolved: divisions (no lineage is recorded: the second daughter is simply a new cell), cells that
vanish for a frame and come back (they get a new id: no gap closing), and fast cells that do not overlap
their previous position (they get a new id each frame). For these, export the labels to a tracker
(TrackMate's label-image detector reads the label stack).

Axis order: ``(T, Y, X)`` or ``(T, Z, Y, X)`` labels, 0 = background.
"""

from __future__ import annotations

import numpy as np

from cpsnake.errors import CpsnakeError
from cpsnake.stacks.planes import offset_planes
from cpsnake.stacks.stitch import stitch_planes

__all__ = ["track_frames"]


def track_frames(labels: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Link objects over frames (see the module docstring); returns int32 labels of the same shape, ids 1..N
    given frame by frame (the objects of frame 1 first, then the new ones of frame 2, ...).

    Parameters
    ----------
    labels : (T, Y, X) or (T, Z, Y, X) integer ndarray
        Each frame's own labels (ids may repeat between frames; they are made distinct first).
    threshold : float
        Smallest IoU that links two objects of consecutive frames, in (0, 1].
    """
    lab = np.asarray(labels)
    if lab.ndim not in (3, 4):
        raise CpsnakeError(f"found labels of shape {lab.shape}; expected a time series (T, Y, X) or (T, Z, Y, X)")
    if not 0.0 < float(threshold) <= 1.0:
        raise CpsnakeError(f"track threshold {threshold}; expected an IoU in (0, 1]")
    T = lab.shape[0]
    # a frame, 2-D or 3-D, is one "plane" of pixels for the IoU: (T, Z * Y, X)
    flat = lab.reshape(T, -1, lab.shape[-1])
    if T < 2:
        return offset_planes(flat).reshape(lab.shape)
    linked = stitch_planes(offset_planes(flat), float(threshold))
    # stitched ids are given in order of appearance already, but may skip values: make them 1..N
    ids, inverse = np.unique(linked, return_inverse=True)
    out = inverse.reshape(lab.shape).astype(np.int32 if ids.size < 2**31 else np.int64)
    if ids[0] != 0:  # no background anywhere: ids start at 1
        out += 1
    return out
