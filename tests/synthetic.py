"""Synthetic label images shared by the reconstruction tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def voronoi_cells(shape=(96, 128), spacing=24, seed=0, radius=(8, 12)):
    """Touching roundish cells: jittered grid seeds, Voronoi regions clipped at a random radius. (Y, X) int32."""
    rng = np.random.default_rng(seed)
    gy, gx = np.meshgrid(
        np.arange(spacing / 2, shape[0], spacing), np.arange(spacing / 2, shape[1], spacing), indexing="ij"
    )
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


def pseudo_stack(image: np.ndarray, labels: np.ndarray, *, planes: int = 12, z_step: float = 2.0, seed: int = 0):
    """A Z stack made from a real 2-D image and its labels: every object becomes an ellipsoid-like body.

    Object ``i`` (equivalent radius ``r`` px) is centred at a random depth and reaches ``r`` px above and
    below it (``r / z_step`` planes); at depth ``d`` from its centre its section is its 2-D mask shrunk about
    its centroid by ``sqrt(1 - (d / r)**2)``, filled with its own pixels (sampled the same way). Background
    planes are the image's background pixels. Returns ``(stack (Z, Y, X) of image.dtype, labels (Z, Y, X)
    int32)``; later objects win where two overlap.
    """
    rng = np.random.default_rng(seed)
    Y, X = labels.shape
    bg = image[labels == 0]
    stack = (
        rng.choice(bg, size=(planes, Y, X)).astype(image.dtype) if bg.size else np.zeros((planes, Y, X), image.dtype)
    )
    stack = ndi.uniform_filter(stack.astype(np.float32), size=(1, 3, 3)).astype(image.dtype)
    out = np.zeros((planes, Y, X), np.int32)
    yy, xx = np.mgrid[0:Y, 0:X]
    ids = np.unique(labels[labels > 0])
    for new, i in enumerate(ids, start=1):
        m = labels == i
        cy, cx = ndi.center_of_mass(m)
        r = np.sqrt(m.sum() / np.pi)
        zc = rng.uniform(0.3, 0.7) * (planes - 1)
        for z in range(planes):
            d = abs(z - zc) * z_step
            if d >= r:
                continue
            s = np.sqrt(1.0 - (d / r) ** 2)
            sy = np.clip(np.round(cy + (yy - cy) / s).astype(int), 0, Y - 1)
            sx = np.clip(np.round(cx + (xx - cx) / s).astype(int), 0, X - 1)
            inside = m[sy, sx]
            stack[z][inside] = image[sy[inside], sx[inside]]
            out[z][inside] = new
    return stack, out
