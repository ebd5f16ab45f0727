"""The planes of a label stack made one label image: :func:`offset_planes`.

Each plane of a stack segmented plane by plane numbers its objects 1..N of its own. Before the planes are
linked (Z: :func:`cpsnake.stacks.stitch.stitch_planes`; T: :func:`cpsnake.stacks.track.track_frames`), or when
they are not linked at all, the ids are made distinct over the stack by shifting each plane's ids above the
largest id of the planes before it. Numpy only, so that a plane-by-plane stack loads nothing more.
"""

from __future__ import annotations

import numpy as np

__all__ = ["offset_planes"]


def offset_planes(labels: np.ndarray) -> np.ndarray:
    """Per-plane labels ``(Z, Y, X)`` (each plane 0..N_z) -> ids unique over the stack: plane z's ids shifted by
    the largest id of the planes before it. int32, or int64 when the total passes 2**31 - 1."""
    tops = labels.reshape(labels.shape[0], -1).max(axis=1).astype(np.int64)
    shift = np.concatenate([[0], np.cumsum(tops)[:-1]])
    out = labels.astype(np.int64 if tops.sum() > 2**31 - 1 else np.int32)
    for z in range(labels.shape[0]):
        if shift[z]:
            plane = out[z]
            plane[plane > 0] += shift[z]
    return out
