"""2-D flow following of a block of a larger image, compiled, with the whole image's arithmetic (numba).

The block-only case of 2-D flow following: a whole image is followed by
:func:`cpsnake.engine.dynamics.follow_flows` (torch's ``grid_sample``, cellpose's own arithmetic); a block of a large
image is followed here, so that it ends where the whole image's pixels end; a 3-D stack in :mod:`.follow3d`.

Cellpose follows pixels with torch's ``grid_sample`` in coordinates normalised by the image's size: a
position is ``x / (W - 1) * 2 - 1``, the step field ``dP / 5 * 2 / (W - 1)``, and the sample point
``(x + 1) * (W / 2) - 0.5`` (torch's vectorised CPU kernel, ``GridSamplerKernel.cpp``). The float32
rounding therefore depends on the image's size, and where the flows are ambiguous (a trajectory near a
tie between two cells) a different size can send a pixel to another cell. A block of a large image
(:mod:`cpsnake.engine.blocks`) is followed here with the *whole image's* sizes: positions, the step field and the
sample points in the whole image's normalised coordinates, the field read from the block's crop (a
corner outside the crop reads 0, as a corner outside the image does in torch). Every trajectory that stays
inside the crop ends exactly where the whole image's does (``tests/engine/test_blocks.py`` compares with
``grid_sample`` to the bit).

Bilinear sample, as torch's kernel compiled for this CPU (AVX2 with fused multiply-adds, which the
compiler uses for ``a * b + c``): ``ix = fma(x + 1, W / 2, -0.5)``; ``w = ix - floor(ix)``, ``e = 1 - w``
(and ``n``, ``s`` in y); weights ``nw = s * e``, ``ne = s * w``, ``sw = n * e``, ``se = n * w``; the value
``fma(se_v, se, fma(sw_v, sw, fma(ne_v, ne, nw_v * nw)))`` in float32; then each coordinate
``clamp(p + d, -1, 1)``. (Without the fused steps 58% of random sample points differ from torch's in
the last bit; with them none.)
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["step_field", "follow_points"]


def step_field(dP: np.ndarray, cell: np.ndarray, full: tuple[int, int]) -> np.ndarray:
    """The step field ``(Y, X, 2)`` float32 of a crop, channels (x, y) interleaved: ``dP[1 - c] * cell / 5 * 2 /
    (L_c - 1)`` with ``L`` the *whole image's* (Y, X) ``full``, each operation rounded to float32 as cellpose's
    numpy and torch do (the factor ``2 / (L - 1)`` rounded to float32 first)."""
    field = np.empty((*cell.shape, 2), np.float32)
    for c in range(2):
        out = field[..., c]
        np.multiply(dP[1 - c], cell, out=out)
        np.divide(out, np.float32(5.0), out=out)
        np.multiply(out, np.float32(2.0 / (full[1 - c] - 1)), out=out)
    return field


@intrinsic
def _fma(typingctx, a, b, c):
    """float32 ``a * b + c`` rounded once (LLVM's ``llvm.fma.f32``)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _step(f, px, py, H, W, oy, ox, sx, sy):
    """One step of one point (normalised x, y of the whole image): sample the crop's interleaved field ``f``
    (H x W, at (oy, ox) in the image) bilinearly; ``sx``, ``sy`` are the whole image's ``W / 2``, ``H / 2``."""
    one = np.float32(1.0)
    half = np.float32(0.5)
    ix = _fma(px + one, sx, -half)
    iy = _fma(py + one, sy, -half)
    fx = np.float32(np.floor(ix))  # exact: a float32's floor is a float32
    fy = np.float32(np.floor(iy))
    w = ix - fx
    e = one - w
    n = iy - fy
    s = one - n
    x0 = np.int64(fx) - ox
    y0 = np.int64(fy) - oy
    d0 = np.float32(0.0)
    d1 = np.float32(0.0)
    for j in range(4):  # nw, ne, sw, se
        dx, dy = j & 1, j >> 1
        x, y = x0 + dx, y0 + dy
        wt = (n if dy else s) * (w if dx else e)
        if 0 <= x < W and 0 <= y < H:  # a corner outside reads 0 (torch's zero padding)
            b = (y * W + x) * 2
            v0, v1 = f[b], f[b + 1]
        else:
            v0, v1 = np.float32(0.0), np.float32(0.0)
        if j == 0:
            d0, d1 = v0 * wt, v1 * wt
        else:
            d0, d1 = _fma(v0, wt, d0), _fma(v1, wt, d1)
    return min(max(px + d0, -one), one), min(max(py + d1, -one), one)


@njit(cache=True, nogil=True)
def follow_points(field, ys, xs, out, start, stop, niter, full_y, full_x, oy, ox):
    """Follow the pixels ``(ys, xs)[start:stop]`` (crop coordinates) for ``niter`` steps; write their end points
    (y, x), in the *whole image's* coordinates, to ``out[:, start:stop]``.

    ``field`` (H, W, 2) float32 from :func:`step_field`; the crop lies at (oy, ox) in an image of
    (full_y, full_x) pixels.
    """
    H, W = field.shape[0], field.shape[1]
    f = field.reshape(-1)
    one = np.float32(1.0)
    two = np.float32(2.0)
    half = np.float32(0.5)
    ext_x = np.float32(full_x - 1)
    ext_y = np.float32(full_y - 1)
    sx = np.float32(full_x) / two
    sy = np.float32(full_y) / two
    for g in range(start, stop):
        # normalised start, as torch: coordinate / (L - 1) * 2 - 1 in float32
        px = np.float32(xs[g] + ox) / ext_x * two - one
        py = np.float32(ys[g] + oy) / ext_y * two - one
        for _ in range(niter):
            px, py = _step(f, px, py, H, W, oy, ox, sx, sy)
        out[1, g] = (px + one) * half * ext_x  # back to pixel coordinates, as torch: (p + 1) * 0.5 * (L - 1)
        out[0, g] = (py + one) * half * ext_y
