"""PNG and JPEG files: their size from the header, then their pixels, within the limits.

PNG: the size, samples per pixel and bit depth come from the IHDR chunk (the file's first 33 bytes,
:func:`png_shape`); the pixels from imagecodecs, which keeps 8- and 16-bit grey and RGB as they are (Pillow
would cut 16-bit RGB to 8 bits). JPEG: Pillow reads the frame header without decoding, then decodes (Pillow
raises on a truncated JPEG, where libjpeg alone only warns). In both, the size the header declares is checked
against ``max_pixels`` (:mod:`cpsnake.io.limits`) before any pixel is decoded, and decoding runs under a
budget, so compressed data that expand beyond the declared size fail with one line.

Pillow and imagecodecs are imported inside the functions that use them: most inputs are TIFFs.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from cpsnake.errors import CpsnakeError, library_text
from cpsnake.io import files, limits

__all__ = ["png_shape", "pillow_without_limit", "declared_shape", "read_png_jpeg"]


_PNG_SAMPLES = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}  # colour type -> samples per pixel once decoded (palette: up to RGBA)


def png_shape(path: str | os.PathLike, head: bytes) -> tuple[int, int, int, int]:
    """(height, width, samples per pixel, bytes per sample) from a PNG's first 33 bytes (signature + IHDR).

    Nothing is decoded. A missing or malformed IHDR chunk is a CpsnakeError.
    """
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise CpsnakeError(
            f"{path}: found a PNG without its IHDR header; expected a complete PNG; "
            "the file is truncated or corrupt: copy or export it again"
        )
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if width == 0 or height == 0 or colour not in _PNG_SAMPLES or depth not in (1, 2, 4, 8, 16):
        raise CpsnakeError(
            f"{path}: found a PNG header of {width} x {height} pixels, bit depth {depth}, colour type "
            f"{colour}; expected a valid PNG; the file is corrupt: copy or export it again"
        )
    return height, width, _PNG_SAMPLES[colour], 2 if depth == 16 else 1


@contextlib.contextmanager
def pillow_without_limit() -> Iterator[None]:
    """Pillow refuses images above 2 x 89 million pixels on its own; cpsnake's max_pixels decides instead."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def declared_shape(path: Path, fmt: str) -> tuple[tuple[int, int, int], str, str]:
    """(shape (Y, X, samples), axes ``"YXS"``, dtype name) of a PNG (``fmt`` "png", from its IHDR) or a JPEG
    ("jpeg", Pillow's frame header); no pixel is decoded. Pillow's errors reach the caller as they are."""
    if fmt == "png":
        with open(path, "rb") as fh:
            first = fh.read(33)
        h, w, spp, nbytes = png_shape(path, first)
        return (h, w, spp), "YXS", "uint16" if nbytes == 2 else "uint8"
    from PIL import Image

    with pillow_without_limit(), Image.open(path) as im:
        w, h = im.size
        return (h, w, len(im.getbands())), "YXS", "uint8"


def read_png_jpeg(path: Path, fmt: str, max_pixels: int | None) -> tuple[np.ndarray, str, bool]:
    """(data, axes, has_alpha) of a PNG (imagecodecs: 8 and 16 bit kept, grey and RGB) or a JPEG (Pillow).

    The size declared in the header (PNG IHDR, JPEG frame header read by Pillow without decoding) is
    checked against ``max_pixels`` first; a PNG file much larger than its decoded pixels is refused
    before it is read.
    """
    what = fmt.upper()
    try:
        if fmt == "png":
            import imagecodecs  # Pillow would cut 16-bit RGB PNGs to 8 bits

            with open(path, "rb") as fh:
                head = fh.read(33)
            h, w, spp, nbytes = png_shape(path, head)
            limits.check_samples(path, (h, w, spp) if spp > 1 else (h, w), limit=max_pixels, what="PNG")
            raw = files.read_bytes(path, f"a {what} of {h} x {w} pixels", limit=2 * h * (w * spp * nbytes + 1) + 2**24)
            with limits.decode_budget(2 * h * w * spp * nbytes + len(raw)):
                data = imagecodecs.png_decode(raw)
        else:
            from PIL import Image  # raises on a truncated JPEG (libjpeg alone only warns)

            with pillow_without_limit(), Image.open(path) as im:
                w, h = im.size
                bands = len(im.getbands())
                limits.check_samples(path, (h, w, bands) if bands > 1 else (h, w), limit=max_pixels, what="JPEG")
                with limits.decode_budget(3 * h * w * (bands + 3)):  # the decoded image, RGB and array copies
                    im.load()
                    if im.mode not in ("L", "RGB"):
                        im = im.convert("RGB")
                    data = np.asarray(im)
    except CpsnakeError:
        raise
    except MemoryError:
        raise CpsnakeError(
            f"{path}: found a {what} whose compressed data expand beyond the size its header declares (or memory ran "
            f"out while decoding); expected a {what} whose data match its header; the file is corrupt or hostile: "
            "export it again from the original"
        ) from None
    except Exception as exc:
        raise CpsnakeError(
            f"{path}: found a {what} whose data cannot be decoded ({library_text(exc)}); expected a complete {what}; "
            "the file is truncated or corrupt: copy or export it again"
        ) from None
    if data.ndim == 2:
        return data, "YX", False
    # grey+alpha (2 samples) or RGB+alpha (4 samples): the last sample is alpha
    return data, "YXS", data.shape[-1] in (2, 4)
