"""3-D flow following, compiled: each voxel is walked through all its steps before the next (numba).

Cellpose follows every point one step at a time with torch's ``grid_sample`` (5-D, trilinear, zero
padding, ``align_corners=False``), 200 passes over millions of points and a full-size step field
``flows * cell / 5 * 2 / (L - 1)``. :func:`follow_points` does the same arithmetic per point, operation for
operation in float32, on the same field (:func:`step_field`, its three channels interleaved so that one
corner's values share a cache line), and keeps each point in registers for its ``niter`` steps. The end
points are cellpose's to the bit (``tests/engine/test_reconstruct3d.py`` compares them with ``grid_sample``'s).

The trilinear sample is torch's CPU ``grid_sampler_3d`` (ATen ``GridSampler.cpp``): source index
``((c + 1) * L - 1) / 2``, corners ``floor`` and ``floor + 1``, weights as products of the distances to the
opposite corner, corners outside the stack contributing nothing, summed in the order tnw, tne, tsw, tse,
bnw, bne, bsw, bse; then each coordinate ``clamp(c + step, -1, 1)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["step_field", "follow_points", "histogram"]


def step_field(dP: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The step field ``(Z, Y, X, 3)`` float32, channels (x, y, z) interleaved:
    ``dP[2 - c] * cell / 5 * 2 / (L_c - 1)``,
    each operation rounded to float32 as cellpose builds it with numpy and torch (the factor ``2 / (L - 1)``
    is rounded to float32 first, as torch does with a Python scalar)."""
    shape = cell.shape
    field = np.empty((*shape, 3), np.float32)
    for c in range(3):  # written in place through the strided channel view: no full-size temporary
        out = field[..., c]
        np.multiply(dP[2 - c], cell, out=out)
        np.divide(out, np.float32(5.0), out=out)
        np.multiply(out, np.float32(2.0 / (shape[2 - c] - 1)), out=out)
    return field


@njit(cache=True, nogil=True, inline="always")
def _step(f, p0, p1, p2, D, H, W):
    """One step of one point (normalised x, y, z): sample the flat interleaved field ``f`` trilinearly at the
    8 corners (torch's order tnw, tne, tsw, tse, bnw, bne, bsw, bse, each only when inside the stack, each
    channel summed in float32), add, clamp to [-1, 1]."""
    one = np.float32(1.0)
    two = np.float32(2.0)
    ix = ((p0 + one) * np.float32(W) - one) / two
    iy = ((p1 + one) * np.float32(H) - one) / two
    iz = ((p2 + one) * np.float32(D) - one) / two
    x0 = np.int64(np.floor(ix))
    y0 = np.int64(np.floor(iy))
    z0 = np.int64(np.floor(iz))
    ax0, ay0, az0 = ix - np.float32(x0), iy - np.float32(y0), iz - np.float32(z0)
    ax1, ay1, az1 = np.float32(x0 + 1) - ix, np.float32(y0 + 1) - iy, np.float32(z0 + 1) - iz
    sy = 3 * W
    sz = sy * H
    base = z0 * sz + y0 * sy + x0 * 3
    inside = 0 <= x0 and x0 + 1 < W and 0 <= y0 and y0 + 1 < H and 0 <= z0 and z0 + 1 < D
    d0 = np.float32(0.0)
    d1 = np.float32(0.0)
    d2 = np.float32(0.0)
    for j in range(8):
        dx, dy, dz = j & 1, (j >> 1) & 1, j >> 2
        if not inside:
            x, y, z = x0 + dx, y0 + dy, z0 + dz
            if not (0 <= x < W and 0 <= y < H and 0 <= z < D):
                continue
        w = (ax0 if dx else ax1) * (ay0 if dy else ay1) * (az0 if dz else az1)
        b = base + dz * sz + dy * sy + dx * 3
        d0 += f[b] * w
        d1 += f[b + 1] * w
        d2 += f[b + 2] * w
    return min(max(p0 + d0, -one), one), min(max(p1 + d1, -one), one), min(max(p2 + d2, -one), one)


_GROUP = 8  # points stepped in lockstep, so that the processor overlaps their independent chains


@njit(cache=True, nogil=True)
def follow_points(field, idx, out, start, stop, niter, ext):
    """Follow the voxels ``idx[start:stop]`` for ``niter`` steps; write their end points (z, y, x) to
    ``out[:, start:stop]``.

    Parameters
    ----------
    field : (Z, Y, X, 3) float32 step field from :func:`step_field` (C-contiguous)
    idx : (N,) int64 flat raster indices of the start voxels
    out : (3, N) float32, written
    ext : (3,) float32 ``L - 1`` along x, y, z
    """
    D, H, W = field.shape[0], field.shape[1], field.shape[2]
    f = field.reshape(-1)
    one = np.float32(1.0)
    two = np.float32(2.0)
    half = np.float32(0.5)
    p = np.empty((3, _GROUP), np.float32)
    for g in range(start, stop, _GROUP):
        m = min(_GROUP, stop - g)
        for j in range(m):
            k = idx[g + j]
            # normalised start, as torch: coordinate / (L - 1) * 2 - 1 in float32
            p[0, j] = np.float32(k % W) / ext[0] * two - one
            p[1, j] = np.float32((k // W) % H) / ext[1] * two - one
            p[2, j] = np.float32(k // (H * W)) / ext[2] * two - one
        for _ in range(niter):
            for j in range(m):
                p[0, j], p[1, j], p[2, j] = _step(f, p[0, j], p[1, j], p[2, j], D, H, W)
        for j in range(m):  # back to voxel coordinates, as torch: (p + 1) * 0.5 * (L - 1)
            out[2, g + j] = (p[0, j] + one) * half * ext[0]
            out[1, g + j] = (p[1, j] + one) * half * ext[1]
            out[0, g + j] = (p[2, j] + one) * half * ext[2]


@njit(cache=True, nogil=True)
def histogram(bins, size):
    """int32 counts of ``bins`` (flat indices into ``size`` bins), without a 64-bit temporary."""
    h = np.zeros(size, np.int32)
    for b in bins:
        h[b] += 1
    return h
