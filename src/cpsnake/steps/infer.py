"""``cpsnake infer NORMALIZED.tif FLOWS.tif``: the network over a normalized image -> flows.

Command line::

    cpsnake infer NORMALIZED.tif FLOWS.tif --model NAME|PATH [--diameter D|auto] [--augment]
        [--batch-size N] [--tile-overlap F] [--device auto|cpu|cuda|mps] [--precision auto|float32|bfloat16]
        [--do-3d [--anisotropy A] [--flow3d-smooth SIGMA]] [--max-pixels N]

``NORMALIZED.tif`` is the float32 ``(C, Y, X)`` image (C = 1..3) written by ``cpsnake normalize``
(:func:`read_normalized`; a stack ``(Z|T, C, Y, X)``). ``FLOWS.tif`` is a float32 ImageJ TIFF ``(3, Y, X)`` =
dY, dX, cellprob logits at the input's size, carrying the input's pixel size and unit (a stack: per plane, or
``(4, Z, Y, X)`` with ``--do-3d``). How the network sees the image (tiles, resizing for a diameter, blending) is
:mod:`cpsnake.engine.infer`; the stack modes are :mod:`cpsnake.stacks.stack`.

- Device ``auto`` picks cuda, then mps, then cpu (:func:`cpsnake.models.device.resolve_device`). Precision
  ``auto`` is bfloat16 on a GPU, float32 on CPU. Batch size ``auto`` is 8 on CPU, 32 on a GPU.
- ``--diameter auto`` asks a classic U-Net's size model (:func:`cpsnake.engine.size.auto_diameter`; a stack's
  middle plane).

Every check that needs no torch comes first (options, the input, the output's folder, the weights file:
:mod:`cpsnake.models.statefile`); :mod:`cpsnake.models.registry`, which imports torch, is imported only then,
inside :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from cpsnake.bounds import check, option
from cpsnake.engine.infer import predict, resized_shape, tiling
from cpsnake.engine.size import auto_diameter
from cpsnake.errors import CpsnakeError, guard
from cpsnake.io import limits
from cpsnake.io.flows import write_flows
from cpsnake.io.outputs import check_output
from cpsnake.io.tiff import read_tiff
from cpsnake.models import statefile, weights
from cpsnake.models.device import resolve_device, resolve_dtype
from cpsnake.stacks.stack import stack_flows
from cpsnake.steps import stack_options

__all__ = ["read_normalized", "add_options", "check_options", "check_stack_request", "options", "main"]


def read_normalized(path: str | Path, *, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a normalized image: float32 ``(C, Y, X)`` with C = 1..3 (a stack: ``(S, C, Y, X)``), and ``{"pixel_size",
    "unit", "stack_axes" ("" , "Z" or "T"), "z_step"}``.

    A 2-D ``(Y, X)`` file is one channel. Anything else (integers, complex, more channels, NaN, an image
    thinner than :data:`cpsnake.io.limits.MIN_SIDE`, more samples than ``max_pixels``) is a CpsnakeError.
    """
    what = "the float32 (C, Y, X) image (or (Z|T, C, Y, X) stack) written by `cpsnake normalize`"
    fix = f"pass {what}"
    data, meta = read_tiff(path, expected=what, fix=fix, max_pixels=max_pixels, what="normalized image")
    axes = meta.pop("axes") or ""
    if data.ndim == 2:
        data = data[None]
    elif data.ndim == 3 and axes[:1] in ("Z", "T") and "C" not in axes:  # a one-channel stack (ImageJ drops C = 1)
        data = data[:, None]
    stack_axes = ""
    if data.ndim == 4 and axes[:1] in ("Z", "T"):
        stack_axes = axes[0]
    elif data.ndim != 3:
        raise CpsnakeError(
            f"{path}: found shape {data.shape} (axes {axes!r}), expected (C, Y, X) with C = 1..3 or a "
            f"stack (Z|T, C, Y, X); {fix}"
        )
    if not 1 <= data.shape[-3] <= 3 or min(data.shape[-2:]) < 1:
        raise CpsnakeError(f"{path}: found shape {data.shape}, expected C = 1..3 channels; {fix}")
    if not np.issubdtype(data.dtype, np.floating):
        raise CpsnakeError(f"{path}: found dtype {data.dtype}, expected float32 (a normalized image); {fix}")
    limits.check_min_side(path, data.shape)
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise CpsnakeError(f"{path}: found NaN or infinite values, expected finite floats; {fix}")
    meta["stack_axes"] = stack_axes
    return data, meta


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpsnake infer", description="Tiled Cellpose-SAM inference: normalized image -> flows (dY, dX, cellprob)."
    )
    p.add_argument(
        "normalized", type=Path, help="float32 (C, Y, X) TIFF from `cpsnake normalize`, C = 1..3 (or a stack)"
    )
    p.add_argument(
        "flows",
        type=Path,
        help="output flows TIFF, float32 (3, Y, X) = dY, dX, cellprob logits (per plane "
        "for stacks; (4, Z, Y, X) with --do-3d)",
    )
    p.add_argument(
        "--model", required=True, help="registry name (see `cpsnake weights list`) or path to a weights file"
    )
    add_options(p)
    stack_options.add_options(p.add_argument_group("stacks (see cpsnake.stacks.stack)"), masks=False)
    limits.add_option(p)
    return p


def check_stack_request(path, stack_axes: str, mode: str) -> None:
    """One clear line for --do-3d on what is not a Z stack (a 2-D image, a time series of 2-D frames)."""
    if mode == "3d" and stack_axes != "Z":
        found = "a 2-D image" if not stack_axes else "a time series of 2-D frames (no Z axis)"
        raise CpsnakeError(
            f"{path}: found {found} given --do-3d; expected a Z stack; leave out --do-3d, or save the "
            "planes as Z if they are depths (Fiji: Image > Properties)"
        )


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the inference options (shared by ``cpsnake infer`` and ``cpsnake segment``)."""
    p.add_argument(
        "--diameter",
        type=option("--diameter"),
        default=None,
        help="cell diameter in px (resize by diam_mean/D first: 30/D for Cellpose-SAM), or auto (a U-Net's "
        "size model estimates it per image)",
    )
    p.add_argument(
        "--size-model",
        default=None,
        help="with --diameter auto: cellpose's size model file (default: size_<model>.npy beside the model)",
    )
    p.add_argument("--augment", action="store_true", help="flip test-time augmentation (slower, smoother)")
    p.add_argument(
        "--batch-size",
        type=option("--batch-size"),
        default=None,
        metavar="N|auto",
        help="tiles per batch (auto: 8 CPU, 32 GPU)",
    )
    p.add_argument(
        "--tile-overlap",
        type=option("--tile-overlap"),
        default=0.1,
        help="overlap fraction of tiles, 0.05..0.5 (default 0.1)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="auto: bfloat16 on GPU, float32 on CPU",
    )


def check_options(args: argparse.Namespace) -> None:
    """The option checks that need no torch (so they come before any file is read): each value within its
    bound (:mod:`cpsnake.bounds`; the parser checks what is typed, this what a caller set)."""
    check("--tile-overlap", args.tile_overlap)
    check("--diameter", args.diameter)
    check("--batch-size", args.batch_size)


def options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`cpsnake.engine.infer.predict` from parsed options: device, dtype and batch size
    resolved (:mod:`cpsnake.models.device`)."""
    check_options(args)
    device = resolve_device(args.device)
    return dict(
        diameter=args.diameter,
        augment=args.augment,
        batch_size=args.batch_size if args.batch_size not in (None, "auto") else 8 if device.type == "cpu" else 32,
        tile_overlap=args.tile_overlap,
        device=device,
        dtype=resolve_dtype(args.precision, device),
    )


@guard("infer")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_options(args)
    sopts = stack_options.options(args)
    img, meta = read_normalized(args.normalized, max_pixels=args.max_pixels)
    check_stack_request(args.normalized, meta["stack_axes"], sopts["mode"])
    if args.diameter not in (None, "auto"):
        resized_shape(img.shape, args.diameter, args.max_pixels)  # before the model is loaded
    if img.ndim == 4 and sopts["mode"] == "3d":
        limits.check_stack_3d(
            args.normalized, img.shape, anisotropy=sopts["anisotropy"], diameter=args.diameter, limit=args.max_pixels
        )
    check_output(args.flows)  # an output that cannot be written: one line before the model loads

    path = weights.resolve(args.model, progress=True)
    statefile.check(path)  # a hostile weights file is refused here, before torch (0.9 GB) is imported
    opts = options(args)
    from cpsnake.models.registry import load_model  # imports torch: only once every check has passed

    net = load_model(path, device=str(opts["device"]))
    if img.ndim == 4:
        return _main_stack(args, net, img, meta, opts, sopts, path)
    if opts["diameter"] == "auto":
        opts["diameter"] = auto_diameter(net, img, path, args.size_model, opts, source=args.normalized)
    flows = predict(net, img, progress=None, max_pixels=args.max_pixels, **opts)
    write_flows(
        args.flows,
        flows,
        pixel_size=meta["pixel_size"],
        unit=meta["unit"],
        network_scale=tiling(net).scale(opts["diameter"]),
    )
    return 0


def _main_stack(args, net, img: np.ndarray, meta: dict, opts: dict, sopts: dict, model_path) -> int:
    """``cpsnake infer`` on a normalized stack: per-plane flows, or 3-D flows with --do-3d
    (:mod:`cpsnake.stacks.stack`)."""
    if opts["diameter"] == "auto":
        mid = img.shape[0] // 2
        opts["diameter"] = auto_diameter(
            net, img[mid], model_path, args.size_model, opts, source=f"{args.normalized} (middle plane {mid + 1})"
        )
    do_3d = sopts["mode"] == "3d"
    flows = stack_flows(
        net,
        img,
        do_3d=do_3d,
        anisotropy=sopts["anisotropy"],
        flow3d_smooth=sopts["flow3d_smooth"],
        max_pixels=args.max_pixels,
        **opts,
    )
    write_flows(
        args.flows,
        flows,
        pixel_size=meta["pixel_size"],
        unit=meta["unit"],
        stack_axes=meta["stack_axes"],
        network_scale=tiling(net).scale(opts["diameter"]),
        z_step=meta.get("z_step"),
        frame_interval=meta.get("frame_interval"),
        three_d=do_3d,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
