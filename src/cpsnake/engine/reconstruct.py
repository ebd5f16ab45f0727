"""``cpsnake reconstruct FLOWS.tif LABELS.tif``: flows (dY, dX, cellprob) -> label image.

The Cellpose mask reconstruction (as in cellpose 4.2.1.1, ``dynamics.resize_and_compute_masks``):

1. pixels with cellprob logit > ``--cellprob-threshold`` (default 0.0) follow the flow field
   (``flows / 5``, zeroed elsewhere) for ``--niter`` steps (default 200; ``int(200 / (30 / D))`` when a
   cell diameter ``--diameter D`` was given to the network) with bilinear interpolation;
2. a histogram of the end points seeds the masks (local maxima with > 10 end points), each grown
   through bins with > 2 end points; masks larger than ``--max-size-fraction`` (0.4) of the image are
   dropped;
3. flow-error quality control: flows are recomputed from each mask (heat diffusion) and compared with
   the predicted flows; masks with mean squared error > ``--flow-threshold`` (0.4) are dropped
   (``--flow-threshold 0`` turns this off);
4. masks under ``--min-size`` pixels (15) are dropped, holes filled, small masks dropped again;
5. labels are renumbered 1..N (order of first appearance, row by row).

Input: a flows TIFF from ``cpsnake infer`` (float32, (3, Y, X); complex, integer, NaN or infinite
values are refused, and ``--max-pixels N`` bounds Y * X before the file is decoded). Output: a label TIFF
(uint16, or float32 above 65,535 objects) with the flows file's pixel size and unit.

Stacks (the flows file says which; see :mod:`cpsnake.stacks.stack` for the modes): 3-D flows ``(4, Z, Y, X)``
from ``cpsnake infer --do-3d`` are followed in 3-D (:func:`cpsnake.engine.reconstruct3d.compute_masks_3d`;
``--min-size`` in voxels; the flow-error check only with ``--flow3d-threshold``, as cellpose never checks
in 3-D). A stack's per-plane flows are reconstructed plane by plane, then with ``--stitch-threshold T``
linked into 3-D objects (``--min-size`` then counts voxels), with ``--track`` (time series) linked frame to
frame, else numbered plane after plane. The labels are an ImageJ hyperstack with the stack's z step.
"""

from __future__ import annotations

import argparse

import numpy as np

from cpsnake.errors import CpsnakeError, guard

__all__ = ["compute_masks", "niter_for_diameter", "resolve_device", "check_options", "options", "reconstruct_file",
           "main"]


def niter_for_diameter(diameter: float | None, niter: int | None = None) -> int:
    """Flow-following iterations: ``niter`` if given, else 200, scaled as Cellpose does for a diameter.

    With a diameter ``D`` the network ran at scale ``30 / D``, and Cellpose uses ``int(200 / (30 / D))``.
    """
    if niter is not None and niter > 0:
        return int(niter)
    if diameter is None or diameter <= 0:
        return 200
    return int(200 / (30.0 / diameter))


def compute_masks(
    flows: np.ndarray,
    *,
    cellprob_threshold: float = 0.0,
    flow_threshold: float = 0.4,
    niter: int = 200,
    min_size: int = 15,
    max_size_fraction: float = 0.4,
    device=None,
    interp: bool = True,
) -> np.ndarray:
    """Label image from flows.

    Parameters
    ----------
    flows : (3, Y, X) float ndarray
        dY, dX (network scale, ~5 at unit speed) and cellprob logits.
    cellprob_threshold : float
        Pixels with cellprob above it follow the flows.
    flow_threshold : float
        Maximum flow error of a kept mask; ``<= 0`` (or None) skips the check.
    niter : int
        Flow-following iterations.
    min_size : int
        Smallest kept mask in pixels (``<= 0`` keeps all); holes are filled in any case.
    max_size_fraction : float
        Masks larger than this fraction of the image are removed.
    device : torch device, optional
        Run flow following, seeding and the flow-error check through torch on this device (a GPU; as
        cellpose 4 does on a GPU, but keeping float64 heat diffusion so that the labels equal the CPU
        path's, which tests check by forcing this path on the CPU device). None: the CPU path. Hole
        filling and the size filter run on the CPU either way.
    interp : bool
        Follow the flows with bilinear interpolation (True, cellpose's default) or without (False, what
        cellpose 3's size estimation uses; CPU only).

    Returns
    -------
    (Y, X) int32 labels, 0 = background, 1..N renumbered; all zero when no pixel is above threshold
    (or the image is thinner than 2 pixels).
    """
    labels = seed_masks(flows, cellprob_threshold=cellprob_threshold, niter=niter, max_size_fraction=max_size_fraction,
                        device=device, interp=interp)
    return finish_masks(labels, flows, flow_threshold=flow_threshold, min_size=min_size, device=device)


def seed_masks(flows: np.ndarray, *, cellprob_threshold: float = 0.0, niter: int = 200, max_size_fraction: float = 0.4,
               device=None, interp: bool = True, origin: tuple[int, int] | None = None,
               full_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The first half of :func:`compute_masks`: flow following, seeds, masks grown, masks over
    ``max_size_fraction`` dropped, renumbered; before the flow-error check, hole filling and the size filter.
    ``flows (3, Y, X)``; returns (Y, X) int32 labels (parameters as :func:`compute_masks`).

    ``origin`` and ``full_shape``: the flows are a crop at ``origin`` (y, x) of an image of ``full_shape``;
    the pixels are followed with the whole image's arithmetic (:mod:`cpsnake.engine.follow_block`), so that a
    trajectory that stays in the crop ends where it ends in the whole image (:mod:`cpsnake.engine.blocks`)."""
    from cpsnake.engine import dynamics

    if origin is not None:
        return _seed_masks_crop(flows, cellprob_threshold, niter, max_size_fraction, origin, full_shape)

    flows = np.asarray(flows)
    if flows.ndim != 3 or flows.shape[0] != 3:
        raise ValueError(f"flows of shape {flows.shape}, expected (3, Y, X) = dY, dX, cellprob")
    dP = flows[:2].astype(np.float32, copy=False)
    cellprob = flows[2]
    shape = cellprob.shape
    cell = cellprob > cellprob_threshold
    inds = np.nonzero(cell)
    if len(inds[0]) == 0 or min(shape) < 2:  # nothing to follow (or no room to move: Cellpose gives NaN)
        return np.zeros(shape, dtype=np.int32)
    # step field: flows / 5 inside cells, zero elsewhere (float32, as the network gives it)
    step = dP * cell
    step /= np.float32(5.0)
    del cell
    p = dynamics.follow_flows(step, inds, niter=int(niter), device=None if not interp else device, interp=interp)
    del step
    return dynamics.get_masks(p, inds, shape, max_size_fraction=max_size_fraction, device=device)


def _seed_masks_crop(flows, cellprob_threshold, niter, max_size_fraction, origin, full_shape) -> np.ndarray:
    """:func:`seed_masks` of a crop, followed with the whole image's arithmetic (compiled, CPU threads)."""
    from cpsnake.engine import dynamics
    from cpsnake.engine.follow_block import follow_points, step_field

    dP = np.asarray(flows[:2], dtype=np.float32)
    cell = np.asarray(flows[2]) > cellprob_threshold
    shape = cell.shape
    ys, xs = np.nonzero(cell)
    if ys.size == 0 or min(full_shape) < 2:
        return np.zeros(shape, dtype=np.int32)
    field = step_field(dP, cell, full_shape)
    del cell
    ys, xs = ys.astype(np.int64), xs.astype(np.int64)
    n = ys.size
    p = np.full((2, n), np.nan, np.float32)
    oy, ox = (int(v) for v in origin)

    def run(a: int) -> None:
        follow_points(field, ys, xs, p, a, min(a + (1 << 16), n), int(niter), int(full_shape[0]), int(full_shape[1]),
                      oy, ox)

    dynamics.run_blocks(run, n, 1 << 16, uses_torch=False)
    del field
    q = p.astype(np.int64)  # truncated in the whole image's coordinates, then shifted into the crop
    q[0] -= oy
    q[1] -= ox
    return dynamics.get_masks(q, (ys, xs), shape, max_size_fraction=max_size_fraction)


def finish_masks(labels: np.ndarray, flows: np.ndarray, *, flow_threshold: float = 0.4, min_size: int = 15,
                 device=None, heat_niter: int | None = None) -> np.ndarray:
    """The second half of :func:`compute_masks` on :func:`seed_masks`' labels (modified): masks whose flow
    error exceeds ``flow_threshold`` dropped (their own flows diffused ``heat_niter`` steps; None: cellpose's
    rule from these labels), then holes filled and masks under ``min_size`` dropped, renumbered.
    ``flows (3, Y, X)`` (or (2, Y, X): dY, dX); returns (Y, X) int32 labels."""
    from cpsnake.engine import dynamics

    if labels.size == 0 or labels.max() == 0:
        return labels
    if flow_threshold is not None and flow_threshold > 0:
        dP = np.asarray(flows)[:2].astype(np.float32, copy=False)
        labels = dynamics.remove_bad_flow_masks(labels, dP, threshold=flow_threshold, device=device, niter=heat_niter)
    return dynamics.fill_holes_and_remove_small_masks(labels, min_size=int(min_size))


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the reconstruction options (shared by ``cpsnake reconstruct`` and ``cpsnake segment``)."""
    from cpsnake.bounds import option

    p.add_argument("--cellprob-threshold", type=option("--cellprob-threshold"), default=0.0,
                   help="cell probability logit threshold (0.0)")
    p.add_argument("--flow-threshold", type=option("--flow-threshold"), default=0.4,
                   help="max flow error of a mask; 0 = no check (0.4)")
    p.add_argument("--niter", type=option("--niter"), default=None,
                   help="flow-following iterations (200, or 200*D/30 with --diameter)")
    p.add_argument("--min-size", type=option("--min-size"), default=15,
                   help="smallest mask in pixels; -1 keeps all (15)")
    p.add_argument("--max-size-fraction", type=option("--max-size-fraction"), default=0.4,
                   help="drop masks above this image fraction (0.4)")


def resolve_device(name: str | None):
    """Where reconstruction runs: a CUDA device through torch, or None for the CPU path.

    ``auto`` takes CUDA when there is one; ``cpu`` and ``mps`` (no float64 there) take the CPU path;
    ``cuda`` / ``cuda:N`` must exist.
    """
    if name in (None, "cpu", "mps"):
        return None
    import torch

    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CpsnakeError(f"--device {name}: unknown device; expected auto, cpu or cuda[:N]") from None
    if dev.type != "cuda":
        return None
    if not torch.cuda.is_available():
        raise CpsnakeError(f"--device {name}: found no CUDA device; use --device auto or cpu")
    return dev


def stack_options(args: argparse.Namespace) -> dict:
    """The stack keywords of :func:`reconstruct_file` from parsed options (see :func:`cpsnake.stacks.stack.options`)."""
    from cpsnake.stacks import stack

    sopts = stack.options(args)
    return {"stitch_threshold": sopts["stitch_threshold"] if sopts["mode"] == "stitch" else 0.0,
            "track": sopts["track"], "track_threshold": sopts["track_threshold"],
            "flow3d_threshold": sopts["flow3d_threshold"]}


def check_options(args: argparse.Namespace) -> None:
    """Each reconstruction option within its bound (:mod:`cpsnake.bounds`); needs no torch."""
    from cpsnake.bounds import check

    for name in ("--cellprob-threshold", "--flow-threshold", "--niter", "--min-size", "--max-size-fraction"):
        check(name, getattr(args, name[2:].replace("-", "_")))


def options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`reconstruct_file` from parsed options (``niter`` None when not given: it then
    follows the network's scale; ``device`` from ``args.device`` where the parser has one, see
    :func:`resolve_device`: torch is imported for ``auto`` and ``cuda``, so call :func:`check_options` first)."""
    check_options(args)
    return dict(
        cellprob_threshold=args.cellprob_threshold,
        flow_threshold=args.flow_threshold,
        niter=args.niter,
        min_size=args.min_size,
        max_size_fraction=args.max_size_fraction,
        device=resolve_device(getattr(args, "device", None)),
    )


@guard("reconstruct")
def main(argv: list[str] | None = None) -> int:
    """``cpsnake reconstruct FLOWS.tif LABELS.tif [options]``."""
    ap = argparse.ArgumentParser(prog="cpsnake reconstruct", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("flows", help="flows TIFF (3, Y, X) = dY, dX, cellprob from `cpsnake infer`")
    ap.add_argument("labels", help="output label TIFF")
    add_options(ap)
    from cpsnake.bounds import option

    ap.add_argument("--diameter", type=option("reconstruct --diameter"), default=None,
                    help="cell diameter given to `cpsnake infer` (sets niter for flows that do not record their scale)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if there is one, else the CPU path), cpu, cuda or cuda:N")
    from cpsnake.io import limits
    from cpsnake.stacks import stack

    stack.add_options(ap.add_argument_group("stacks (see cpsnake.stacks.stack)"), network=False)
    limits.add_option(ap)
    args = ap.parse_args(argv)
    reconstruct_file(args.flows, args.labels, max_pixels=args.max_pixels, diameter=args.diameter, **options(args),
                     **stack_options(args))
    return 0


def reconstruct_file(flows_path, labels_path, *, max_pixels: int | None = None, diameter: float | None = None,
                     niter: int | None = None, stitch_threshold: float = 0.0, track: bool = False,
                     track_threshold: float = 0.25, flow3d_threshold: float = 0.0, where_fit: bool = False,
                     **opts) -> int:
    """Read a flows TIFF, reconstruct, write the label TIFF (the flows' calibration); return the number of objects.

    Without ``niter`` the flows are followed ``int(200 / scale)`` steps, ``scale`` the network's resize
    factor that ``cpsnake infer`` records in the flows file (``diam_mean / diameter``), else the one of
    ``diameter`` for Cellpose-SAM (:func:`niter_for_diameter`). ``opts``: the other keyword arguments
    of :func:`compute_masks`. Stacks: see the module docstring. ``where_fit`` (the workflow, whose config applies
    to every image): ``stitch_threshold`` is used for Z stacks only and ``track`` for time series only, instead
    of an error elsewhere.
    """
    from cpsnake.io.images import read_flows, write_labels

    flows, meta = read_flows(flows_path, max_pixels=max_pixels)  # real, finite, within the limit
    if niter is None:
        scale = meta.get("network_scale")
        niter = int(200 / scale) if scale else niter_for_diameter(diameter)
    kind, axes = meta["kind"], meta["stack_axes"]
    if where_fit:
        stitch_threshold = stitch_threshold if kind == "planes" and axes == "Z" else 0.0
        track = track and kind == "planes" and axes == "T"
    if kind == "2d" and (stitch_threshold > 0 or track):
        raise CpsnakeError(f"{flows_path}: found the flows of a 2-D image given {'--track' if track else '--stitch-threshold'}; "
                           "expected a stack's flows; leave the option out for 2-D images")
    if kind == "3d":
        from cpsnake.engine.reconstruct3d import compute_masks_3d

        opts.pop("device", None)
        opts.pop("flow_threshold", None)  # cellpose never checks flow errors in 3-D: --flow3d-threshold does
        labels = compute_masks_3d(flows, niter=niter, flow_threshold=flow3d_threshold, **opts)
    elif kind == "planes":
        labels = _planes(flows_path, flows, axes, niter, stitch_threshold, track, track_threshold, opts)
    else:
        labels = compute_masks(flows, niter=niter, **opts)
    write_labels(labels_path, labels, pixel_size=meta["pixel_size"], unit=meta["unit"], stack_axes=axes,
                    z_step=meta.get("z_step"), frame_interval=meta.get("frame_interval"))
    return int(labels.max()) if kind == "2d" else int(np.unique(labels[labels > 0]).size)


def _planes(flows_path, flows, axes: str, niter: int, stitch_threshold: float, track: bool, track_threshold: float,
            opts: dict) -> np.ndarray:
    """Labels (S, Y, X) from per-plane flows (S, 3, Y, X): stitched (Z), tracked (T), or numbered plane after plane."""
    if stitch_threshold > 0 and axes != "Z":
        raise CpsnakeError(f"{flows_path}: found the flows of a time series given --stitch-threshold; expected a Z stack; "
                           "use --track to link frames")
    if track and axes != "T":
        raise CpsnakeError(f"{flows_path}: found the flows of a Z stack given --track; expected a time series (T); "
                           "use --stitch-threshold to link Z planes")
    from cpsnake.stacks.stack import reconstruct_planes

    return reconstruct_planes(flows, stitch_threshold=stitch_threshold, track=track, track_threshold=track_threshold,
                              niter=niter, **opts)


if __name__ == "__main__":
    raise SystemExit(main())
