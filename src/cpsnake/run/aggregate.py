"""``cpsnake aggregate``: the run's tables from the batches' manifests and per-image files.

    cpsnake aggregate --samples results/samples.tsv --results results \
        --out-measurements results/measurements.csv --out-summary results/summary.csv --out-failed results/failed.csv
    cpsnake aggregate --check results/failed.csv --done results/work/check.done

Inputs: the samples table (``cpsnake samples``) and, for each batch, the step manifests under
``RESULTS/work/BATCH/`` with the per-image files they list (see :mod:`cpsnake.run.batch` and
:mod:`cpsnake.run.layout`). The tables cover exactly the samples of the table, in its (name) order:

``measurements.csv``: every row of every image's ``measurements/NAME.csv``, with an ``image`` column
first. Images with no cells add no rows; when no image has cells the file still has its header.

``summary.csv``: one row per image whose masks were made, columns

- ``image``: the name;
- ``cells``: number of labels in the mask;
- ``median_diameter_px``: median equivalent diameter in pixels, 2 * sqrt(area / pi) for 2-D masks,
  (6 * volume / pi) ** (1/3) for 3-D masks; empty when there are no cells;
- ``median_diameter`` and ``unit``: the same in the mask's calibrated unit (2-D masks with a pixel
  size only, area * pixel height * pixel width), else empty;
- ``time_s``: seconds of network inference plus mask reconstruction for the image (from the manifests;
  an image's share of a pooled network batch is the time between its flows and the previous image's).

``failed.csv``: one row per image that failed, columns ``image``, ``step`` (``samples``, ``normalize``,
... the first step that failed it) and ``reason`` (its one-line error); header only when none failed.

All or nothing: an image that failed at any step has no row in ``summary.csv`` and ``measurements.csv``, and
its files that earlier steps wrote (``masks/NAME.tif`` and ``.zarr``, ``rois/NAME.zip``,
``measurements/NAME.csv``, ``geojson/NAME.geojson``, ``overlays/NAME.png``) are removed once the tables are
written: a failed image leaves only its ``logs/images/NAME.log`` and its ``failed.csv`` row. Text cells that a
spreadsheet would run as a formula are quoted (:mod:`cpsnake.io.tables`).

``--check FAILED.csv --done FILE``: exit 1 and say how many images failed (each on one line) when the
table has rows, else write ``FILE``: the workflow's last job, so that the run's exit code says that an
image failed while every table is written for the others.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cpsnake.errors import CpsnakeError, guard, library_text
from cpsnake.run import batch, samples
from cpsnake.run.layout import Paths

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SUMMARY_COLUMNS",
    "equivalent_diameters",
    "summarize_mask",
    "concat_measurements",
    "outcomes",
    "check",
    "main",
]

SUMMARY_COLUMNS = ["image", "cells", "median_diameter_px", "median_diameter", "unit", "time_s"]


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
    from cpsnake.engine.dynamics import compact

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


def _read_measurements(path) -> "pd.DataFrame":
    import pandas as pd

    from cpsnake.io.files import regular_file
    from cpsnake.io.tables import read_frame

    regular_file(path, "a cpsnake measure output (CSV)")
    try:
        return read_frame(pd.read_csv(path))
    except pd.errors.EmptyDataError:  # a 0-byte file: no columns, no rows
        return pd.DataFrame()
    except (OSError, ValueError) as exc:
        raise CpsnakeError(
            f"{path}: cannot be read as a CSV table ({library_text(exc)}); expected a cpsnake measure "
            "output; run `cpsnake measure` again for this image"
        ) from None


FAILED_COLUMNS = ["image", "step", "reason"]


def outcomes(samples_tsv, results) -> tuple[list, dict, list[dict]]:
    """(samples, {name: {step: Outcome}}, failed rows) of a run, from its samples table and manifests."""
    table = sorted(samples.read_table(samples_tsv), key=lambda s: s.sample)
    by_step: dict[str, dict] = {s.sample: {} for s in table}
    failed = []
    for name in sorted({s.batch for s in table if s.batch}):
        paths = Paths(Path(results), name)
        for step in batch.STEPS:
            for o in batch.read_manifest(paths.manifest(step)):
                by_step[o.sample][step] = o
    for s in table:
        if s.status != "ok":
            failed.append({"image": s.sample, "step": "samples", "reason": s.reason})
            continue
        for step in batch.STEPS:
            o = by_step[s.sample].get(step)
            if o is not None and o.status == "failed":
                failed.append({"image": s.sample, "step": step, "reason": o.reason})
                break
    return table, by_step, failed


def check(failed_csv, done) -> int:
    """Exit code of the run's last job: 1 (with each failed image on stderr) if ``failed_csv`` has rows."""
    import pandas as pd

    from cpsnake.io.files import regular_file
    from cpsnake.io.outputs import atomic_output
    from cpsnake.io.tables import read_frame

    what = "the failed.csv that `cpsnake aggregate` writes"
    regular_file(failed_csv, what)
    try:
        rows = read_frame(pd.read_csv(failed_csv, dtype=str, keep_default_na=False))
    except (OSError, ValueError) as exc:
        raise CpsnakeError(
            f"{failed_csv}: cannot be read as a CSV table ({type(exc).__name__}); expected {what}; "
            "run `cpsnake aggregate` again"
        ) from None
    if len(rows):
        for r in rows.itertuples():
            print(f"{r.image}: failed at {r.step}: {r.reason}", file=sys.stderr)
        print(
            f"cpsnake aggregate: {len(rows)} image(s) failed, listed in {failed_csv}; the tables hold the others",
            file=sys.stderr,
        )
        return 1
    with atomic_output(done) as tmp:
        tmp.write_text("every image of the run was segmented\n")
    return 0


@guard("aggregate")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpsnake aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", metavar="TSV", help="the samples table (`cpsnake samples`)")
    parser.add_argument("--results", metavar="DIR", help="the results folder holding work/ and the per-image files")
    parser.add_argument("--out-measurements", metavar="CSV", help="all cells, with an image column")
    parser.add_argument("--out-summary", metavar="CSV", help="one row per segmented image")
    parser.add_argument("--out-failed", metavar="CSV", help="one row per failed image")
    parser.add_argument("--check", metavar="CSV", help="a failed.csv: exit 1 if it lists an image")
    parser.add_argument("--done", metavar="FILE", help="with --check: written when no image failed")
    from cpsnake.io import limits

    limits.add_option(parser)
    args = parser.parse_args(argv)
    if args.check:
        if not args.done:
            parser.error("--check needs --done FILE")
        return check(args.check, args.done)
    missing = [
        f"--{k.replace('_', '-')}"
        for k in ("samples", "results", "out_measurements", "out_summary", "out_failed")
        if getattr(args, k) is None
    ]
    if missing:
        parser.error(f"missing {', '.join(missing)}")

    import pandas as pd

    from cpsnake.io.labels import read_labels
    from cpsnake.io.outputs import all_or_nothing, atomic_output, discard
    from cpsnake.io.tables import to_csv

    table, by_step, failed = outcomes(args.samples, args.results)
    failed_names = {f["image"] for f in failed}
    tables, rows = [], []
    for s in table:
        if s.sample in failed_names:  # its files are removed below: all of an image's files or none
            continue
        done = by_step[s.sample]
        paths = Paths(Path(args.results), s.batch)
        if "measure" in done and done["measure"].status == "ok":
            tables.append((s.sample, _read_measurements(paths.measurements(s.sample))))
        if "reconstruct" in done and done["reconstruct"].status == "ok":
            labels, meta = read_labels(paths.masks(s.sample), max_pixels=args.max_pixels)
            row = {"image": s.sample, **summarize_mask(labels, meta.get("pixel_size"), meta.get("unit"))}
            row["time_s"] = done["infer"].seconds + done["reconstruct"].seconds
            rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary = summary.round({"median_diameter_px": 4, "median_diameter": 4, "time_s": 3})
    with all_or_nothing():
        with atomic_output(args.out_measurements) as tmp:
            to_csv(concat_measurements(tables), tmp)
        with atomic_output(args.out_summary) as tmp:
            to_csv(summary, tmp)
        with atomic_output(args.out_failed) as tmp:
            to_csv(pd.DataFrame(failed, columns=FAILED_COLUMNS), tmp)
    for s in table:
        if s.sample in failed_names:
            for path in Paths(Path(args.results), s.batch).image_files(s.sample):
                discard(path)
    print(f"cpsnake aggregate: {len(table)} images, {len(rows)} segmented, {len(failed)} failed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
