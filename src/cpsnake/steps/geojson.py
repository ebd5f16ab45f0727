"""Label images -> QuPath-compatible GeoJSON: one FeatureCollection of cell polygons per image.

Usage::

    cpsnake geojson LABELS.tif OUT.geojson [--table MEASUREMENTS.csv] [--object-type detection|cell|annotation]

``cpsnake geojson`` reads a 2-D label image (and the measurement CSV of these labels) and writes its
FeatureCollection (:func:`export_file`): one Feature per label, as :mod:`cpsnake.export.geojson` builds them, with
the numeric values of the label's row of the table as its ``measurements``. (``cpsnake measure ... --geojson
OUT.geojson``, ``cpsnake segment --geojson`` and the workflow's ``geojson: true`` write the same file with the
table's measurements.) A label stack is refused: QuPath's GeoJSON holds one plane per object.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from cpsnake.errors import CpsnakeError, guard
from cpsnake.export.geojson import feature_collection, write_geojson
from cpsnake.io import limits
from cpsnake.io.labels import read_labels
from cpsnake.io.tables import read_cell

__all__ = ["export_file", "main"]


def export_file(
    labels_path,
    out_path,
    *,
    table=None,
    object_type: str = "detection",
    max_pixels: int | None = None,
    rows: list[dict] | None = None,
) -> int:
    """Read a 2-D label image (and its measurement table), write its GeoJSON; return the number of features."""
    labels, _ = read_labels(labels_path, max_pixels=max_pixels)
    if labels.ndim != 2:
        raise CpsnakeError(
            f"{labels_path}: found a label stack of shape {labels.shape}, expected a 2-D label image "
            "for GeoJSON (one plane per object in QuPath); export the stack's ROIs instead "
            "(cpsnake rois), or one plane at a time"
        )
    if table is not None:
        with open(table, newline="") as f:
            rows = [{k: read_cell(v) for k, v in r.items()} for r in csv.DictReader(f)]
        if rows and "label" not in rows[0]:
            raise CpsnakeError(
                f"{table}: found columns {list(rows[0])[:5]}..., expected a 'label' column; pass the "
                "table `cpsnake measure` wrote for these labels"
            )
    name = Path(labels_path).name
    fc = feature_collection(labels, rows=rows, image_name=name, object_type=object_type)
    write_geojson(out_path, fc)
    return len(fc["features"])


@guard("geojson")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cpsnake geojson", description=__doc__.splitlines()[0])
    ap.add_argument("labels", help="2-D label image (TIFF, 0 = background)")
    ap.add_argument("out", help="output .geojson")
    ap.add_argument(
        "--table",
        default=None,
        help="the measurement CSV of these labels: its values become each feature's measurements",
    )
    ap.add_argument(
        "--object-type",
        default="detection",
        choices=("detection", "cell", "annotation"),
        help="QuPath object type of the features (default: detection)",
    )
    limits.add_option(ap)
    args = ap.parse_args(argv)
    n = export_file(args.labels, args.out, table=args.table, object_type=args.object_type, max_pixels=args.max_pixels)
    print(f"{args.out}: {n} features", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
