"""The network over a stack in 3-D: a normalized ``(Z, C, Y, X)`` stack -> flows ``(4, Z, Y, X)`` = dZ, dY, dX,
cellprob.

Cellpose's ``do_3D`` (``CellposeModel._run_net`` and ``core.run_3D`` in cellpose 4.2.1.1), which
:func:`predict_3d` reproduces:

1. the stack is resized to ``(int(Z * anisotropy * s), int(Y * s), int(X * s))`` with ``s`` the network's
   scale for the diameter (``30 / diameter`` for Cellpose-SAM; 1 without a diameter): each plane
   bilinearly in Y and X first, then along Z (OpenCV's INTER_LINEAR, as :func:`cpsnake.engine.tiles.resize`);
2. the 2-D network runs, at that size and with the usual tiles, on every plane of three orientations:
   the YX planes (one per z), the ZX planes (one per y) and the ZY planes (one per x);
3. the outputs are **summed**, not averaged (cellpose adds them into one array): dZ is the sum of the
   first flow component of the ZX and ZY planes, dY the sum of the YX planes' first and the ZY planes'
   second, dX the sum of the YX and ZX planes' second, and cellprob the sum of all three views' logits.
   So each flow component is about twice and the cell probability three times a 2-D output, and the 3-D
   reconstruction's thresholds apply to these sums (as in cellpose);
4. the four maps are resized back to the stack's size the same way (Y, X first, then Z). Flow values are
   not rescaled.

The planes of all three views go through :func:`cpsnake.engine.infer.predict_many`, so their tiles share network
batches. Memory: the resized stack, the ``(4, Z', Y', X')`` sums and one plane's tiles at a time.
The parity test runs cellpose 4's ``run_3D`` on the same network (``tests/engine/test_infer3d.py``). The classic
U-Net runs the same way (cellpose 3's ``run_3D`` for it was not compared).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cpsnake.engine.infer import predict_many, tiling
from cpsnake.engine.tiles import resize
from cpsnake.errors import CpsnakeError
from cpsnake.io import limits

__all__ = ["predict_3d", "resize_3d", "stack_shape_3d", "smooth_flows_3d"]


def resize_3d(stack: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a ``(Z, C, Y, X)`` stack to ``(Z', C, Y', X')``, ``shape = (Z', Y', X')``: Y and X of
    every plane first, then Z along each (Z, X) section (cellpose's ``resize_image_3d``). float32."""
    Zr, Yr, Xr = (int(n) for n in shape)
    out = np.asarray(stack, dtype=np.float32)
    Z, C, Y, X = out.shape
    if (Yr, Xr) != (Y, X):
        out = np.stack([resize(plane, (Yr, Xr)) for plane in out])
    if Zr != Z:
        # (Z, C, Y, X) -> per y: (C, Z, X) resized to (C, Zr, X)
        res = np.empty((Zr, C, Yr, Xr), np.float32)
        for y in range(Yr):
            res[:, :, y, :] = resize(out[:, :, y, :].transpose(1, 0, 2), (Zr, Xr)).transpose(1, 0, 2)
        out = res
    return out


def stack_shape_3d(shape: Sequence[int], scale: float, anisotropy: float) -> tuple[int, int, int]:
    """``(int(Z * anisotropy * scale), int(Y * scale), int(X * scale))`` of a ``(Z, C, Y, X)`` stack (cellpose's
    rounding); a CpsnakeError when a side would be empty."""
    Z, _, Y, X = (int(n) for n in shape)
    new = (int(Z * anisotropy * scale), int(Y * scale), int(X * scale))
    if min(new) < 1:
        raise CpsnakeError(
            f"resizing the {Z} x {Y} x {X} stack by {scale:g} (anisotropy {anisotropy:g}) leaves {new[0]} x {new[1]} x "
            f"{new[2]} voxels; expected at least 1 per side; give a smaller diameter or a larger anisotropy"
        )
    return new


def predict_3d(
    net: Callable,
    stack: np.ndarray,
    *,
    diameter: float | None = None,
    anisotropy: float | None = None,
    batch_size: int = 8,
    tile_overlap: float = 0.1,
    augment: bool = False,
    device=None,
    dtype=None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """3-D flows of a normalized stack (see the module docstring for the method).

    Parameters
    ----------
    net : callable
        The 2-D network (:func:`cpsnake.models.registry.load_model`), either family.
    stack : (Z, C, Y, X) ndarray
        Normalized stack (the whole stack normalized at once, as cellpose's ``norm3D``), C = 1..3.
    diameter : float, optional
        Typical cell diameter in pixels (Y, X); None: the network's own scale (:class:`cpsnake.engine.infer.Tiling`).
    anisotropy : float, optional
        Z step over the pixel size (e.g. 2.0 when planes are twice as far apart as pixels); Z is
        rescaled by it before the network and back afterwards. None or 1.0: no rescaling of Z.
    max_pixels : int, optional
        Most voxels x channels the resized stack may hold (:func:`cpsnake.io.limits.max_pixels`).
    Other parameters : as :func:`cpsnake.engine.infer.predict_many`.

    Returns
    -------
    (4, Z, Y, X) float32 ndarray: dZ, dY, dX (each the sum of two views) and cellprob (the sum of three).
    """
    stack = np.asarray(stack)
    if stack.ndim != 4 or stack.shape[0] < 2:
        raise CpsnakeError(
            f"found an array of shape {stack.shape}; expected a stack (Z, C, Y, X) with at least 2 planes for 3-D "
            "segmentation; segment a single plane in 2-D (leave out --do-3d)"
        )
    aniso = 1.0 if anisotropy is None else float(anisotropy)
    if not (aniso > 0 and np.isfinite(aniso)):
        raise CpsnakeError(f"anisotropy {anisotropy}; expected a positive number (Z step / pixel size, e.g. 2.0)")
    scale = tiling(net).scale(diameter) or 1.0
    Z, C, Y, X = stack.shape
    new = stack_shape_3d(stack.shape, scale, aniso)
    limit = limits.max_pixels(max_pixels)
    if new[0] * new[1] * new[2] * C > limit:
        raise CpsnakeError(
            f"--anisotropy {aniso:g}: the {Z} x {Y} x {X} stack resized for the network "
            f"({new[0]} x {new[1]} x {new[2]} voxels, {C} channel(s)) holds more than the limit of {limit:,} samples; "
            "expected a smaller stack; give a smaller --anisotropy or a larger diameter, crop the stack, or raise the "
            f"limit with {limits.RAISE}"
        )
    x = resize_3d(stack, new) if new != (Z, Y, X) else np.asarray(stack, dtype=np.float32)
    Zr, Yr, Xr = new
    flows = np.zeros((4, Zr, Yr, Xr), np.float32)
    opts = dict(
        batch_size=batch_size, tile_overlap=tile_overlap, augment=augment, device=device, dtype=dtype, progress=False
    )

    def run(planes, n):
        return predict_many(net, planes, scales=[1.0] * n, **opts)

    # YX planes: (dY, dX)
    for z, out in enumerate(run((x[z] for z in range(Zr)), Zr)):
        flows[1, z] += out[0]
        flows[2, z] += out[1]
        flows[3, z] += out[2]
    # ZX planes, one per y: (dZ, dX)
    for y, out in enumerate(run((x[:, :, y, :].transpose(1, 0, 2) for y in range(Yr)), Yr)):
        flows[0, :, y, :] += out[0]
        flows[2, :, y, :] += out[1]
        flows[3, :, y, :] += out[2]
    # ZY planes, one per x: (dZ, dY)
    for xi, out in enumerate(run((x[:, :, :, xi].transpose(1, 0, 2) for xi in range(Xr)), Xr)):
        flows[0, :, :, xi] += out[0]
        flows[1, :, :, xi] += out[1]
        flows[3, :, :, xi] += out[2]
    del x
    if new != (Z, Y, X):
        flows = resize_3d(flows.transpose(1, 0, 2, 3), (Z, Y, X)).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(flows)


def smooth_flows_3d(flows: np.ndarray, sigma: float | Sequence[float]) -> np.ndarray:
    """cellpose's ``flow3D_smooth``: Gaussian smoothing of dZ, dY, dX (not cellprob) with ``sigma`` (one value,
    or (z, y, x)) in voxels; 0 leaves an axis alone. ``flows`` (4, Z, Y, X) is smoothed in place and returned."""
    from scipy.ndimage import gaussian_filter

    s = [float(sigma)] * 3 if np.ndim(sigma) == 0 else [float(v) for v in sigma]
    if len(s) != 3 or any(not (v >= 0 and np.isfinite(v)) for v in s):
        raise CpsnakeError(f"--flow3d-smooth {sigma}; expected one sigma or three (Z Y X), each >= 0 voxels")
    if any(v > 0 for v in s):
        flows[:3] = gaussian_filter(flows[:3], [0, *s])
    return flows
