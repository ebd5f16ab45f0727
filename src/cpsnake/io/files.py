"""Opening a user's file safely: regular files only, every whole-file read bounded, hashing in chunks.

Every reader of a user's file (images, labels, flows, normalized images, weights, ROI sets, CSV and
index files, the files provenance hashes) first calls :func:`regular_file`. It uses ``os.stat`` (never
``open``, which blocks forever on a FIFO with no writer) and refuses anything that is not a regular
file -- a FIFO (named pipe), a character or block device (``/dev/zero`` never ends), a socket, a folder
-- as well as a missing path and a symbolic-link loop, each with one line that names the path, what it
is and the fix. A regular file has a size, so a read of it ends; :func:`read_bytes` adds an explicit
cap for the few places that read a whole file into memory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from cpsnake.errors import CpsnakeError

__all__ = ["regular_file", "read_bytes", "read_text", "sha256"]

_KINDS = (
    (stat.S_ISDIR, "a folder", "pass a file inside it"),
    (stat.S_ISFIFO, "a FIFO (named pipe)", "save the data to a regular file first and pass that"),
    (stat.S_ISCHR, "a character device", "pass a regular file"),
    (stat.S_ISBLK, "a block device", "pass a regular file"),
    (stat.S_ISSOCK, "a socket", "pass a regular file"),
)


def regular_file(path: str | os.PathLike, expected: str) -> os.stat_result:
    """``os.stat(path)`` if ``path`` is a regular file (symbolic links followed), else a one-line CpsnakeError.

    Parameters
    ----------
    path : the user's path
    expected : what the file should be, for the message (e.g. ``"an image (TIFF, OME-TIFF, PNG or JPEG)"``)
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CpsnakeError(
                f"{path}: found a symbolic link to a missing file ({os.readlink(path)}); expected {expected}; "
                "fix or remove the link"
            ) from None
        raise CpsnakeError(f"{path}: no such file; expected {expected}; check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CpsnakeError(
                f"{path}: found a loop of symbolic links; expected {expected}; point the link at the real file "
                f"(see `ls -l {path}`)"
            ) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise CpsnakeError(
                f"{path}: the path is too long for the file system; expected {expected}; shorten it"
            ) from None
        raise CpsnakeError(
            f"{path}: cannot be read ({exc.strerror}); expected {expected}; check the path and its permissions"
        ) from None
    if stat.S_ISREG(st.st_mode):
        return st
    for test, kind, fix in _KINDS:
        if test(st.st_mode):
            raise CpsnakeError(f"{path}: is {kind}, not a regular file; expected {expected}; {fix}")
    raise CpsnakeError(f"{path}: is not a regular file (mode {st.st_mode:o}); expected {expected}; pass a regular file")


def read_bytes(path: str | os.PathLike, expected: str, *, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before reading, and while reading)."""
    st = regular_file(path, expected)
    if st.st_size > limit:
        raise CpsnakeError(
            f"{path}: found {st.st_size:,} bytes, more than the {limit:,} bytes {expected} can hold; "
            "check that this is the right file"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise CpsnakeError(
            f"{path}: cannot be read ({exc.strerror}); expected {expected}; check its permissions"
        ) from None
    if len(data) > limit:  # the file grew after stat
        raise CpsnakeError(
            f"{path}: grew past {limit:,} bytes while being read; expected {expected}; pass a finished file"
        )
    return data


def read_text(path: str | os.PathLike, expected: str, *, limit: int = 256 * 2**20) -> str:
    """A regular UTF-8 text file of at most ``limit`` bytes, as text; a binary file is a CpsnakeError."""
    data = read_bytes(path, expected, limit=limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CpsnakeError(
            f"{path}: found bytes that are not UTF-8 text (at byte {exc.start}); expected {expected}; "
            "save the file as UTF-8 text"
        ) from None


def sha256(path: str | os.PathLike, *, expected: str = "a file to hash", chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file, read in chunks (a FIFO or device is refused, not read forever)."""
    regular_file(path, expected)
    digest = hashlib.sha256()
    try:
        with open(Path(path), "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                digest.update(block)
    except OSError as exc:
        raise CpsnakeError(
            f"{path}: cannot be read ({exc.strerror}); expected {expected}; check its permissions"
        ) from None
    return digest.hexdigest()
