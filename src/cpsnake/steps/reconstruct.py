"""``cpsnake reconstruct FLOWS.tif LABELS.tif``: flows (dY, dX, cellprob) -> label image.

The command around :mod:`cpsnake.engine.reconstruct` (the method, step by step, and what each option does):
its options, the flows file read and the label file written, and the stack modes.

Input: a flows TIFF from ``cpsnake infer`` (float32, (3, Y, X); complex, integer, NaN or infinite
values are refused, and ``--max-pixels N`` bounds Y * X before the file is decoded). Output: a label TIFF
(uint16, or float32 above 65,535 objects) with the flows file's pixel size and unit.

Stacks (the flows file says which; see :mod:`cpsnake.stacks.stack` for the modes): 3-D flows ``(4, Z, Y, X)``
from ``cpsnake infer --do-3d`` are followed in 3-D (:func:`cpsnake.engine.reconstruct3d.compute_masks_3d`;
``--min-size`` in voxels; the flow-error check only with ``--flow3d-threshold``, as cellpose never checks
in 3-D). A stack's per-plane flows are reconstructed plane by plane, then with ``--stitch-threshold T``
linked into 3-D objects (``--min-size`` then counts voxels), with ``--track`` (time series) linked frame to
frame, else numbered plane after plane. The labels are an ImageJ hyperstack with the stack's z step.

``--device``: ``auto`` takes CUDA when there is one, else the CPU path; ``cpu`` and ``mps`` (no float64 there)
take the CPU path; ``cuda`` / ``cuda:N`` must exist (:func:`cpsnake.models.device.resolve_device` with
``kinds=("cuda",)``).

:mod:`cpsnake.engine.reconstruct3d` (numba, about a second to import) is imported only for 3-D flows.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cpsnake.bounds import check, option
from cpsnake.engine.reconstruct import compute_masks, niter_for_diameter
from cpsnake.errors import CpsnakeError, guard
from cpsnake.io import limits
from cpsnake.io.flows import read_flows
from cpsnake.io.labels import write_labels
from cpsnake.models.device import resolve_device
from cpsnake.stacks.stack import reconstruct_planes
from cpsnake.steps import stack_options

__all__ = ["RECONSTRUCT_KINDS", "add_options", "check_options", "options", "stack_keywords", "reconstruct_file", "main"]

RECONSTRUCT_KINDS = ("cuda",)  # the torch path runs on CUDA only (float64 heat diffusion); else the CPU path


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the reconstruction options (shared by ``cpsnake reconstruct`` and ``cpsnake segment``)."""
    p.add_argument(
        "--cellprob-threshold",
        type=option("--cellprob-threshold"),
        default=0.0,
        help="cell probability logit threshold (0.0)",
    )
    p.add_argument(
        "--flow-threshold",
        type=option("--flow-threshold"),
        default=0.4,
        help="max flow error of a mask; 0 = no check (0.4)",
    )
    p.add_argument(
        "--niter",
        type=option("--niter"),
        default=None,
        help="flow-following iterations (200, or 200*D/30 with --diameter)",
    )
    p.add_argument(
        "--min-size", type=option("--min-size"), default=15, help="smallest mask in pixels; -1 keeps all (15)"
    )
    p.add_argument(
        "--max-size-fraction",
        type=option("--max-size-fraction"),
        default=0.4,
        help="drop masks above this image fraction (0.4)",
    )


def stack_keywords(args: argparse.Namespace) -> dict:
    """The stack keywords of :func:`reconstruct_file` from parsed options (see
    :func:`cpsnake.steps.stack_options.options`)."""
    sopts = stack_options.options(args)
    return {
        "stitch_threshold": sopts["stitch_threshold"] if sopts["mode"] == "stitch" else 0.0,
        "track": sopts["track"],
        "track_threshold": sopts["track_threshold"],
        "flow3d_threshold": sopts["flow3d_threshold"],
    }


def check_options(args: argparse.Namespace) -> None:
    """Each reconstruction option within its bound (:mod:`cpsnake.bounds`); needs no torch."""
    for name in ("--cellprob-threshold", "--flow-threshold", "--niter", "--min-size", "--max-size-fraction"):
        check(name, getattr(args, name[2:].replace("-", "_")))


def options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`reconstruct_file` from parsed options (``niter`` None when not given: it then
    follows the network's scale; ``device`` from ``args.device`` where the parser has one: a CUDA device, else
    None for the CPU path, see :func:`cpsnake.models.device.resolve_device`: torch is imported for ``auto`` and
    ``cuda``, so call :func:`check_options` first)."""
    check_options(args)
    return dict(
        cellprob_threshold=args.cellprob_threshold,
        flow_threshold=args.flow_threshold,
        niter=args.niter,
        min_size=args.min_size,
        max_size_fraction=args.max_size_fraction,
        device=resolve_device(getattr(args, "device", None), kinds=RECONSTRUCT_KINDS),
    )


@guard("reconstruct")
def main(argv: list[str] | None = None) -> int:
    """``cpsnake reconstruct FLOWS.tif LABELS.tif [options]``."""
    ap = argparse.ArgumentParser(
        prog="cpsnake reconstruct",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("flows", help="flows TIFF (3, Y, X) = dY, dX, cellprob from `cpsnake infer`")
    ap.add_argument("labels", help="output label TIFF")
    add_options(ap)
    ap.add_argument(
        "--diameter",
        type=option("reconstruct --diameter"),
        default=None,
        help="cell diameter given to `cpsnake infer` (sets niter for flows that do not record their scale)",
    )
    ap.add_argument(
        "--device", default="auto", help="auto (CUDA if there is one, else the CPU path), cpu, cuda or cuda:N"
    )
    stack_options.add_options(ap.add_argument_group("stacks (see cpsnake.stacks.stack)"), network=False)
    limits.add_option(ap)
    args = ap.parse_args(argv)
    reconstruct_file(
        args.flows,
        args.labels,
        max_pixels=args.max_pixels,
        diameter=args.diameter,
        **options(args),
        **stack_keywords(args),
    )
    return 0


def reconstruct_file(
    flows_path,
    labels_path,
    *,
    max_pixels: int | None = None,
    diameter: float | None = None,
    niter: int | None = None,
    stitch_threshold: float = 0.0,
    track: bool = False,
    track_threshold: float = 0.25,
    flow3d_threshold: float = 0.0,
    where_fit: bool = False,
    **opts,
) -> int:
    """Read a flows TIFF, reconstruct, write the label TIFF (the flows' calibration); return the number of objects.

    Without ``niter`` the flows are followed ``int(200 / scale)`` steps, ``scale`` the network's resize
    factor that ``cpsnake infer`` records in the flows file (``diam_mean / diameter``), else the one of
    ``diameter`` for Cellpose-SAM (:func:`niter_for_diameter`). ``opts``: the other keyword arguments
    of :func:`compute_masks`. Stacks: see the module docstring. ``where_fit`` (the workflow, whose config applies
    to every image): ``stitch_threshold`` is used for Z stacks only and ``track`` for time series only, instead
    of an error elsewhere.
    """
    flows, meta = read_flows(flows_path, max_pixels=max_pixels)  # real, finite, within the limit
    if niter is None:
        scale = meta.get("network_scale")
        niter = int(200 / scale) if scale else niter_for_diameter(diameter)
    kind, axes = meta["kind"], meta["stack_axes"]
    if where_fit:
        stitch_threshold = stitch_threshold if kind == "planes" and axes == "Z" else 0.0
        track = track and kind == "planes" and axes == "T"
    if kind == "2d" and (stitch_threshold > 0 or track):
        given = "--track" if track else "--stitch-threshold"
        raise CpsnakeError(
            f"{flows_path}: found the flows of a 2-D image given {given}; "
            "expected a stack's flows; leave the option out for 2-D images"
        )
    if kind == "3d":
        from cpsnake.engine.reconstruct3d import compute_masks_3d  # numba: compiled code only 3-D flows need

        opts.pop("device", None)
        opts.pop("flow_threshold", None)  # cellpose never checks flow errors in 3-D: --flow3d-threshold does
        labels = compute_masks_3d(flows, niter=niter, flow_threshold=flow3d_threshold, **opts)
    elif kind == "planes":
        labels = _planes(flows_path, flows, axes, niter, stitch_threshold, track, track_threshold, opts)
    else:
        labels = compute_masks(flows, niter=niter, **opts)
    write_labels(
        labels_path,
        labels,
        pixel_size=meta["pixel_size"],
        unit=meta["unit"],
        stack_axes=axes,
        z_step=meta.get("z_step"),
        frame_interval=meta.get("frame_interval"),
    )
    return int(labels.max()) if kind == "2d" else int(np.unique(labels[labels > 0]).size)


def _planes(
    flows_path, flows, axes: str, niter: int, stitch_threshold: float, track: bool, track_threshold: float, opts: dict
) -> np.ndarray:
    """Labels (S, Y, X) from per-plane flows (S, 3, Y, X): stitched (Z), tracked (T), or numbered plane after plane."""
    if stitch_threshold > 0 and axes != "Z":
        raise CpsnakeError(
            f"{flows_path}: found the flows of a time series given --stitch-threshold; "
            "expected a Z stack; use --track to link frames"
        )
    if track and axes != "T":
        raise CpsnakeError(
            f"{flows_path}: found the flows of a Z stack given --track; expected a time series (T); "
            "use --stitch-threshold to link Z planes"
        )
    return reconstruct_planes(
        flows, stitch_threshold=stitch_threshold, track=track, track_threshold=track_threshold, niter=niter, **opts
    )


if __name__ == "__main__":
    sys.exit(main())
