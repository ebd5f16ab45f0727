"""Text cells of the CSV and TSV tables cpsnake writes: never run as a formula by a spreadsheet, read back exactly.

Excel, LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula, and
some do so after a leading tab or carriage return ("CSV injection"): an image named ``=cmd|' -C calc'!A0.tif``
would put a command into every row of its tables. As OWASP advises, every text cell cpsnake writes that starts
with one of these characters gets a single quote in front (``'=cmd|' -C calc'!A0.tif``), which spreadsheets
show as text; numbers are left alone, negative ones included (``-1.5`` stays a number). A text cell that
starts with a quote gets one more, so :func:`read_cell` gives every cell back exactly; the readers of the tables
cpsnake reads back (the samples table, the step manifests, the measurement tables, ``failed.csv``, a pack's
``index.csv``) use it.

A carriage return inside a cell (a file name may hold one) ends a row for every CSV reader unless the cell
is quoted, which Python's ``csv`` module and pandas do not do when rows end with ``\n`` alone: a row holding
one is written with every cell quoted (:func:`writer`, :func:`to_csv`), so the table still reads back.

:func:`cell` / :func:`read_cell` work on one value, :func:`frame` / :func:`read_frame` on a pandas DataFrame
(text cells and column names; numeric columns are untouched); :func:`writer` (rows) and :func:`to_csv` (a
DataFrame) write tables with both rules.
"""

from __future__ import annotations

import contextlib
import csv
import re
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FORMULA_START", "cell", "read_cell", "frame", "read_frame", "writer", "to_csv", "field_limit"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def cell(value):
    """``value`` as a table cell: a ``str`` that starts with a formula character (and is not a plain number) or
    with a single quote gets a single quote in front; every other value is returned as it is."""
    if isinstance(value, str) and value[:1] in (*FORMULA_START, "'") and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def read_cell(value):
    """The value :func:`cell` was given: a ``str`` that starts with a single quote loses it; others are unchanged."""
    if isinstance(value, str) and value.startswith("'"):
        return value[1:]
    return value


def _map(df, fn):
    """A copy of ``df`` with ``fn`` applied to its column names and to the cells of its text columns (a column is
    replaced only where a cell changed, keeping its dtype)."""
    import pandas as pd

    out = df.copy()
    out.columns = [fn(c) for c in df.columns]
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if not pd.api.types.is_string_dtype(col.dtype):
            continue
        new = [fn(v) for v in col]
        if any(a is not b for a, b in zip(new, col)):
            out.isetitem(i, pd.Series(new, index=out.index, dtype=col.dtype))
    return out


def frame(df: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of ``df`` whose text cells and column names went through :func:`cell` (for ``to_csv``)."""
    return _map(df, cell)


def read_frame(df: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of ``df`` (as ``read_csv`` gives it) whose text cells and column names went through :func:`read_cell`."""
    return _map(df, read_cell)


def _has_cr(values) -> bool:
    return any(isinstance(v, str) and "\r" in v for v in values)


class _Writer:
    """``csv.writer`` rows ending in ``\n``, each value through :func:`cell`, a row holding a CR quoted whole."""

    def __init__(self, fh, **fmt):
        self._plain = csv.writer(fh, lineterminator="\n", **fmt)
        self._quoted = csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_ALL, **fmt)

    def writerow(self, values) -> None:
        values = [cell(v) for v in values]
        (self._quoted if _has_cr(values) else self._plain).writerow(values)


def writer(fh, *, delimiter: str = ",") -> _Writer:
    """A CSV (or, with ``delimiter="\t"``, TSV) row writer on the text file ``fh`` (opened with ``newline=""``):
    rows end with ``\n``, every value goes through :func:`cell`, a row holding a carriage return is quoted whole."""
    return _Writer(fh, delimiter=delimiter)


def to_csv(df: "pd.DataFrame", path, **kwargs) -> None:
    """``df.to_csv(path, index=False, **kwargs)`` of :func:`frame` (df), every cell quoted if one holds a
    carriage return."""
    import pandas as pd

    out = frame(df)
    text = [out.iloc[:, i] for i in range(out.shape[1]) if pd.api.types.is_string_dtype(out.dtypes.iloc[i])]
    cr = _has_cr(out.columns) or any(_has_cr(col) for col in text)
    out.to_csv(path, index=False, quoting=csv.QUOTE_ALL if cr else csv.QUOTE_MINIMAL, **kwargs)


@contextlib.contextmanager
def field_limit(chars: int) -> Iterator[None]:
    """While the block runs, the ``csv`` module refuses cells of more than ``chars`` characters.

    The limit is the module's one global setting; it is put back afterwards, so no reader depends on what
    another set before it.
    """
    saved = csv.field_size_limit(int(chars))
    try:
        yield
    finally:
        csv.field_size_limit(saved)
