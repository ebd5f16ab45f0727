"""``cpsnake measure``: the per-cell measurement table of a label image and its image, files in and out.

Usage::

    cpsnake measure LABELS.tif IMAGE OUT.csv [--flows FLOWS.tif] [--per-slice] [--geojson OUT.geojson]

A 2-D label image gives one row per label, in label order, with ImageJ's Measure columns
(:func:`cpsnake.export.measure.measure_labels`: the columns and their definitions), and with ``--flows
FLOWS.tif`` (the flows the labels were reconstructed from) the quality columns ``flow_error`` and ``cellprob``.
A Z stack gives one row per 3-D object (volume, surface area, sphericity, ...:
:func:`cpsnake.export.measure3d.measure_3d`), or with ``--per-slice`` one row per object and slice with ImageJ's
2-D columns and a ``slice`` column (1-based); a time series one row per object and frame (``frame``, 1-based).
The CSV is :func:`cpsnake.export.table.write_table`'s. ``--geojson OUT.geojson`` also writes the cells as QuPath
GeoJSON carrying their rows (:mod:`cpsnake.export.geojson`; 2-D only, a stack gets a warning and no file);
the table and the GeoJSON are written both or neither.

A label image segmented block by block is read by region and measured window by window
(:func:`measure_file_by_window`, the same bytes, no quality columns).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from cpsnake.errors import CpsnakeError, guard
from cpsnake.export.blockout import TiffLabels, write_objects
from cpsnake.export.geojson import feature_collection, table_rows, warn_stack, write_geojson
from cpsnake.export.measure import measure_labels
from cpsnake.export.measure3d import measure_stack
from cpsnake.export.table import write_table
from cpsnake.io import limits
from cpsnake.io.flows import read_flows
from cpsnake.io.inputs import open_regions, read_image
from cpsnake.io.labels import read_labels
from cpsnake.io.outputs import all_or_nothing

__all__ = ["measure_file", "measure_file_by_window", "main"]


@guard("measure")
def main(argv: list[str] | None = None) -> int:
    """``cpsnake measure LABELS.tif IMAGE OUT.csv``."""
    ap = argparse.ArgumentParser(
        prog="cpsnake measure", description="Per-cell table with ImageJ's Measure definitions."
    )
    ap.add_argument("labels", help="label image (TIFF, 0 = background)")
    ap.add_argument("image", help="the image the labels belong to")
    ap.add_argument("out", help="output CSV")
    ap.add_argument(
        "--flows", default=None, help="the flows the labels came from: adds flow_error and cellprob columns"
    )
    ap.add_argument(
        "--per-slice",
        action="store_true",
        help="Z stacks: one row per object and slice with ImageJ's 2-D columns (default: one row per 3-D "
        "object: volume, surface area, sphericity, ...)",
    )
    ap.add_argument(
        "--geojson",
        default=None,
        metavar="OUT.geojson",
        help="also write the cells as QuPath GeoJSON with these measurements (2-D; see cpsnake.export.geojson)",
    )
    limits.add_option(ap)
    args = ap.parse_args(argv)

    measure_file(
        args.labels,
        args.image,
        args.out,
        max_pixels=args.max_pixels,
        flows_path=args.flows,
        per_slice=args.per_slice,
        geojson_path=args.geojson,
    )
    return 0


def measure_file(
    labels_path,
    image_path,
    out_csv,
    *,
    max_pixels: int | None = None,
    flows_path=None,
    pixel_size: float | None = None,
    per_slice: bool = False,
    geojson_path=None,
) -> int:
    """Read a label image, its image (and flows), write the table ``out_csv``; return the number of rows.

    ``pixel_size`` (square, given by the user) replaces the calibration of the files; without it the
    image's pixel size is used, else the label image's. A Z stack gives one row per 3-D object
    (:func:`cpsnake.export.measure3d.measure_stack`: volume, surface area, ...), or with ``per_slice`` one row
    per object and slice with ImageJ's 2-D columns; a time series (T) one row per object and frame.
    ``geojson_path``: also write the cells with their rows as QuPath GeoJSON (:mod:`cpsnake.export.geojson`; 2-D
    label images only, a stack gets a warning and no file).
    """
    labels, lmeta = read_labels(labels_path, max_pixels=max_pixels)
    img, meta = read_image(image_path, max_pixels=max_pixels)
    name = Path(image_path).name
    cal = (float(pixel_size),) * 2 if pixel_size else (meta.get("pixel_size") or lmeta.get("pixel_size"))
    flows = None
    if flows_path is not None:
        flows, fmeta = read_flows(flows_path, max_pixels=max_pixels)
        size = flows.shape[1:] if fmeta["kind"] != "planes" else (flows.shape[0], *flows.shape[2:])
        if size != labels.shape:
            expected = "(3, Y, X)" if labels.ndim == 2 else "(Z, 3, Y, X) per plane or (4, Z, Y, X)"
            raise CpsnakeError(
                f"{flows_path}: found flows of shape {flows.shape} ({fmeta['kind']}), expected {expected} with the "
                f"size {labels.shape} of the labels {labels_path}; pass the flows the labels were reconstructed from"
            )
        if labels.ndim != 2:
            flows = None  # the quality columns are 2-D only
    if labels.ndim == 2:
        if img.ndim != 3 or img.shape[-2:] != labels.shape:
            raise CpsnakeError(
                f"{image_path}: image of shape {img.shape}, expected (C, {labels.shape[0]}, {labels.shape[1]}) to "
                f"match {labels_path}; pass the image the labels were made from"
            )
        table = measure_labels(labels, img, pixel_size=cal, image_name=name, flows=flows)
    else:
        if img.ndim != 4 or img.shape[0] != labels.shape[0] or img.shape[-2:] != labels.shape[-2:]:
            raise CpsnakeError(
                f"{image_path}: image of shape {img.shape}, expected (Z, C, Y, X) with (Z, Y, X) = {labels.shape} of "
                f"{labels_path}; pass the stack the labels were made from"
            )
        if geojson_path is not None:
            warn_stack(labels_path)
        axes = meta.get("stack_axes") or ("T" if "T" in (lmeta.get("axes") or "") else "Z")
        z_step = meta.get("z_step") or lmeta.get("z_step")
        table = measure_stack(
            labels,
            img,
            axes=axes,
            objects_3d=axes == "Z" and not per_slice,
            image_name=name,
            pixel_size=cal,
            unit=meta.get("unit") or lmeta.get("unit"),
            z_step=z_step,
        )
        write_table(out_csv, table)
        return len(table)
    with all_or_nothing():  # the table and the GeoJSON, or neither
        write_table(out_csv, table)
        if geojson_path is not None:
            write_geojson(geojson_path, feature_collection(labels, rows=table_rows(table), image_name=name))
    return len(table)


def measure_file_by_window(
    labels_path,
    image_path,
    out_csv,
    *,
    pixel_size: float | None = None,
    geojson_path=None,
    max_pixels: int | None = None,
) -> int:
    """:func:`measure_file` (no flows) of a 2-D label TIFF and its image (TIFF or OME-Zarr), both read by region
    (``max_pixels`` bounds the image's storage chunks) and measured window by window (:mod:`cpsnake.export.blockout`:
    the same bytes); returns the number of rows."""
    with (
        contextlib.closing(TiffLabels(labels_path)) as labels,
        contextlib.closing(open_regions(image_path, max_pixels=max_pixels)) as image,
    ):
        cal = (float(pixel_size),) * 2 if pixel_size else (image.meta["pixel_size"] or labels.image.meta["pixel_size"])
        return write_objects(
            labels,
            image,
            table_path=out_csv,
            geojson_path=geojson_path,
            pixel_size=cal,
            image_name=Path(image_path).name,
        )


if __name__ == "__main__":
    sys.exit(main())
