"""The bounds of every numeric option, in one table, and the checks that apply them before any work starts.

Every option that scales time or memory, and every other numeric option, has a row in :data:`BOUNDS`:
its kind (whole number or real number), its lowest and highest value, the few values outside that range
that mean something (``0`` = off), and why the bound is what it is. A value outside its row -- and
any NaN or infinite value, which ``float()`` would accept -- is refused while the command line is
parsed (the ``type=`` callables of :func:`option`), before any file is read, before torch is imported
and before the model loads, with one line that names the option as typed::

    cpsnake segment: error: --flow3d-smooth 1e9: found 1e9; expected a Gaussian sigma in voxels: a finite number
    from 0 to 50 (the filter spans 8 x sigma + 1 voxels per axis, so its time grows with sigma, ...); give a value
    in that range

(one line on the terminal). A LOW HIGH pair (``--percentiles``, ``--low-high``, ``--diam-range``) must also be in
order (:func:`check_pair`).

The workflow applies the same rows to its config when it builds the DAG (:func:`check_config`: the
line names the config key, ``config blocks.size=1: ...``), and refuses a run of more than
:data:`MAX_JOBS` jobs (:func:`check_jobs`). Bounds that depend on the image (the stack resized by
``--anisotropy`` against ``--max-pixels``, :func:`cpsnake.io.limits.check_stack_3d`) are checked from the file's header,
still before the model loads; ``--block-halo`` against the block (:func:`check_halo`) once both are known.

The bounds (``[a, b]`` inclusive, ``(a, b]`` excluding ``a``):

======================  =========================  ===========================================================
option                  allowed                    why
======================  =========================  ===========================================================
--percentiles LOW HIGH  [0, 100] each, LOW < HIGH  percentiles
--low-high LO HI        finite, LO < HI            raw intensities: any finite value
--tile-norm N           0, or [64, 1,000,000] px   one percentile call per tile and a nearest-tile fill whose
                                                   cost is quadratic in the number of tiles (1.2 x side / N per
                                                   axis): 64 px keeps a 10,000 x 10,000 image under 36,000
                                                   tiles; above the image's side it is one tile
--diameter D            [1, 1500] px, or auto      the image is resized by 30 / D before the network (D = 1:
                                                   900 x the pixels) and the flows are followed 200 x D / 30
                                                   steps (1500 px: 10,000 steps, 50 x cellpose's default)
--batch-size N          [1, 256] tiles, or auto    a network batch holds N tiles' activations (ViT-L: about
                                                   100 MB each): 256 tiles is about 25 GB
--tile-overlap F        [0.05, 0.5]                the tile count grows as (1 + 2 F)^2
--cellprob-threshold T  [-1000, 1000]              a logit: beyond +-1000 every pixel or none passes
--flow-threshold T      [0, 1000]                  a mean squared flow error; 0 = no check
--niter N               [1, 20,000]                each step moves every foreground pixel: 100 x cellpose's
                                                   default of 200 (the U-Net's 200 x D / 17 at D = 1500)
--min-size N            [-1, 1,000,000,000] px     -1 or 0 keep every mask; above any image's size every mask
                                                   would be dropped
--max-size-fraction F   (0, 1]                     a fraction of the image
--anisotropy A          (0, 100]                   Z is resized by A before the network; planes further apart
                                                   than 100 pixel sizes are unrelated images (segment them in
                                                   2-D); the resized stack must also fit --max-pixels
--flow3d-smooth S       [0, 50] voxels (1 or 3)    scipy's kernel spans 8 S + 1 voxels per axis, so time grows
                                                   with S; wider than a cell it merges neighbours' flows
                                                   (cellpose suggests 1 to 2)
--stitch-threshold T    [0, 1]                     an IoU; 0 = off
--flow3d-threshold T    [0, 1000]                  as --flow-threshold; 0 = no check
--track-threshold T     (0, 1]                     an IoU
--block-size N          0, or [448, 16,384] px     a block holds at least 2 network tiles (448 px for the
                                                   U-Net's 224 px tiles, 512 for Cellpose-SAM, checked when the
                                                   model loads); a block job asks for about 100 bytes per pixel
                                                   of its read region: 16,384 px is about 30 GB
--block-halo H          [0, 16,384] px, <= block   context around a block: the read region is (block + 2 H)^2;
                                                   more context than the block itself only multiplies the work
--batch-images N        [1, 10,000]                one batch is one job with a fixed runtime request
--batch-pixels N        [1, 10,000,000,000]        as --batch-images (200 x the default of 50,000,000)
--thresholds T...       (0, 1] each                IoU thresholds (cpsnake evaluate)
--max-mb M              (0, 10,000,000]            a pack's size budget in MB (cpsnake train pack)
======================  =========================  ===========================================================

``cpsnake train``: ``--steps`` [1, 10,000,000] (each a forward and backward pass), ``--batch-size``
[1, 256] images per step (each holds its activations and gradients), ``--lr`` (0, 1], ``--weight-decay``
[0, 10], ``--warmup`` and ``--decay`` [0, 10,000,000] steps, ``--layer-drop`` [0, 1], ``--diam-range``
[1, 1500] px each (training images are resized to these diameters: as ``--diameter``),
``--diam-labels`` [1, 1500], ``--log-every`` [1, 10,000,000], ``--val-every``, ``--save-every``
[0, 10,000,000] (they divide the step count; 0 = never, at the end only), ``--val-max`` [1, 10,000,000],
``--min-train-masks`` [0, 1,000,000], ``--workers`` [0, 64] processes, ``--seed`` [0, 2^32 - 1] (numpy's seeds).
``cpsnake train-size``:
``--per-image`` [1, 1000] draws, ``--crop`` [16, 4096] px (the largest side fed to the network),
``--diam-range`` as training's, ``--l2`` [0, 1,000,000], ``--seed``, ``--min-train-masks`` as training's.

The workflow refuses a run of more than :data:`MAX_JOBS` = 10,000 jobs (six per batch, one per block of
an image in blocks, six for the run): 10,000 is SLURM's default ``MaxJobCount``, the most jobs a
controller holds at once, and beyond it each job's fixed cost (submission, Python start, model load:
10 to 30 s) outweighs its work. The fix is fewer, larger batches (config ``batch.images``,
``batch.pixels``), larger blocks (``blocks.size``), or several runs.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

from cpsnake.errors import CpsnakeError

__all__ = [
    "Bound",
    "BOUNDS",
    "CONFIG",
    "MAX_JOBS",
    "AUTO_BLOCK",
    "parse",
    "check",
    "option",
    "check_pair",
    "check_halo",
    "parse_channels",
    "check_config",
    "job_count",
    "check_jobs",
    "number_text",
]

INF = math.inf


class Bound(NamedTuple):
    """One row of :data:`BOUNDS`: ``kind`` int or float; ``lower`` .. ``upper`` inclusive (``lower`` excluded
    with ``open_lower``); ``also``: values accepted outside that range; ``words``: texts accepted as they are
    (``auto``); ``what`` the value is and ``why`` the bound is what it is, for the message."""

    kind: type
    lower: float
    upper: float
    what: str
    why: str
    also: tuple = ()
    words: tuple = ()
    open_lower: bool = False


_DIAMETER = "the image is resized by 30 / D for the network and the flows are followed 200 x D / 30 steps"
_STEPS = "a count of training steps"

# option as typed (``COMMAND --option`` where commands give one name different meanings) -> its bound
BOUNDS: dict[str, Bound] = {
    "--percentiles": Bound(float, 0, 100, "a percentile", "0 = the lowest value, 100 = the highest"),
    "--low-high": Bound(float, -INF, INF, "a raw intensity", "NaN and infinity are no intensity"),
    "--tile-norm": Bound(
        int,
        64,
        1_000_000,
        "a tile side in px",
        "each tile costs a percentile call and the fill of flat tiles grows with the square of "
        "the tile count; 0 normalizes the whole image",
        also=(0,),
    ),
    "--diameter": Bound(float, 1, 1500, "a cell diameter in px", _DIAMETER, words=("auto",)),
    "reconstruct --diameter": Bound(float, 1, 1500, "a cell diameter in px", _DIAMETER),
    "--batch-size": Bound(
        int,
        1,
        256,
        "a number of tiles per network batch",
        "a batch holds every tile's activations, about 100 MB each for ViT-L",
        words=("auto",),
    ),
    "--tile-overlap": Bound(
        float,
        0.05,
        0.5,
        "an overlap fraction of the tiles",
        "the number of tiles grows as (1 + 2 x overlap)^2; the default is 0.1",
    ),
    "--cellprob-threshold": Bound(
        float, -1000, 1000, "a cell probability logit", "beyond +-1000 every pixel or none passes; the default is 0"
    ),
    "--flow-threshold": Bound(
        float,
        0,
        1000,
        "a largest mean squared flow error",
        "0 turns the check off; above 1000 nothing is ever dropped; the default is 0.4",
    ),
    "--niter": Bound(
        int,
        1,
        20_000,
        "a number of flow-following steps",
        "each step moves every foreground pixel; 20,000 is 100 x cellpose's default of 200",
    ),
    "--min-size": Bound(
        int,
        -1,
        1_000_000_000,
        "a smallest mask in pixels",
        "-1 or 0 keep every mask; larger than any image every mask is dropped",
    ),
    "--max-size-fraction": Bound(float, 0, 1, "a fraction of the image", "masks above it are dropped", open_lower=True),
    "--anisotropy": Bound(
        float,
        0,
        100,
        "a Z step / pixel size ratio",
        "Z is resized by it before the network; planes further apart than 100 pixel sizes are "
        "unrelated images: segment them in 2-D, without --do-3d",
        open_lower=True,
    ),
    "--flow3d-smooth": Bound(
        float,
        0,
        50,
        "a Gaussian sigma in voxels",
        "the filter spans 8 x sigma + 1 voxels per axis, so its time grows with sigma, and a "
        "sigma wider than a cell merges neighbouring cells' flows; cellpose suggests 1 to 2",
    ),
    "--stitch-threshold": Bound(float, 0, 1, "an IoU", "0 turns stitching off"),
    "--flow3d-threshold": Bound(
        float,
        0,
        1000,
        "a largest mean squared 3-D flow error",
        "0 turns the check off; above 1000 nothing is ever dropped",
    ),
    "--track-threshold": Bound(
        float, 0, 1, "an IoU", "the smallest overlap that links two frames' objects", open_lower=True
    ),
    "--block-size": Bound(
        int,
        448,
        16_384,
        "a block side in px",
        "a block holds at least 2 network tiles, 448 px for the U-Net and 512 px for "
        "Cellpose-SAM, and a block job asks for about 100 bytes per pixel of its read region, "
        "about 30 GB at 16,384 px; 0 segments every image whole",
        also=(0,),
    ),
    "--block-halo": Bound(
        int,
        0,
        16_384,
        "a context around each block in px",
        "the read region is (block + 2 x halo)^2 pixels; it is at most the block size",
    ),
    "--batch-images": Bound(
        int, 1, 10_000, "a number of images per batch", "one batch is one job, with a fixed runtime request"
    ),
    "--batch-pixels": Bound(
        int,
        1,
        10_000_000_000,
        "a number of pixels per batch",
        "one batch is one job, with a fixed runtime request; 200 x the default",
    ),
    "--thresholds": Bound(float, 0, 1, "an IoU threshold", "an IoU lies in (0, 1]", open_lower=True),
    "--max-mb": Bound(float, 0, 10_000_000, "a size budget in MB", "the pack's size", open_lower=True),
    # cpsnake train
    "train --steps": Bound(int, 1, 10_000_000, _STEPS, "each step is a forward and backward pass of a batch"),
    "train --batch-size": Bound(
        int, 1, 256, "a number of images per step", "each image holds its activations and gradients"
    ),
    "train --lr": Bound(float, 0, 1, "a learning rate", "AdamW diverges far below 1", open_lower=True),
    "train --weight-decay": Bound(float, 0, 10, "an AdamW weight decay", "the default is 0.1"),
    "train --warmup": Bound(int, 0, 10_000_000, _STEPS, "as --steps"),
    "train --decay": Bound(int, 0, 10_000_000, _STEPS, "as --steps"),
    "train --layer-drop": Bound(float, 0, 1, "a stochastic depth probability", "a probability"),
    "train --diam-range": Bound(
        float, 1, 1500, "a cell diameter in px", "training images are resized to it, as for --diameter"
    ),
    "train --diam-labels": Bound(float, 1, 1500, "a cell diameter in px", "as --diameter"),
    "train --val-every": Bound(int, 0, 10_000_000, _STEPS, "it divides the step count; 0 = never"),
    "train --save-every": Bound(int, 0, 10_000_000, _STEPS, "it divides the step count; 0 = at the end only"),
    "train --log-every": Bound(int, 1, 10_000_000, _STEPS, "it divides the step count"),
    "train --val-max": Bound(int, 1, 10_000_000, "a number of validation images", "a count"),
    "train --min-train-masks": Bound(int, 0, 1_000_000, "a number of objects", "a count"),
    "train --workers": Bound(int, 0, 64, "a number of processes", "each process holds a copy of the data loader"),
    "train --seed": Bound(int, 0, 2**32 - 1, "a random seed", "numpy takes seeds from 0 to 2^32 - 1"),
    # cpsnake train-size
    "train-size --per-image": Bound(int, 1, 1000, "a number of draws per image", "each draw runs the network"),
    "train-size --crop": Bound(int, 16, 4096, "a largest side in px", "the side fed to the network at once"),
    "train-size --diam-range": Bound(float, 1, 1500, "a cell diameter in px", "as --diameter"),
    "train-size --l2": Bound(float, 0, 1_000_000, "a ridge regularisation", "the default is 1"),
    "train-size --seed": Bound(int, 0, 2**32 - 1, "a random seed", "numpy takes seeds from 0 to 2^32 - 1"),
    "train-size --min-train-masks": Bound(int, 0, 1_000_000, "a number of objects", "a count"),
}

# workflow config key -> the option it becomes (cpsnake.bounds.check_config)
CONFIG: dict[str, str] = {
    "diameter": "--diameter",
    "normalize.percentiles": "--percentiles",
    "normalize.low_high": "--low-high",
    "normalize.tile_norm": "--tile-norm",
    "inference.tile_overlap": "--tile-overlap",
    "reconstruct.cellprob_threshold": "--cellprob-threshold",
    "reconstruct.flow_threshold": "--flow-threshold",
    "reconstruct.niter": "--niter",
    "reconstruct.min_size": "--min-size",
    "reconstruct.max_size_fraction": "--max-size-fraction",
    "stacks.anisotropy": "--anisotropy",
    "stacks.flow3d_smooth": "--flow3d-smooth",
    "stacks.stitch_threshold": "--stitch-threshold",
    "stacks.flow3d_threshold": "--flow3d-threshold",
    "stacks.track_threshold": "--track-threshold",
    "blocks.size": "--block-size",
    "blocks.halo": "--block-halo",
    "batch.images": "--batch-images",
    "batch.pixels": "--batch-pixels",
}

MAX_JOBS = 10_000  # SLURM's default MaxJobCount (see the module docstring)
# the block side of an image segmented in blocks when --block-size is not given (the automatic rule,
# cpsnake.engine.blocks.auto_block_size); --block-halo is checked against it (check_halo)
AUTO_BLOCK = 2048
JOBS_PER_BATCH = 6  # normalize, infer, reconstruct, rois, measure, overlay
JOBS_PER_RUN = 6  # samples, weights, aggregate, provenance, check, all


def number_text(v: float) -> str:
    """A bound as messages show it: ``1500``, ``0.05``, ``10,000`` (an integral float as a whole number)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return f"{v:,}" if isinstance(v, int) and abs(v) >= 10_000 else f"{v:g}" if isinstance(v, float) else str(v)


def _expected(b: Bound) -> str:
    """``a tile side in px from 64 to 1,000,000, or 0`` for the message."""
    if b.lower == -INF and b.upper == INF:
        rng = f"{b.what}: any finite number"
    else:
        kind = "a whole number" if b.kind is int else "a finite number"
        if b.open_lower:
            rng = f"{b.what}: {kind} above {number_text(b.lower)} and at most {number_text(b.upper)}"
        else:
            rng = f"{b.what}: {kind} from {number_text(b.lower)} to {number_text(b.upper)}"
    extra = [number_text(v) for v in b.also] + list(b.words)
    return rng + (f", or {' or '.join(extra)}" if extra else "")


def _plain(v) -> str:
    """A value as the user wrote it: ``1000000``, ``1e+09``, ``nan``."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def _refuse(shown: str, found: str, b: Bound) -> CpsnakeError:
    return CpsnakeError(f"{shown}: found {found}; expected {_expected(b)} ({b.why}); give a value in that range")


def _flag(name: str) -> str:
    """The option as the user types it (``train --steps`` -> ``--steps``)."""
    return name.split()[-1]


def _in_range(value: float, b: Bound) -> bool:
    if value in b.also:
        return True
    if not math.isfinite(value):
        return False
    above = value > b.lower if b.open_lower else value >= b.lower
    return above and value <= b.upper


def parse(name: str, text: str, *, shown: str | None = None):
    """``text`` as the value of option ``name`` (a key of :data:`BOUNDS`), checked; a CpsnakeError naming
    ``shown`` (default ``OPTION TEXT``) when it is not a number of its kind, not finite, or out of bounds."""
    b = BOUNDS[name]
    text = str(text).strip()
    shown = shown or f"{_flag(name)} {text}"
    if text in b.words:
        return text
    try:
        value = b.kind(text)
    except (ValueError, OverflowError):
        raise _refuse(shown, repr(text), b) from None
    if not _in_range(value, b):
        raise _refuse(shown, text, b)
    return value


def check(name: str, value, *, shown: str | None = None):
    """``value`` (a number, a word of the row, or None = not given) checked against option ``name``'s bound;
    returns it (an integral float as int for whole-number options). For config values (:func:`check_config`)."""
    if value is None:
        return None
    b = BOUNDS[name]
    shown = shown or f"{_flag(name)} {value}"
    if isinstance(value, str):
        return parse(name, value, shown=shown)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(shown, repr(value), b)
    if b.kind is int:
        if not (math.isfinite(value) and float(value).is_integer()):
            raise _refuse(shown, _plain(value), b)
        value = int(value)
    if not _in_range(float(value), b):
        raise _refuse(shown, _plain(value), b)
    return value


def option(name: str) -> Callable[[str], object]:
    """The argparse ``type=`` of option ``name``: :func:`parse`. Its CpsnakeError is not an argparse error, so
    it reaches the command's :func:`cpsnake.errors.guard`: one line, exit code 1."""

    def convert(text: str):
        return parse(name, text)

    convert.__name__ = _flag(name).lstrip("-").replace("-", "_")
    convert.bound = name  # the row it applies (tests list every bounded option through it)
    return convert


def check_pair(name: str, pair: Sequence[float] | None, *, shown: str | None = None) -> None:
    """A LOW HIGH pair (``--percentiles``, ``--low-high``, ``--diam-range``) must have LOW < HIGH."""
    if pair is not None and not pair[0] < pair[1]:
        shown = shown or f"{_flag(name)} {' '.join(_plain(v) for v in pair)}"
        raise CpsnakeError(
            f"{shown}: found LOW {_plain(pair[0])} >= HIGH {_plain(pair[1])}; expected LOW < HIGH; "
            "give the lower value first"
        )


def check_halo(
    halo: int | None, block: int | None, *, shown: str | None = None, block_name: str = "--block-size"
) -> None:
    """``--block-halo`` at most the block side (``block`` None: the automatic block,
    :data:`AUTO_BLOCK`; 0: no blocks, any halo is unused)."""
    if halo is None or block == 0:
        return
    side = AUTO_BLOCK if block is None else int(block)
    if halo > side:
        which = f"{block_name} {side}" if block is not None else f"the automatic block of {side} px"
        raise CpsnakeError(
            f"{shown or f'--block-halo {halo}'}: found a halo of {halo} px around blocks of {side} px; "
            f"expected at most the block side ({which}): the read region is (block + 2 x halo)^2 px; "
            "give a smaller halo, or larger blocks"
        )


def parse_channels(value) -> list[int] | None:
    """The 0-based channel numbers ``value`` names, in its order: the one parser of a channel list, for the
    command line, the workflow's config and a sample sheet's cell.

    ``None`` is None (every channel); a whole number is a list of one; a list or tuple is its items; text is
    split at commas and spaces, with or without brackets (``0,2``, ``0, 2``, ``0 2``, ``[0, 2]``; empty items
    skipped), and blank text (or ``[]``) is None. A ValueError when an item is not a whole number (a bool,
    a float, a word). Nothing more is checked here: how many channels, whether one repeats, whether the image
    has them is for each caller to say, in its own message.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return [value]
    else:
        text = str(value).strip().strip("[]")
        if not text:
            return None
        items = [t for t in text.replace(" ", ",").split(",") if t != ""]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(int(item))  # ValueError for a word
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        else:
            raise ValueError(f"channel {item!r}: expected a whole number")
    return out


def _get(config: Mapping, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_config(config: Mapping) -> None:
    """Every workflow config value of :data:`CONFIG` against its option's bound; a CpsnakeError
    ``config KEY=VALUE: found ...`` naming the first bad key. Also LOW < HIGH pairs and halo <= block."""
    for key, name in CONFIG.items():
        value = _get(config, key)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            check(name, v, shown=f"config {key}={_plain(v)}")
        if (
            key in ("normalize.percentiles", "normalize.low_high")
            and isinstance(value, (list, tuple))
            and len(value) == 2
        ):
            check_pair(name, value, shown=f"config {key}={list(value)}")
    halo, size = _get(config, "blocks.halo"), _get(config, "blocks.size")
    if halo is not None:
        check_halo(
            int(halo),
            None if size is None else int(size),
            shown=f"config blocks.halo={halo}",
            block_name="config blocks.size",
        )


def job_count(batches: int, blocks: int = 0) -> int:
    """Jobs of a workflow run: :data:`JOBS_PER_BATCH` per batch, one per block of the images in blocks, and
    :data:`JOBS_PER_RUN`."""
    return JOBS_PER_BATCH * int(batches) + int(blocks) + JOBS_PER_RUN


def check_jobs(batches: int, blocks: int = 0, *, images: int, at_least: bool = False) -> int:
    """The run's job count (:func:`job_count`), or a CpsnakeError when it exceeds :data:`MAX_JOBS`
    (``at_least``: a lower bound known before the images' headers are read)."""
    n = job_count(batches, blocks)
    if n > MAX_JOBS:
        more = "at least " if at_least else ""
        parts = f"{batches:,} batch(es) x {JOBS_PER_BATCH} steps" + (f" + {blocks:,} block jobs" if blocks else "")
        raise CpsnakeError(
            f"config: found a run of {more}{n:,} jobs for {images:,} image(s) ({parts} + {JOBS_PER_RUN}); expected at "
            f"most {MAX_JOBS:,} (SLURM's default MaxJobCount; beyond it each job's start-up outweighs its work); "
            "give larger batches (config batch.images, batch.pixels), larger blocks (blocks.size), or split the "
            "images into several runs"
        )
    return n
