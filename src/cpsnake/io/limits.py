"""Size limits checked before anything of that size is allocated: pixels, image sides, network parameters.

``max_pixels`` -- the most *samples* one input may decode to: the product of all its axes, channels
and planes included (a 2000 x 3000 RGB image is 18,000,000 samples). It is checked from the file's
header (TIFF series shape, PNG IHDR, JPEG frame header) before any pixel is decoded, for every image,
label image, normalized image and flows file that a command reads (a flows file holds 3 samples per
pixel of the image it was made from and is checked per pixel). Set it per command with
``--max-pixels N``, for every command with the environment variable ``CPSNAKE_MAX_PIXELS``, and in the
workflow with the config key ``max_pixels`` (which the rules pass on as ``--max-pixels``).

Default, :data:`DEFAULT_MAX_PIXELS` = 100,000,000 (a 10,000 x 10,000 grey image). Measured with
``benchmarks/peak_memory.py`` (bundled nuclei_small model, CPU, 2048^2 and 4096^2 uint16 images tiled
from BBBC039 nuclei; peak resident memory of each command, interpreter, numpy and torch included), the
memory of a step grows by these many bytes per pixel of a grey image, on top of a fixed part:

===========================  ===========  =========  ======================
step                         bytes/pixel  fixed MiB  at 100,000,000 pixels
===========================  ===========  =========  ======================
segment (all steps)          96           1,153      10.0 GiB
infer                        92           1,138      9.7 GiB
reconstruct, every pixel     68           753        7.1 GiB
reconstruct, nuclei          28           773        3.3 GiB
overlay                      30           43         2.8 GiB
measure                      12           66         1.2 GiB
rois                         10           47         1.0 GiB
normalize (uint16)           6            43         0.6 GiB
===========================  ===========  =========  ======================

Arithmetic for the worst step: 95.6 B x 10^8 = 9,117 MiB, plus 1,153 MiB = 10,270 MiB = 10.0 GiB
(10.8 GB) for ``segment``; ``infer``, the largest workflow job, 9.7 GiB. That is under half of a 24 GB
(22.4 GiB) machine: it never swaps, with room for the system, other programs and a larger model
(cpsam, ViT-L, adds about 3 GiB: its weights and the activations of a batch). A multi-channel image
counts every sample, so at the limit it has fewer pixels and needs less. On a machine with more
memory, raise the limit to about (memory - 3 GiB) / 100 bytes.

``check_stack_3d`` -- with ``--do-3d`` a stack is resized by ``--anisotropy`` (and the diameter's scale) before the
network: the resized stack must fit the limit too, checked from the header before the model loads.

``MIN_SIDE`` -- the steps that run the network (``normalize``, ``infer``, ``segment``, ``train``) refuse
images thinner than 8 pixels along Y or X: no cell fits, and the network would still run a 256-pixel
tile for every 256 pixels of the long side (a 100,000 x 2 image is 470 tiles of padding).

A TIFF's tile (or strip) and a Zarr chunk are decoded whole, so each counts against the limit too
(:func:`check_chunk`): a tiny image declaring 72000 x 72000 tiles is refused from its header.

``decode_budget`` -- the header check bounds what a file *declares*; a compressed block inside it may
still expand beyond that (a TIFF tile stored as a PNG or JPEG carries its own, larger, size). While a
codec runs, the process's data segment is capped (Linux ``RLIMIT_DATA``) at its current size plus the
declared size and a margin of 256 MB, so such a block fails with one line instead of taking the
machine's memory. Other systems rely on the header check alone.

``MAX_PARAMETERS`` -- a weights file may declare at most 1,000,000,000 parameters (4 GB as float32):
Cellpose-SAM ViT-L has 304,628,930, a SAM ViT-H geometry 632,442,818. A training checkpoint (weights
plus two AdamW moments) may hold three times as many.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from typing import Iterator, Sequence

from cpsnake.bounds import number_text
from cpsnake.errors import CpsnakeError

__all__ = [
    "ENV",
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "MAX_PARAMETERS",
    "max_pixels",
    "add_option",
    "check_samples",
    "check_chunk",
    "check_min_side",
    "check_stack_3d",
    "decode_budget",
]

ENV = "CPSNAKE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000
MIN_SIDE = 8
MAX_PARAMETERS = 1_000_000_000
RAISE = "--max-pixels N (or CPSNAKE_MAX_PIXELS=N, config key max_pixels)"
DECODE_MARGIN = 256 * 2**20  # bytes a codec may use beyond the declared size (its buffers, the file's bytes)


def _positive_int(text: str, where: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text.replace("_", "").replace(",", ""))
    except (ValueError, OverflowError):  # not a number, NaN, or an infinite float such as 1e999
        value = 0
    if value < 1:
        raise CpsnakeError(f"{where}: found {text!r}, expected a positive whole number of samples, e.g. 200000000")
    return value


def max_pixels(value: int | None = None) -> int:
    """The limit in force: ``value`` if given, else ``$CPSNAKE_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    if value is not None:
        if int(value) < 1:
            raise CpsnakeError(f"--max-pixels {value}: expected a positive whole number of samples")
        return int(value)
    env = os.environ.get(ENV, "").strip()
    return _positive_int(env, ENV) if env else DEFAULT_MAX_PIXELS


def _argument(text: str) -> int:
    """``--max-pixels``'s argparse type: its CpsnakeError reaches the command's guard (one line, exit code 1)."""
    return _positive_int(text, "--max-pixels")


def add_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--max-pixels N`` (default: ``$CPSNAKE_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`)."""
    p.add_argument(
        "--max-pixels",
        type=_argument,
        default=None,
        metavar="N",
        help=f"refuse inputs that decode to more than N samples (pixels x channels x planes); default "
        f"${ENV} or {DEFAULT_MAX_PIXELS:,} (a run at the limit needs about 10 GiB)",
    )


def check_samples(
    path: object, shape: Sequence[int], *, limit: int | None = None, per_pixel: int = 1, what: str = "image"
) -> None:
    """Refuse ``shape`` when it holds more than ``limit * per_pixel`` samples; checked before decoding.

    Parameters
    ----------
    path : the file, for the message
    shape : the declared shape (any axes), e.g. a TIFF series' shape or (Y, X, samples) of a PNG
    limit : max_pixels, resolved with :func:`max_pixels` when None
    per_pixel : samples per pixel that the limit allows for this kind of file (3 for flows)
    what : the kind of file, for the message
    """
    allowed = max_pixels(limit) * per_pixel
    n = math.prod(int(s) for s in shape)
    if n > allowed:
        dims = " x ".join(str(int(s)) for s in shape)
        per = f" ({per_pixel} per pixel)" if per_pixel > 1 else ""
        raise CpsnakeError(
            f"{path}: found a {what} of {dims} = {n:,} samples, more than the limit of {allowed:,} samples{per}; "
            f"expected at most {allowed:,}; crop or split it, or raise the limit with {RAISE} on a machine with "
            "about 100 bytes of memory per pixel"
        )


def check_chunk(
    path: object,
    chunk: Sequence[int],
    *,
    limit: int | None = None,
    per_pixel: int = 1,
    what: str = "TIFF tiles",
    image: Sequence[int] | None = None,
) -> None:
    """Refuse a storage chunk (a TIFF tile or strip, a Zarr chunk) of more than ``limit * per_pixel`` samples.

    A decoder makes a whole chunk at a time, whatever the image's size: a 256 x 256 image declaring tiles of
    72000 x 72000 would allocate 5 GB per tile. So a chunk counts against the limit like the image does;
    checked from the header, before decoding. ``chunk``: the chunk's shape (any axes, samples included);
    ``what``: the chunks' name, plural; ``image``: the image's shape, for the message.
    """
    allowed = max_pixels(limit) * per_pixel
    n = math.prod(int(s) for s in chunk)
    if n > allowed:
        dims = " x ".join(str(int(s)) for s in chunk)
        of = f" (image {' x '.join(str(int(s)) for s in image)})" if image is not None else ""
        raise CpsnakeError(
            f"{path}: found {what} of {dims} = {n:,} samples{of}, each decoded whole; expected {what} of 1 to "
            f"{allowed:,} samples; write the image again with smaller chunks or tiles (e.g. 1024 x 1024), or raise "
            f"the limit with {RAISE}"
        )


def check_min_side(path: object, yx: Sequence[int]) -> None:
    """Refuse an image whose Y or X is below :data:`MIN_SIDE` pixels (no cell fits; the network would tile padding)."""
    y, x = (int(v) for v in yx[-2:])
    if min(y, x) < MIN_SIDE:
        raise CpsnakeError(
            f"{path}: found an image of {y} x {x} pixels (Y x X); expected at least {MIN_SIDE} pixels along each "
            "axis (no cell fits in fewer, and the network would run a 256-pixel tile per 256 pixels of the long side); "
            "pass the full image, or pad it (Fiji: Image > Adjust > Canvas Size)"
        )


def check_stack_3d(path, shape: Sequence[int], *, anisotropy: float | None, diameter, limit: int | None) -> None:
    """The stack ``(Z, C, Y, X)`` resized for 3-D segmentation (Z by ``anisotropy``, every side by 30 /
    ``diameter``, the Cellpose-SAM scale) must hold at most ``limit`` samples (:func:`max_pixels` when None); a
    CpsnakeError naming ``--anisotropy`` otherwise. Checked from the header before the model loads (the network's own
    scale is
    checked again once it is known, :func:`cpsnake.engine.infer3d.predict_3d`)."""
    Z, C, Y, X = (int(n) for n in shape)
    aniso = 1.0 if anisotropy is None else float(anisotropy)
    scale = 30.0 / float(diameter) if diameter not in (None, "auto") else 1.0
    new = (int(Z * aniso * scale), int(Y * scale), int(X * scale))
    limit = max_pixels(limit)
    n = new[0] * new[1] * new[2] * C
    if n > limit:
        given = f"--anisotropy {number_text(aniso)}" if anisotropy is not None else "--anisotropy 1 (the default)"
        raise CpsnakeError(
            f"{path}: {given} resizes the {Z} x {Y} x {X} stack to {new[0]} x {new[1]} x {new[2]} voxels for the "
            f"network ({n:,} samples with {C} channel(s)), more than the limit of {limit:,}; expected at most "
            f"{limit:,}; give a smaller --anisotropy or a larger --diameter, crop the stack, or raise the limit with "
            f"{RAISE}"
        )


def _data_segment() -> int | None:
    """This process's data segment in bytes (``VmData``, what RLIMIT_DATA limits), or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def decode_budget(nbytes: int) -> Iterator[None]:
    """While the block runs, allow this process ``nbytes`` (+ 256 MB) more data segment than it has now.

    Linux only (``RLIMIT_DATA``; a lower limit already in force is kept); elsewhere it does nothing. A
    decoder that allocates beyond the budget raises ``MemoryError``, which the caller reports as a file
    whose compressed data expand beyond its header.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    except (ImportError, AttributeError, OSError, ValueError):
        yield
        return
    used = _data_segment()
    if used is None:
        yield
        return
    cap = used + int(nbytes) + DECODE_MARGIN
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
