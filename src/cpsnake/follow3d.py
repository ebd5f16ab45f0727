"""3-D flow following, compiled: each voxel is walked through all its steps before the next (numba).

Cellpose follows every point one step at a time with torch's ``grid_sample`` (5-D, trilinear, zero
padding, ``align_corners=False``), 200 passes over millions of points and a full-size step field
``flows * cell / 5 * 2 / (L - 1)`` held beside the flows. :func:`follow_points` does the same arithmetic
per point, operation for operation in float32 (the step field value of a voxel is computed where it is
read, in the same order of operations as the field would be built, so nothing else is allocated), and
keeps each point in registers for its ``niter`` steps. The end points are cellpose's to the bit
(``tests/test_reconstruct3d.py`` compares them with ``grid_sample``'s), in a fraction of the time and
without the field's memory.

The trilinear sample is torch's CPU ``grid_sampler_3d`` (ATen ``GridSampler.cpp``): source index
``((c + 1) * L - 1) / 2``, corners ``floor`` and ``floor + 1``, weights as products of the distances to the
opposite corner, corners outside the stack contributing nothing, summed in the order tnw, tne, tsw, tse,
bnw, bne, bsw, bse; then each coordinate ``clamp(c + step, -1, 1)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["follow_points"]


@njit(cache=True, nogil=True)
def _field(dP, cell, c, z, y, x, scale):
    """Step field value of channel ``c`` (x, y, z) at voxel (z, y, x): ``dP[2 - c] * cell / 5 * scale[c]``, float32."""
    v = dP[2 - c, z, y, x] * np.float32(cell[z, y, x])
    v = v / np.float32(5.0)
    return v * scale[c]


@njit(cache=True, nogil=True)
def _sample(dP, cell, c, z0, y0, x0, w, ok, scale):
    """Trilinear sample of field channel ``c`` at the cell with lower corner (z0, y0, x0): the 8 corners in torch's
    order (tnw, tne, tsw, tse, bnw, bne, bsw, bse), each only when inside the stack, summed in float32."""
    acc = np.float32(0.0)
    for j in range(8):
        if ok[j]:
            acc += _field(dP, cell, c, z0 + (j >> 2), y0 + ((j >> 1) & 1), x0 + (j & 1), scale) * w[j]
    return acc


@njit(cache=True, nogil=True)
def follow_points(dP, cell, idx, out, start, stop, niter, ext, scale):
    """Follow the voxels ``idx[start:stop]`` for ``niter`` steps; write their end points (z, y, x) to ``out[:, start:stop]``.

    Parameters
    ----------
    dP : (3, Z, Y, X) float32, C-contiguous: dZ, dY, dX as the network gives them
    cell : (Z, Y, X) bool: voxels whose flows count
    idx : (N,) int64 flat raster indices of the start voxels
    out : (3, N) float32, written
    ext : (3,) float32 ``L - 1`` along x, y, z
    scale : (3,) float32 ``2 / (L - 1)`` along x, y, z, rounded to float32 (what torch multiplies by)
    """
    D, H, W = cell.shape
    one = np.float32(1.0)
    two = np.float32(2.0)
    half = np.float32(0.5)
    fW, fH, fD = np.float32(W), np.float32(H), np.float32(D)
    for i in range(start, stop):
        k = idx[i]
        zi = k // (H * W)
        yi = (k // W) % H
        xi = k % W
        # normalised start, as torch: coordinate / (L - 1) * 2 - 1 in float32
        p0 = np.float32(xi) / ext[0] * two - one
        p1 = np.float32(yi) / ext[1] * two - one
        p2 = np.float32(zi) / ext[2] * two - one
        for _ in range(niter):
            ix = ((p0 + one) * fW - one) / two
            iy = ((p1 + one) * fH - one) / two
            iz = ((p2 + one) * fD - one) / two
            x0 = np.int64(np.floor(ix))
            y0 = np.int64(np.floor(iy))
            z0 = np.int64(np.floor(iz))
            x1, y1, z1 = x0 + 1, y0 + 1, z0 + 1
            ax0, ay0, az0 = ix - np.float32(x0), iy - np.float32(y0), iz - np.float32(z0)
            ax1, ay1, az1 = np.float32(x1) - ix, np.float32(y1) - iy, np.float32(z1) - iz
            w_tnw = ax1 * ay1 * az1
            w_tne = ax0 * ay1 * az1
            w_tsw = ax1 * ay0 * az1
            w_tse = ax0 * ay0 * az1
            w_bnw = ax1 * ay1 * az0
            w_bne = ax0 * ay1 * az0
            w_bsw = ax1 * ay0 * az0
            w_bse = ax0 * ay0 * az0
            okx0, okx1 = 0 <= x0 < W, 0 <= x1 < W
            oky0, oky1 = 0 <= y0 < H, 0 <= y1 < H
            okz0, okz1 = 0 <= z0 < D, 0 <= z1 < D
            w = (w_tnw, w_tne, w_tsw, w_tse, w_bnw, w_bne, w_bsw, w_bse)
            ok = (okz0 and oky0 and okx0, okz0 and oky0 and okx1, okz0 and oky1 and okx0, okz0 and oky1 and okx1,
                  okz1 and oky0 and okx0, okz1 and oky0 and okx1, okz1 and oky1 and okx0, okz1 and oky1 and okx1)
            d0 = _sample(dP, cell, 0, z0, y0, x0, w, ok, scale)
            d1 = _sample(dP, cell, 1, z0, y0, x0, w, ok, scale)
            d2 = _sample(dP, cell, 2, z0, y0, x0, w, ok, scale)
            p0 = min(max(p0 + d0, -one), one)
            p1 = min(max(p1 + d1, -one), one)
            p2 = min(max(p2 + d2, -one), one)
        # back to voxel coordinates, as torch: (p + 1) * 0.5 * (L - 1)
        out[2, i] = (p0 + one) * half * ext[0]
        out[1, i] = (p1 + one) * half * ext[1]
        out[0, i] = (p2 + one) * half * ext[2]
