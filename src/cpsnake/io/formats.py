"""What a file is, told by its first bytes (never by its name), and how to say what it is when it is not an image.

cpsnake reads TIFF (BigTIFF included), PNG and JPEG files (:data:`IMAGE_FORMATS`) and OME-Zarr folders. A
file's format comes from its first bytes, not its extension: a PNG named ``.tif`` reads as a PNG, and a text
file named ``.tif`` is reported as "not an image" with what it starts with (:func:`describe`: a ZIP archive,
a PDF, text, ...), never quoting its bytes. :mod:`cpsnake.io.inputs` decides from :func:`format_of` how an
input is opened.

Axes without a name: tifffile names an axis it has no metadata for ``Q`` or ``I`` (a numpy array saved as
it is). Every reader takes such an axis as channels when it has at most :data:`MAX_GUESSED_CHANNELS` entries;
with more it cannot tell depths, time points and channels apart, and refuses it with how to name the axes.
"""

from __future__ import annotations

import os

__all__ = ["IMAGE_FORMATS", "MAX_GUESSED_CHANNELS", "format_of", "head", "is_tiff", "describe"]

IMAGE_FORMATS = "TIFF, OME-TIFF, PNG or JPEG"
MAX_GUESSED_CHANNELS = 3

_MAGIC = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
)

# formats cpsnake does not read, told by their first bytes, so that a message can say what a file is
_OTHER_MAGIC = (
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF", "an HDF5 file"),
    (b"ZISRAWFILE", "a Zeiss CZI file"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"8BPS", "a Photoshop file"),
    (b"\x93NUMPY", "a NumPy array file"),
)


def format_of(first: bytes) -> str | None:
    """``"tiff"``, ``"png"`` or ``"jpeg"`` from a file's first bytes, else None."""
    return next((fmt for magic, fmt in _MAGIC if first.startswith(magic)), None)


def head(path: str | os.PathLike, n: int = 16) -> bytes:
    """The first ``n`` bytes of a regular file (b"" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def is_tiff(path: str | os.PathLike) -> bool:
    """True when the file starts like a TIFF (classic or BigTIFF, either byte order)."""
    return format_of(head(path)) == "tiff"


def describe(path: str | os.PathLike) -> str:
    """What a file that is not the image expected looks like, never quoting its bytes: ``"found a PNG"``,
    ``"found a ZIP archive"``, ``"found text"``, ``"found an empty file"`` or ``"its first bytes match no image
    format"``."""
    first = head(path, 64)
    fmt = format_of(first)
    if fmt:
        return f"found a {fmt.upper()}"
    if first.startswith(b"RIFF") and first[8:12] == b"WEBP":
        return "found a WebP image"
    for magic, kind in _OTHER_MAGIC:
        if first.startswith(magic):
            return f"found {kind}"
    if not first:
        return "found an empty file"
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = first[: exc.start].decode("utf-8") if exc.start >= 32 else None
    if text is not None and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return "found text"
    return "its first bytes match no image format"
