"""The one error type users see, the guard that turns it into one line on stderr, and warnings kept to one line each.

A :class:`CpsnakeError` message names the file, what was found, what was expected and the fix, e.g.
``img.tif: found 5 dimensions (1, 2, 3, 64, 64), expected (Y, X), (C, Y, X) or (Z, C, Y, X); pass a 2-D or 3-D image``.

Readers turn every exception raised while reading a user's file into a :class:`CpsnakeError` at the
reading boundary, so :func:`guard` can stay narrow: any other exception is a bug in cpsnake and keeps
its traceback.

Warnings (Python :mod:`warnings` from cpsnake, numpy, tifffile, torch, and records of the ``tifffile``,
``imagecodecs``, ``roifile`` and ``PIL`` loggers) raised while a command runs are collected by
:func:`collected_warnings`: when the command fails
only its error line is printed; when it succeeds each distinct warning is printed once, as one line
``cpsnake STEP: warning: MSG``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import warnings
from typing import Callable, Iterator

__all__ = ["CpsnakeError", "CpsnakeWarning", "guard", "collected_warnings", "one_line", "library_text"]


class CpsnakeError(Exception):
    """Bad input or a failed precondition, reported to the user as a single line."""


class CpsnakeWarning(UserWarning):
    """Something the user should know about a result that is still correct (e.g. a bad calibration ignored)."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(text).split())


# a quoted piece of a library's message (a str or bytes literal, which libraries use to show the data they choke on)
# or an object's repr such as <tifffile.TiffFile 'x.tif'>
_QUOTED = re.compile(r"""(?<![A-Za-z0-9])b?'(?:[^'\\]|\\.)*'|(?<![A-Za-z0-9])b?"(?:[^"\\]|\\.)*"|<[\w.]+ [^<>]*>""")
LIBRARY_TEXT_CHARS = 160


def library_text(exc: BaseException) -> str:
    """What a library's exception says, fit to quote in an error line without quoting the user's file.

    Libraries put the bytes or text they could not parse into their messages (tifffile's ``not a TIFF file
    b'...'``, ``invalid literal for int(): '...'``, a ``KeyError`` of a metadata key). Every quoted piece
    (a string or bytes literal, an object's ``<...>`` repr) becomes ``...``, unprintable characters are
    dropped, and the text is cut to 160 characters; when no word is left, the exception's type name.
    """
    text = _QUOTED.sub("...", str(exc))
    text = one_line("".join(ch if ch.isprintable() else " " for ch in text))
    if len(text) > LIBRARY_TEXT_CHARS:
        text = text[: LIBRARY_TEXT_CHARS - 3].rstrip() + "..."
    return text if re.search(r"[A-Za-z]{3}", text.replace("...", " ")) else type(exc).__name__


class _LogCollector(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def collected_warnings(loggers: tuple[str, ...] = ("tifffile", "imagecodecs", "roifile", "PIL")) -> Iterator[list[str]]:
    """Collect warnings raised inside the block instead of printing them; yield the list (distinct, in order).

    Python warnings of every category are recorded (each occurrence, not once per place); records of
    level WARNING and above on ``loggers`` are recorded and not passed on to their usual handlers. The
    list holds one-line messages; a message seen twice is kept once.
    """
    notes: list[str] = []
    handler = _LogCollector(notes)
    saved = []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield notes
            finally:
                notes.extend(one_line(w.message) for w in caught)
                distinct = list(dict.fromkeys(one_line(n) for n in notes))
                notes[:] = distinct
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


def guard(step: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a step's ``main``: a :class:`CpsnakeError` becomes ``cpsnake STEP: error: MSG`` and exit code 1.

    Warnings raised while ``main`` runs are printed afterwards, each distinct one once (see
    :func:`collected_warnings`); when ``main`` fails with a CpsnakeError they are dropped, so the error
    is the only line. Any other exception propagates with its traceback (a bug, not a user's file).
    """

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            failed = None
            with collected_warnings() as notes:
                try:
                    code = int(main(argv) or 0)
                except CpsnakeError as exc:
                    failed = exc
            if failed is not None:
                print(f"cpsnake {step}: error: {one_line(failed)}", file=sys.stderr)
                return 1
            for note in notes:
                print(f"cpsnake {step}: warning: {note}", file=sys.stderr)
            return code

        return run

    return wrap
