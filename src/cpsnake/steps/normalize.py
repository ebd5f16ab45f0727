"""``cpsnake normalize IMAGE OUT.tif``: scale each channel of an image for the network.

Usage::

    cpsnake normalize IMAGE OUT.tif [--channels 0,2] [--percentiles 1 99] [--low-high LO HI]
                                    [--invert] [--tile-norm N] [--norm3d]

IMAGE is a 2-D TIFF / OME-TIFF, PNG or JPEG (grey, RGB or multi-channel; 8-bit, 16-bit, 32-bit or
float). OUT.tif is float32 ``(C, Y, X)`` (ImageJ TIFF, axes CYX, the input's pixel size and unit) with
C <= 3 channels in the order given by ``--channels``. Beside it, OUT.json records the values used:
per-channel low/high, percentiles, source file and its shape/dtype/axes, channels, invert, tile size,
cpsnake version. How each channel is scaled (percentiles, arithmetic, tiles, flat channels) is
:mod:`cpsnake.engine.normalize`; this module holds the command: its options, the files read and written.

Limits (:mod:`cpsnake.io.limits`): ``--max-pixels N`` bounds the samples IMAGE may decode to (checked
from its header before decoding), and an image thinner than 8 pixels along Y or X is refused.

- ``--channels I,J,K``: the 0-based channels for the network, in this order (at most 3).
- ``--percentiles LOW HIGH``: the percentiles mapped to 0 and 1 (default 1 99).
- ``--low-high LO HI``: fixed values instead of percentiles (same for every channel).
- ``--invert``: 1 - x after scaling, for dark objects on a bright background.
- ``--tile-norm N``: percentiles per N x N tile (see :mod:`cpsnake.engine.normalize`).

Stacks: a Z stack or a time series of 2-D frames (TIFF) is written as float32 ZCYX / TCYX, normalized plane
by plane, or with ``--norm3d`` (Z stacks) as a whole (:func:`cpsnake.stacks.stack.normalize_stack`); a time
series of Z stacks is refused (``cpsnake segment`` takes it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cpsnake import __version__
from cpsnake.bounds import check_pair, option, parse_channels
from cpsnake.engine.normalize import normalize, select_channels
from cpsnake.errors import CpsnakeError, guard
from cpsnake.io import limits
from cpsnake.io.inputs import read_image
from cpsnake.io.outputs import all_or_nothing, atomic_output
from cpsnake.io.tiff import write_tiff
from cpsnake.stacks.stack import normalize_stack

__all__ = ["add_options", "options", "normalize_file", "main"]


def _parse_channels(text: str | None) -> list[int] | None:
    """``--channels`` through the one channel parser (:func:`cpsnake.bounds.parse_channels`); blank text stays an
    empty list, which the normalization refuses with its own message."""
    if text is None:
        return None
    try:
        return parse_channels(text) or []
    except ValueError:
        raise CpsnakeError(
            f"--channels {text!r}, expected 0-based channel numbers separated by commas, e.g. 0,2"
        ) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpsnake normalize",
        description="Percentile-normalize an image's channels (low -> 0, high -> 1) for the network; "
        "writes OUT (float32 CYX TIFF) and OUT with suffix .json (the values used).",
    )
    p.add_argument("image", help="input image: TIFF / OME-TIFF, PNG or JPEG, 2-D (grey, RGB or multi-channel)")
    p.add_argument("out", help="output TIFF (.tif or .tiff); the record goes to the same name with .json")
    add_options(p)
    p.add_argument(
        "--norm3d",
        action="store_true",
        help="Z stacks: each channel's percentiles over all planes at once (what --do-3d and "
        "--stitch-threshold expect; cellpose's norm3D), instead of plane by plane",
    )
    limits.add_option(p)
    return p


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the normalization options (shared by ``cpsnake normalize`` and ``cpsnake segment``)."""
    p.add_argument(
        "--channels", metavar="I,J,K", help="0-based channels to use, in this order (at most 3; default: all, if <= 3)"
    )
    p.add_argument(
        "--percentiles",
        nargs=2,
        type=option("--percentiles"),
        metavar=("LOW", "HIGH"),
        help="percentiles mapped to 0 and 1 (default 1 99)",
    )
    p.add_argument(
        "--low-high",
        nargs=2,
        type=option("--low-high"),
        metavar=("LO", "HI"),
        help="fixed values mapped to 0 and 1, instead of percentiles",
    )
    p.add_argument("--invert", action="store_true", help="1 - x after scaling (dark objects on a bright background)")
    p.add_argument(
        "--tile-norm",
        type=option("--tile-norm"),
        default=0,
        metavar="N",
        help="percentiles per N x N pixel tile, N >= 64 (0: whole image)",
    )


def options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`cpsnake.engine.normalize.normalize` (plus ``channels``) from parsed options; one
    error if they clash (each value is already within its bound, :mod:`cpsnake.bounds`)."""
    check_pair("--percentiles", args.percentiles)
    check_pair("--low-high", args.low_high)
    if args.low_high is not None and (args.percentiles is not None or args.tile_norm):
        raise CpsnakeError("--low-high replaces percentiles; expected it without --percentiles and --tile-norm")
    return dict(
        channels=_parse_channels(args.channels),
        percentiles=tuple(args.percentiles) if args.percentiles else (1.0, 99.0),
        low_high=args.low_high,
        invert=args.invert,
        tile_size=args.tile_norm,
    )


def normalize_file(
    src: str | Path,
    out_path: str | Path,
    *,
    channels: list[int] | None = None,
    max_pixels: int | None = None,
    pixel_size: float | None = None,
    norm3d: bool = False,
    **opts,
) -> dict:
    """Read an image, normalize it, write ``out_path`` (float32 CYX TIFF) and return the record (what OUT.json holds).

    A Z stack or a time series of 2-D frames is written as float32 ZCYX / TCYX (with its z step / frame
    interval), normalized plane by plane, or with ``norm3d`` (Z stacks; frames stay plane by plane) as a whole
    (each channel's percentiles over all planes, cellpose's ``norm3D``: what ``--do-3d`` and
    ``--stitch-threshold`` expect); see :func:`cpsnake.stacks.stack.normalize_stack`. A time series of Z stacks
    is refused (``cpsnake segment`` takes it).

    Parameters
    ----------
    src : a 2-D image file (TIFF / OME-TIFF, PNG or JPEG) or a stack (TIFF)
    out_path : the output TIFF; ``out_path`` with suffix ``.json`` gets the record
    channels : 0-based channels for the network (None: all, at most 3)
    max_pixels : see :mod:`cpsnake.io.limits`
    pixel_size : square pixel size replacing the file's calibration (in the file's unit, else micron)
    opts : keyword arguments of :func:`cpsnake.engine.normalize.normalize`
    """
    src, out_path = Path(src), Path(out_path)
    img, meta = read_image(src, max_pixels=max_pixels)
    stack_axes = meta["stack_axes"]
    if stack_axes == "TZ":
        raise CpsnakeError(
            f"{src}: found a time series of Z stacks (axes {meta['axes']!r}, shape {meta['shape']}); "
            "expected a 2-D image, a Z stack or a time series of 2-D frames for the workflow's steps; "
            "segment it with `cpsnake segment` (which takes T x Z hyperstacks), or save one file per time point"
        )
    limits.check_min_side(src, img.shape)
    try:
        if stack_axes:
            data, record = normalize_stack(img, per_plane=not (norm3d and stack_axes == "Z"), channels=channels, **opts)
        else:
            data, record = normalize(select_channels(img, channels), **opts)
    except CpsnakeError as exc:
        raise CpsnakeError(f"{src}: {exc}") from None
    used = channels if channels is not None else list(range(img.shape[-3]))
    for rec in record.get("planes", [record]):
        rec["per_channel"] = [{"channel": c, **entry} for c, entry in zip(used, rec["per_channel"])]
    cal, unit = meta["pixel_size"], meta["unit"]
    if pixel_size is not None:  # given by the user (a sample sheet): replaces the file's calibration
        cal, unit = (float(pixel_size), float(pixel_size)), unit if unit not in (None, "pixel", "pixels") else "micron"
    doc = {
        "cpsnake_version": __version__,
        "step": "normalize",
        "source": {
            "path": str(src),
            "format": meta["format"],
            "shape": list(meta["shape"]),
            "dtype": meta["dtype"],
            "axes": meta["axes"],
            "dropped_alpha": meta["dropped_alpha"],
        },
        "pixel_size": list(cal) if cal else None,
        "unit": unit,
        "pixel_size_given": pixel_size is not None,
        "calibration_problem": meta["calibration_problem"],
        "channels": used,
        **record,
        "output": {"path": str(out_path), "shape": list(data.shape), "dtype": "float32", "axes": stack_axes + "CYX"},
    }
    extra = {
        k: v
        for k, v in (
            ("spacing", meta["z_step"] if "Z" in stack_axes else None),
            ("finterval", meta["frame_interval"] if "T" in stack_axes else None),
        )
        if v
    }
    with all_or_nothing(), atomic_output(out_path.with_suffix(".json")) as tmp_json:  # both files, or neither
        tmp_json.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        write_tiff(out_path, data, axes=stack_axes + "CYX", pixel_size=cal, unit=unit, metadata=extra or None)
    return doc


@guard("normalize")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".tif", ".tiff"):
        raise CpsnakeError(f"{out_path}: output name ends in {out_path.suffix or 'nothing'!r}, expected .tif or .tiff")
    opts = options(args)
    normalize_file(args.image, out_path, max_pixels=args.max_pixels, norm3d=args.norm3d, **opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
