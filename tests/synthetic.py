"""Synthetic label images shared by the reconstruction tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def voronoi_cells(shape=(96, 128), spacing=24, seed=0, radius=(8, 12)):
    """Touching roundish cells: jittered grid seeds, Voronoi regions clipped at a random radius. (Y, X) int32."""
    rng = np.random.default_rng(seed)
    gy, gx = np.meshgrid(np.arange(spacing / 2, shape[0], spacing), np.arange(spacing / 2, shape[1], spacing), indexing="ij")
    pts = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(-spacing / 4, spacing / 4, (gy.size, 2))
    pts = np.clip(np.round(pts).astype(int), 0, np.array(shape) - 1)
    free = np.ones(shape, bool)
    free[pts[:, 0], pts[:, 1]] = False
    dist, (iy, ix) = ndi.distance_transform_edt(free, return_indices=True)
    seed_label = np.zeros(shape, np.int32)
    seed_label[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1)
    labels = seed_label[iy, ix]
    labels[dist > rng.uniform(*radius, len(pts) + 1)[labels]] = 0
    return labels
