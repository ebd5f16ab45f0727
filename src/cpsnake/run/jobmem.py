"""Memory requests of the workflow's jobs (MB), from what each image's header declares (the samples table):
what a cluster scheduler reserves for a job (``mem_mb``, sbatch ``--mem``), enough for it and no more.

A batch job processes its images one after the other, so it asks for the most any one of them needs.

An image held whole needs ``base + bytes x samples`` (samples = Y x X x planes x channels) with the step's
figures in :data:`WHOLE`.

An image in blocks (``block`` > 0, :mod:`cpsnake.run.blockjob`) is never held whole, so its requests follow the
block, except for the records kept per object:

* a block job: :data:`BLOCK_JOB` over its read region, the core plus :data:`CONTEXT` px on each side (it
  computes the whole image's tiles that overlap its core and halo), or plus the halo where that is larger;
* reconstruct (pass 2 and the stitch: one block file at a time, the label image in a Zarr array on disk,
  the label TIFF written 1,024 rows at a time): the whole-image figures for one read region;
* normalize (one streaming pass over bands of rows, about 64 MB each): the whole-image figures for
  :data:`BAND_ROWS` rows;
* rois, measure (window by window, :mod:`cpsnake.export.blockout`): :data:`WINDOWED` plus bytes per pixel of the
  image for the records kept per object (its box, its ROI's zip directory entry, the records of one row
  of tiles: about 1 KB per object, measured), assuming at most one object per :data:`PX_PER_OBJECT` px
  (cells about 16 px apart); denser images need a larger request (``--set-resources rois:mem_mb=N``);
* overlay (every k-th pixel, at most :data:`cpsnake.export.overlay.MAX_SIDE` px a side): the whole-image figures
  for that many pixels;
* infer (nothing: the block jobs compute the flows): its base.

Measured (peak RSS, ``benchmarks/bench_block_outputs.py --steps``, blocks of 2,048 px, one object per
1,024 px): at 20,000 x 20,000 px (390,625 objects) normalize 0.22 GB, rois 0.56, measure 0.41, overlay
1.04; at 8,192 px 0.26 / 0.25 / 1.06 for rois / measure / overlay. A block's pass 1 and 2 in one
process, network included: 1.52 GB at 20,000 px (``benchmarks/bench_blocks.py``). Each batch job, and
each block job that computes its block, ends its log with its own peak (:func:`peak_mb`), and the
workflow test checks every job's peak against its request.
"""

from __future__ import annotations

from cpsnake.export.overlay import MAX_SIDE

__all__ = [
    "WHOLE",
    "BLOCK_JOB",
    "CONTEXT",
    "BAND_ROWS",
    "WINDOWED",
    "PX_PER_OBJECT",
    "BYTES_PER_OBJECT",
    "read_region",
    "block_job_mb",
    "step_mb",
    "peak_mb",
]

# step: (base MB, bytes per sample of the image)
WHOLE = {
    "normalize": (300, 12),
    "infer": (2000, 100),
    "reconstruct": (1000, 70),
    "rois": (300, 12),
    "measure": (300, 30),
    "overlay": (300, 40),
}
BLOCK_JOB = (1500, 100)  # base MB, bytes per sample of the block's read region
CONTEXT = 300  # px of context on each side of a block's core taken for its memory
BAND_ROWS = 2048  # rows of a streaming pass's band taken for its memory
WINDOWED = 500  # base MB of rois and measure window by window
PX_PER_OBJECT = 256  # image pixels per object assumed for the records kept per object
BYTES_PER_OBJECT = 1024  # records kept per object, measured (see above)


def read_region(block: int, halo: int | None) -> int:
    """Pixels of a block's read region taken for its memory: ``block`` px cores, ``halo`` px (None: default)."""
    side = block + 2 * max(halo or 0, CONTEXT)
    return side * side


def block_job_mb(block: int, halo: int | None, channels: int | None) -> int:
    """Request of one block job."""
    base, per_sample = BLOCK_JOB
    return int(base + per_sample * read_region(block, halo) * max(channels or 1, 1) / 1e6)


def step_mb(
    step: str, *, pixels: int, width: int, channels: int | None, block: int = 0, halo: int | None = None
) -> int:
    """Request of batch step ``step`` for one image of ``pixels`` (Y x X x planes), ``width`` px wide, with
    ``channels`` samples per pixel, held whole (``block`` 0) or in ``block`` px blocks."""
    c = max(channels or 1, 1)

    def whole(n_pixels: int) -> int:
        base, per_sample = WHOLE[step]
        return int(base + per_sample * n_pixels * c / 1e6)

    if not block:
        return whole(pixels)
    if step == "reconstruct":
        return whole(read_region(block, halo))
    if step == "normalize":
        return whole(min(pixels, BAND_ROWS * width))
    if step in ("rois", "measure"):
        return int(WINDOWED + BYTES_PER_OBJECT * pixels / PX_PER_OBJECT / 1e6)
    if step == "overlay":
        return whole(min(pixels, MAX_SIDE * MAX_SIDE))
    return WHOLE[step][0]


def peak_mb() -> int:
    """This process's peak resident memory so far, in MB (10^6 bytes; Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6)
