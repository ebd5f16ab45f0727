"""``cpsnake aggregate``: join per-image results into the run's two tables.

    cpsnake aggregate --measurements m/A.csv m/B.csv --masks masks/A.tif masks/B.tif \\
        [--benchmarks bench/infer/A.tsv bench/reconstruct/A.tsv ...] \\
        --out-measurements measurements.csv --out-summary summary.csv

An image's name is its file name without the extension; measurement tables and masks are matched by it.

``measurements.csv``: every row of every per-image table, with an ``image`` column first, images in
the order given. Images with no cells add no rows; when no image has cells the file still has its header.

``summary.csv``: one row per image, columns

- ``image``: the name;
- ``cells``: number of labels in the mask;
- ``median_diameter_px``: median equivalent diameter in pixels, 2 * sqrt(area / pi) for 2-D masks,
  (6 * volume / pi) ** (1/3) for 3-D masks; empty when there are no cells;
- ``median_diameter`` and ``unit``: the same in the mask's calibrated unit (2-D masks with a pixel
  size only, area * pixel height * pixel width), else empty;
- ``time_s``: seconds of network inference plus mask reconstruction, the sum of the wall-clock ``s``
  column of the Snakemake benchmark files given for the image (mean over repeats); empty without them.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np

from cpsnake.errors import CpsnakeError, guard

__all__ = [
    "SUMMARY_COLUMNS",
    "image_name",
    "equivalent_diameters",
    "summarize_mask",
    "concat_measurements",
    "benchmark_seconds",
    "main",
]

SUMMARY_COLUMNS = ["image", "cells", "median_diameter_px", "median_diameter", "unit", "time_s"]


def image_name(path: str | os.PathLike) -> str:
    """File name without its extension (``.ome.tif`` counts as one extension)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter in pixels of every label 1..max present.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) integer ndarray
        0 = background.

    Returns
    -------
    (N,) float64
        2 * sqrt(area / pi) for (Y, X); (6 * volume / pi) ** (1/3) for (Z, Y, X); one entry per label
        that has at least one pixel, in label order.
    """
    from cpsnake.dynamics import compact

    counts = np.bincount(compact(np.asarray(labels))[1].ravel())[1:]  # per object, whatever its id
    counts = counts[counts > 0].astype(np.float64)
    if labels.ndim == 3:
        return np.cbrt(6.0 * counts / math.pi)
    return 2.0 * np.sqrt(counts / math.pi)


def summarize_mask(labels: np.ndarray, pixel_size: tuple[float, float] | None, unit: str | None) -> dict:
    """``cells``, ``median_diameter_px``, ``median_diameter`` and ``unit`` of one mask (NaN / "" when undefined)."""
    diam = equivalent_diameters(labels)
    med = float(np.median(diam)) if diam.size else math.nan
    calibrated, cal_unit = math.nan, ""
    if labels.ndim == 2 and pixel_size is not None and diam.size:
        calibrated = med * math.sqrt(float(pixel_size[0]) * float(pixel_size[1]))
        cal_unit = unit or ""
    return {"cells": int(diam.size), "median_diameter_px": med, "median_diameter": calibrated, "unit": cal_unit}


def concat_measurements(tables: list[tuple[str, "pd.DataFrame"]]) -> "pd.DataFrame":
    """Stack per-image tables under an ``image`` column (first); columns in order of first appearance."""
    import pandas as pd

    columns: list[str] = ["image"]
    frames = []
    for name, table in tables:
        columns += [c for c in table.columns if c not in columns]
        frames.append(table.assign(image=name))
    rows = [f for f in frames if len(f)]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.concat(rows, ignore_index=True)[columns]


def benchmark_seconds(path: str | os.PathLike) -> float:
    """Wall-clock seconds in a Snakemake benchmark TSV (column ``s``; the mean when it holds repeats)."""
    import pandas as pd

    from cpsnake.files import regular_file

    regular_file(path, "a Snakemake benchmark TSV")
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as exc:
        raise CpsnakeError(f"{path}: cannot be read as a Snakemake benchmark file ({exc}); expected a TSV with an 's' "
                           "column; delete it and let Snakemake write it again") from None
    if "s" not in table.columns or not len(table):
        raise CpsnakeError(f"{path}: found columns {list(table.columns)} and {len(table)} rows; expected a Snakemake benchmark TSV with an 's' column")
    return float(table["s"].mean())


def _read_measurements(path: str) -> "pd.DataFrame":
    import pandas as pd

    from cpsnake.files import regular_file

    regular_file(path, "a cpsnake measure output (CSV)")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a 0-byte file: no columns, no rows
        return pd.DataFrame()
    except (OSError, ValueError) as exc:
        raise CpsnakeError(f"{path}: cannot be read as a CSV table ({exc}); expected a cpsnake measure output; "
                           "run `cpsnake measure` again for this image") from None


def _names(paths: list[str], what: str) -> list[str]:
    names = [image_name(p) for p in paths]
    seen: dict[str, str] = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise CpsnakeError(f"{path}: found a second {what} for image {name!r} ({seen[name]}); expected one per image")
        seen[name] = path
    return names


@guard("aggregate")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpsnake aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measurements", nargs="+", required=True, metavar="CSV", help="per-image measurement tables")
    parser.add_argument("--masks", nargs="+", required=True, metavar="TIF", help="per-image label images")
    parser.add_argument("--benchmarks", nargs="*", default=[], metavar="TSV", help="Snakemake benchmark files (summed per image)")
    parser.add_argument("--out-measurements", required=True, metavar="CSV", help="all cells, with an image column")
    parser.add_argument("--out-summary", required=True, metavar="CSV", help="one row per image")
    from cpsnake import limits

    limits.add_option(parser)
    args = parser.parse_args(argv)

    import pandas as pd

    from cpsnake.io import atomic_output, read_labels

    names = _names(args.measurements, "measurement table")
    mask_of = dict(zip(_names(args.masks, "mask"), args.masks))
    if set(mask_of) != set(names):
        odd = sorted(set(mask_of) ^ set(names))
        raise CpsnakeError(
            f"--masks / --measurements: found images {odd} in only one of the lists; expected the same images in both"
        )
    seconds: dict[str, float] = {}
    for path in args.benchmarks:
        name = image_name(path)
        if name not in mask_of:
            raise CpsnakeError(f"{path}: found a benchmark file for image {name!r}, expected one of the images given")
        seconds[name] = seconds.get(name, 0.0) + benchmark_seconds(path)

    table = concat_measurements([(n, _read_measurements(p)) for n, p in zip(names, args.measurements)])
    rows = []
    for name in names:
        labels, meta = read_labels(mask_of[name], max_pixels=args.max_pixels)
        row = {"image": name, **summarize_mask(labels, meta.get("pixel_size"), meta.get("unit"))}
        row["time_s"] = seconds.get(name, math.nan)
        rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary = summary.round({"median_diameter_px": 4, "median_diameter": 4, "time_s": 3})

    with atomic_output(args.out_measurements) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_output(args.out_summary) as tmp:
        summary.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
