"""Flows files: what `cpsnake infer` writes and `cpsnake reconstruct` reads.

A flows file is an ImageJ TIFF of float32 (:func:`cpsnake.io.tiff.write_tiff`), in one of three shapes:

* ``(3, Y, X)`` = dY, dX, cellprob logits of a 2-D image (axes CYX);
* ``(S, 3, Y, X)``, one (dY, dX, cellprob) per plane of a Z stack or a time series (axes ZCYX / TCYX);
* ``(4, Z, Y, X)`` = dZ, dY, dX, cellprob of a 3-D stack, stored as ZCYX with 4 channels (ImageJ's
  hyperstack order) and given back in the engine's order.

The ImageJ metadata keep ``network_scale`` (the factor the image was resized by for the network), and the
Z step (``spacing``) or frame interval (``finterval``) carried on to the labels. :func:`read_flows` refuses
complex, integer, NaN and infinite values (never cast silently), each with one line naming the fix.
"""

from __future__ import annotations

import os

import numpy as np

from cpsnake.errors import CpsnakeError
from cpsnake.io.tiff import read_tiff, write_tiff

__all__ = ["write_flows", "read_flows", "FLOWS_FIX"]


def write_flows(
    path: str | os.PathLike,
    flows: np.ndarray,
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    network_scale: float | None = None,
    stack_axes: str = "",
    z_step: float | None = None,
    frame_interval: float | None = None,
    three_d: bool = False,
) -> None:
    """Write flows as an ImageJ TIFF: float32 ``(3, Y, X)`` = dY, dX, cellprob logits (axes CYX); a stack's per-plane
    flows ``(S, 3, Y, X)`` (``stack_axes`` ``"Z"`` or ``"T"``: axes ZCYX / TCYX); or with ``three_d`` 3-D flows
    ``(4, Z, Y, X)`` = dZ, dY, dX, cellprob (``stack_axes="Z"``; stored as ZCYX with 4 channels, as ImageJ orders
    hyperstack axes).

    ``network_scale``: the factor the image was resized by for the network (``diam_mean / diameter``), kept
    in the ImageJ metadata so that ``cpsnake reconstruct`` follows the flows ``int(200 / scale)`` steps.
    ``z_step`` and ``frame_interval`` go to ImageJ's ``spacing`` and ``finterval`` (carried on to the labels).
    """
    flows = np.asarray(flows, dtype=np.float32)
    if stack_axes not in ("", "Z", "T"):
        raise CpsnakeError(f"{path}: flows with stack axes {stack_axes!r}, expected '', 'Z' or 'T'")
    if not stack_axes and (flows.ndim != 3 or flows.shape[0] != 3):
        raise CpsnakeError(f"{path}: flows of shape {flows.shape}, expected (3, Y, X) = dY, dX, cellprob")
    if three_d and not (flows.ndim == 4 and flows.shape[0] == 4 and stack_axes == "Z"):
        raise CpsnakeError(
            f"{path}: 3-D flows of shape {flows.shape} (stack axes {stack_axes!r}), expected (4, Z, Y, X)"
        )
    if stack_axes and not three_d and not (flows.ndim == 4 and flows.shape[1] == 3):
        raise CpsnakeError(f"{path}: stack flows of shape {flows.shape}, expected (S, 3, Y, X) per plane")
    extra = {"network_scale": float(network_scale)} if network_scale is not None else {}
    if z_step and stack_axes == "Z":
        extra["spacing"] = float(z_step)
    if frame_interval and stack_axes == "T":
        extra["finterval"] = float(frame_interval)
    if three_d:  # (4, Z, Y, X) -> (Z, 4, Y, X)
        flows = flows.transpose(1, 0, 2, 3)
    write_tiff(path, flows, axes=stack_axes + "CYX", pixel_size=pixel_size, unit=unit, metadata=extra or None)


FLOWS_FIX = "pass the FLOWS.tif that `cpsnake infer` wrote for this image (run `cpsnake infer` again if it is damaged)"


def read_flows(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a flows file (see :func:`write_flows`) and ``{"pixel_size", "unit", "network_scale", "kind", "stack_axes",
    "z_step"}``.

    ``kind`` ``"2d"``: float32 ``(3, Y, X)``; ``"planes"``: ``(S, 3, Y, X)``, one (dY, dX, cellprob) per plane of a Z
    stack or time series (``stack_axes`` "Z" or "T"); ``"3d"``: ``(4, Z, Y, X)`` = dZ, dY, dX, cellprob. The limit
    ``max_pixels`` counts pixels (voxels): a flows file holds 3 (or 4) samples per pixel. Complex, integer or
    non-finite values are an error (never cast silently).
    """
    what = "a flows TIFF written by `cpsnake infer` (float32, 3 x Y x X, or per plane / 3-D for stacks)"
    flows, meta = read_tiff(path, expected=what, fix=FLOWS_FIX, max_pixels=max_pixels, per_pixel=4, what="flows file")
    axes = meta.pop("axes") or ""
    stack_axes = "T" if axes.startswith("T") else "Z" if axes.startswith("Z") else ""  # as write_flows names them
    if flows.ndim == 3 and flows.shape[0] == 3:
        kind, stack_axes = "2d", ""
    elif flows.ndim == 4 and flows.shape[1] == 3 and stack_axes:
        kind = "planes"
    elif flows.ndim == 4 and flows.shape[1] == 4 and stack_axes == "Z":
        kind, flows = "3d", flows.transpose(1, 0, 2, 3)
    else:
        raise CpsnakeError(
            f"{path}: found an array of shape {flows.shape} (axes {axes!r}), expected flows (3, Y, X) = dY, dX, "
            f"cellprob, a stack's (Z, 3, Y, X) or 3-D flows (Z, 4, Y, X); {FLOWS_FIX}"
        )
    if flows.dtype.kind != "f":
        raise CpsnakeError(f"{path}: found flows of type {flows.dtype}, expected real floats (float32); {FLOWS_FIX}")
    flows = flows.astype(np.float32, copy=False)
    bad = int(flows.size - np.count_nonzero(np.isfinite(flows)))
    if bad:
        raise CpsnakeError(
            f"{path}: found {bad} NaN or infinite flow values, expected finite flows; {FLOWS_FIX}; if the network "
            "itself gives NaN, check the weights file"
        )
    meta.update(kind=kind, stack_axes=stack_axes)
    return flows, meta
