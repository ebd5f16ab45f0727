"""The stack options shared by the steps, ``cpsnake segment`` and ``cpsnake batch``: how a Z stack or a time
series is segmented (the modes themselves: :mod:`cpsnake.stacks.stack`).

- the network's (``cpsnake infer``): ``--do-3d``, ``--anisotropy``, ``--flow3d-smooth``;
- the masks' (``cpsnake reconstruct``): ``--stitch-threshold``, ``--flow3d-threshold``, ``--track``,
  ``--track-threshold``.

:func:`add_options` adds them to a parser (or an argument group); :func:`options` reads them back, each value
within its bound (:mod:`cpsnake.bounds`), as the keywords of :func:`cpsnake.stacks.stack.segment_stack` plus
``mode``.
"""

from __future__ import annotations

import argparse

from cpsnake.bounds import check, option
from cpsnake.errors import CpsnakeError

__all__ = ["add_options", "options"]


def add_options(p: argparse.ArgumentParser, *, network: bool = True, masks: bool = True) -> None:
    """Add the stack options: ``network`` (``cpsnake infer``): --do-3d, --anisotropy, --flow3d-smooth; ``masks``
    (``cpsnake reconstruct``): --stitch-threshold, --flow3d-threshold, --track, --track-threshold."""
    if network:
        p.add_argument(
            "--do-3d",
            action="store_true",
            help="Z stacks: run the network on YX, ZX and ZY planes and follow the flows in 3-D (cellpose do_3D)",
        )
        p.add_argument(
            "--anisotropy",
            type=option("--anisotropy"),
            default=None,
            help="--do-3d: Z step / pixel size; Z is rescaled by it for the network (default 1)",
        )
        p.add_argument(
            "--flow3d-smooth",
            type=option("--flow3d-smooth"),
            nargs="+",
            default=[0.0],
            metavar="SIGMA",
            help="--do-3d: Gaussian sigma in voxels for the 3-D flows, one value or Z Y X (default 0 = none)",
        )
    if masks:
        p.add_argument(
            "--stitch-threshold",
            type=option("--stitch-threshold"),
            default=0.0,
            help="Z stacks: segment each plane in 2-D and link planes whose objects overlap by this IoU (0 = off)",
        )
        p.add_argument(
            "--flow3d-threshold",
            type=option("--flow3d-threshold"),
            default=0.0,
            help="3-D flows: drop objects whose mean squared flow error exceeds this (default 0 = no check, "
            "as cellpose)",
        )
        p.add_argument(
            "--track",
            action="store_true",
            help="time series: link each frame's objects to the previous frame's by IoU, so a cell keeps its id",
        )
        p.add_argument(
            "--track-threshold",
            type=option("--track-threshold"),
            default=0.25,
            help="--track: smallest IoU that links two frames' objects (default 0.25)",
        )


def options(args: argparse.Namespace) -> dict:
    """The stack options (those the parser has) as keywords of :func:`cpsnake.stacks.stack.segment_stack` plus
    ``mode``, ``track`` and ``track_threshold``; bad values are one CpsnakeError line each (the bounds:
    :mod:`cpsnake.bounds`)."""
    do_3d = getattr(args, "do_3d", False)
    stitch = check("--stitch-threshold", getattr(args, "stitch_threshold", 0.0))
    anisotropy = check("--anisotropy", getattr(args, "anisotropy", None))
    smooth = [check("--flow3d-smooth", v) for v in getattr(args, "flow3d_smooth", [0.0])]
    track_threshold = check("--track-threshold", getattr(args, "track_threshold", 0.25))
    check("--flow3d-threshold", getattr(args, "flow3d_threshold", 0.0))
    if do_3d and stitch > 0:
        raise CpsnakeError(
            "--do-3d and --stitch-threshold both given; expected one of them: --do-3d for 3-D flows, "
            "--stitch-threshold to link 2-D planes"
        )
    if len(smooth) not in (1, 3):
        raise CpsnakeError(
            f"--flow3d-smooth {' '.join(map(str, smooth))}: found {len(smooth)} values; expected one "
            "sigma or three (Z Y X), each >= 0 voxels"
        )
    mode = "3d" if do_3d else "stitch" if stitch > 0 else "planes"
    return {
        "mode": mode,
        "stitch_threshold": stitch or 0.25,
        "anisotropy": anisotropy,
        "flow3d_smooth": smooth[0] if len(smooth) == 1 else list(smooth),
        "flow3d_threshold": getattr(args, "flow3d_threshold", 0.0),
        "track": getattr(args, "track", False),
        "track_threshold": track_threshold,
    }
