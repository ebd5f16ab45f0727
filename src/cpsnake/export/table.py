"""The measurement table shared by the 2-D (:mod:`cpsnake.export.measure`) and 3-D (:mod:`cpsnake.export.measure3d`)
measurements: its column names, its type, and its CSV.

Both measurements return the same type, a :class:`pandas.DataFrame` with one row per object and the columns of
:func:`columns` (2-D, ImageJ's Measure) or :func:`columns_3d` (3-D objects), in that order (:func:`new_table`),
and both are written by :func:`write_table`, so a table's CSV does not depend on which measurement made it.

Column names: cpsnake's own columns in lower case (``label``, ``image``, ``area_px``, ``volume``, ...), ImageJ's
with ImageJ's names (``Area``, ``Mean``, ``Perim.``, ...). An intensity column appears once per channel with the
suffix ``_c1``, ``_c2``, ... (1-based, as ImageJ numbers channels), and without a suffix for a single-channel
image (:func:`channel_column`).

CSV (:func:`write_table`): the header, then one line per row; floats at full precision (``repr``: the float
read back is the float written), integers as integers, text cells that a spreadsheet would run as a formula
quoted (:func:`cpsnake.io.tables.cell`). An empty table is its header alone.

pandas is imported by the functions that build a table, not by this module: the window-by-window writers
(:mod:`cpsnake.export.blockout`) take the column names and the formatting from here for steps that write
no table (ROIs).
"""

from __future__ import annotations

import csv
import os
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from cpsnake.io.outputs import atomic_output
from cpsnake.io.tables import cell

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "IMAGEJ_ORDER",
    "INTENSITY_COLUMNS",
    "SHAPE_COLUMNS",
    "QUALITY_COLUMNS",
    "SHAPE_COLUMNS_3D",
    "INTENSITY_COLUMNS_3D",
    "INT_COLUMNS",
    "channel_column",
    "columns",
    "columns_3d",
    "new_table",
    "formatted",
    "write_table",
]

INTENSITY_COLUMNS = ["Mean", "StdDev", "Min", "Max", "XM", "YM", "IntDen", "RawIntDen"]
IMAGEJ_ORDER = [
    "Area", "Mean", "StdDev", "Min", "Max", "X", "Y", "XM", "YM", "Perim.", "BX", "BY", "Width", "Height",
    "Major", "Minor", "Angle", "Circ.", "Feret", "IntDen", "RawIntDen", "FeretX", "FeretY", "FeretAngle",
    "MinFeret", "AR", "Round", "Solidity",
]  # fmt: skip
SHAPE_COLUMNS = [c for c in IMAGEJ_ORDER if c not in INTENSITY_COLUMNS]
QUALITY_COLUMNS = ["flow_error", "cellprob"]

SHAPE_COLUMNS_3D = [
    "label", "voxels", "volume", "surface_area", "equivalent_diameter", "sphericity",
    "centroid_x", "centroid_y", "centroid_z", "bx", "by", "bz", "width", "height", "depth", "slices",
]  # fmt: skip
INTENSITY_COLUMNS_3D = ["Mean", "StdDev", "Min", "Max"]

# integer columns (an empty table keeps their dtype); ``image`` is text, every other column float64
INT_COLUMNS = frozenset(
    ["label", "frame", "slice", "area_px", "voxels", "bx", "by", "bz", "width", "height", "depth", "slices"]
)


def channel_column(name: str, c: int, n_channels: int) -> str:
    """The column of intensity ``name`` for channel ``c`` (0-based) of an image of ``n_channels`` channels."""
    return name if n_channels == 1 else f"{name}_c{c + 1}"


def columns(n_channels: int, *, stack: bool = False, quality: bool = False, frame: bool = False) -> list[str]:
    """Header of the 2-D table for an image with ``n_channels`` channels (ImageJ order, intensity columns per
    channel), with the :data:`QUALITY_COLUMNS` last when ``quality``; ``frame`` / ``stack`` add the 1-based
    ``frame`` / ``slice`` columns of stacks."""
    head = ["label", "image"] + (["frame"] if frame else []) + (["slice"] if stack else []) + ["area_px"]
    for c in IMAGEJ_ORDER:
        if c in INTENSITY_COLUMNS and n_channels > 1:
            head += [channel_column(c, k, n_channels) for k in range(n_channels)]
        else:
            head.append(c)
    return head + (QUALITY_COLUMNS if quality else [])


def columns_3d(n_channels: int) -> list[str]:
    """Header of the 3-D table (:func:`cpsnake.export.measure3d.measure_3d`) for an image of ``n_channels``
    channels."""
    return SHAPE_COLUMNS_3D + [
        channel_column(c, k, n_channels) for c in INTENSITY_COLUMNS_3D for k in range(n_channels)
    ]


def new_table(data: Iterable[Mapping] | Mapping, header: list[str], *, attrs: dict | None = None) -> pd.DataFrame:
    """The measurement table: a DataFrame with the columns ``header``, in that order.

    ``data`` is a list of rows (dicts keyed by column) or a dict of columns; a table without rows keeps its columns
    typed (:data:`INT_COLUMNS` int64, ``image`` text, the others float64). ``attrs`` go to ``DataFrame.attrs``.
    """
    import pandas as pd

    if isinstance(data, Mapping):
        frame = pd.DataFrame(data, columns=header)
    else:
        rows = list(data)
        frame = (
            pd.DataFrame(rows, columns=header)
            if rows
            else pd.DataFrame(
                {
                    c: pd.Series(dtype="int64" if c in INT_COLUMNS else "str" if c == "image" else "float64")
                    for c in header
                }
            )
        )
    frame.attrs.update(attrs or {})
    return frame


def formatted(row: Mapping) -> dict:
    """A table row as :func:`write_table` writes it: floats at full precision (``repr``), text cells that a
    spreadsheet would run as a formula quoted (:func:`cpsnake.io.tables.cell`)."""
    return {k: (repr(float(v)) if isinstance(v, (float, np.floating)) else cell(v)) for k, v in row.items()}


def write_table(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write a measurement table (:func:`new_table`) as CSV (see the module docstring), atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(table.columns), extrasaction="raise")
            w.writeheader()
            for r in table.to_dict("records"):
                w.writerow(formatted(r))
