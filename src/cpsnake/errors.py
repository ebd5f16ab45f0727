"""The one error type users see, and the guard that turns it into one line on stderr.

A :class:`CpsnakeError` message names the file, what was found, what was expected and the fix, e.g.
``img.tif: found 5 dimensions (1, 2, 3, 64, 64), expected (Y, X), (C, Y, X) or (Z, C, Y, X); pass a 2-D or 3-D image``.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class CpsnakeError(Exception):
    """Bad input or a failed precondition, reported to the user as a single line."""


def guard(step: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a step's ``main``: a :class:`CpsnakeError` becomes ``cpsnake STEP: error: MSG`` and exit code 1."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return int(main(argv) or 0)
            except CpsnakeError as exc:
                msg = " ".join(str(exc).split())  # one line, whatever the message held
                print(f"cpsnake {step}: error: {msg}", file=sys.stderr)
                return 1

        return run

    return wrap
