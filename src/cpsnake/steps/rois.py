"""``cpsnake rois``: label images <-> ImageJ ROI sets (``RoiSet.zip``), files in and out.

Usage::

    cpsnake rois LABELS.tif OUT.zip [--stack-axis z|t]
    cpsnake rois --import ROIS.zip --like IMAGE OUT.tif

Export (:func:`export_file`): one ROI per label (per slice for 3-D label images), pixel-exact, as
:mod:`cpsnake.export.rois` encodes them. The third axis of a 3-D label image is z unless ``--stack-axis`` or
the TIFF's ImageJ metadata says t. An image without labels gives a valid zip with no entries and a message
on stderr. A label image segmented block by block is read by region and its ROIs written window by window
(:func:`export_file_by_window`, the same bytes).

Import (:func:`import_file`): ``--import`` reads an ROI set as Fiji saves it (rectangle, oval, polygon,
freehand, traced, composite made of straight segments; with or without stack positions) and paints one label
per ROI into an image of the shape of ``--like IMAGE`` (its Y, X and, for stacks, its Z), with ImageJ's rule
"pixel centre inside the outline" (even-odd). The label is the ROI name when it is a whole number
(optionally followed by ``-z..``/``-t..``), else the ROI's index (1-based) in the zip. Later ROIs
overwrite earlier ones where they overlap. Each ROI is clipped to the image before anything is
allocated (a ROI wholly outside it is skipped and named in a warning). Zip entries are read with size
limits and their names are never used as paths. A malformed, encrypted or non-area ROI (line, point,
text) or a NaN coordinate is an error naming the zip and the entry. The output keeps the calibration
of ``--like IMAGE``. Reading and painting live in :mod:`cpsnake.export.roi_import`.

tifffile is imported by :func:`_stack_axis_of`, the one function here that opens a TIFF itself, and
:mod:`cpsnake.export.blockout` by :func:`export_file_by_window`: it brings the measurement engine (scipy.ndimage,
about 0.7 s) that ``cpsnake rois`` does not need.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np

from cpsnake.errors import CpsnakeError, guard
from cpsnake.export.roi_import import read_rois, rois_to_labels
from cpsnake.export.rois import labels_to_rois, write_rois
from cpsnake.io import limits
from cpsnake.io.inputs import read_image
from cpsnake.io.labels import read_labels, write_labels

__all__ = ["export_file", "export_file_by_window", "import_file", "main"]


def _stack_axis_of(path: str | os.PathLike) -> str:
    """'t' when a 3-D ImageJ TIFF stores its third axis as frames, else 'z'."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            ij = tif.imagej_metadata or {}
            if int(ij.get("frames", 1)) > 1 and int(ij.get("slices", 1)) <= 1:
                return "t"
            axes = tif.series[0].axes if tif.series else ""
            if "T" in axes and "Z" not in axes:
                return "t"
    except Exception:
        pass
    return "z"


def _image_shape(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[tuple[int, ...], dict]:
    """(Y, X) or (Z, Y, X) shape of an image (as :func:`cpsnake.io.inputs.read_image` reads it) and its calibration."""
    data, meta = read_image(path, max_pixels=max_pixels)  # (C, Y, X) or (Z, C, Y, X)
    if data.ndim == 5:
        raise CpsnakeError(
            f"{path}: found a time series of Z stacks (axes {meta['axes']!r}); expected a 2-D image or one stack "
            "(Z or T) for --like; import the ROIs of one time point at a time (Fiji: Image > Duplicate with one frame)"
        )
    shape = data.shape[-2:] if data.ndim == 3 else (data.shape[0],) + data.shape[-2:]
    return tuple(int(s) for s in shape), {
        "pixel_size": meta.get("pixel_size"),
        "unit": meta.get("unit"),
        "z_step": meta.get("z_step"),
        "frame_interval": meta.get("frame_interval"),
    }


@guard("rois")
def main(argv: list[str] | None = None) -> int:
    """``cpsnake rois LABELS OUT.zip`` or ``cpsnake rois --import ROIS.zip --like IMAGE OUT.tif``."""
    ap = argparse.ArgumentParser(
        prog="cpsnake rois",
        description="Label image -> ImageJ RoiSet.zip (pixel-exact traced outlines), or back with --import.",
    )
    ap.add_argument("inputs", nargs="+", help="LABELS.tif OUT.zip  |  with --import: OUT.tif")
    ap.add_argument("--import", dest="import_", metavar="ROIS.zip", help="read an ImageJ ROI set instead")
    ap.add_argument("--like", metavar="IMAGE", help="with --import: image whose shape and calibration to use")
    ap.add_argument(
        "--stack-axis",
        choices=("z", "t"),
        default=None,
        help="meaning of the third axis of a 3-D label image (default: from the TIFF's ImageJ metadata, else z)",
    )
    limits.add_option(ap)
    args = ap.parse_args(argv)

    if args.import_:
        if len(args.inputs) != 1 or not args.like:
            ap.error("--import ROIS.zip needs --like IMAGE and one output path OUT.tif")
        import_file(args.import_, args.like, args.inputs[0], stack_axis=args.stack_axis, max_pixels=args.max_pixels)
        return 0
    if len(args.inputs) != 2:
        ap.error("expected LABELS.tif OUT.zip")
    export_file(*args.inputs, stack_axis=args.stack_axis, max_pixels=args.max_pixels)
    return 0


def export_file(labels_path, out_zip, *, stack_axis: str | None = None, max_pixels: int | None = None) -> int:
    """Read a label image and write its RoiSet.zip; return the number of ROIs (a note on stderr when 0).

    ``stack_axis`` (``"z"`` or ``"t"``) names the third axis of a 3-D label image; None reads it from the
    TIFF's ImageJ metadata (else z).
    """
    labels, _ = read_labels(labels_path, max_pixels=max_pixels)
    rois = labels_to_rois(labels, stack_axis=stack_axis or _stack_axis_of(labels_path))
    write_rois(out_zip, rois)
    if not rois:
        print(f"{labels_path}: no labels (image is all background); wrote {out_zip} with no ROIs", file=sys.stderr)
    return len(rois)


def export_file_by_window(labels_path, out_zip) -> int:
    """:func:`export_file` of a 2-D label TIFF read by region, its ROIs written window by window
    (:mod:`cpsnake.export.blockout`: the same bytes); returns the number of ROIs."""
    from cpsnake.export.blockout import TiffLabels, write_objects  # lazy: see the module docstring

    with contextlib.closing(TiffLabels(labels_path)) as labels:
        n = write_objects(labels, rois_path=out_zip)
    if not n:
        print(f"{labels_path}: no labels (image is all background); wrote {out_zip} with no ROIs", file=sys.stderr)
    return n


def import_file(rois_zip, like_path, out_path, *, stack_axis: str | None = None, max_pixels: int | None = None) -> int:
    """Paint the ROIs of ``rois_zip`` into a label image of the shape and calibration of ``like_path``, write it to
    ``out_path`` (a note on stderr: ROIs -> labels); return the number of ROIs read.

    ``stack_axis`` names the third axis of a stack ``like_path``; None reads it from its ImageJ metadata (else z).
    """
    shape, cal = _image_shape(like_path, max_pixels)
    axis = stack_axis or _stack_axis_of(like_path)
    rois = read_rois(rois_zip)
    labels = rois_to_labels(rois, shape, stack_axis=axis, source=rois_zip)
    write_labels(
        out_path,
        labels,
        pixel_size=cal["pixel_size"],
        unit=cal["unit"],
        stack_axes=axis.upper() if labels.ndim == 3 else "",
        z_step=cal["z_step"],
        frame_interval=cal["frame_interval"],
    )
    print(f"{out_path}: {len(rois)} ROIs -> {len(np.unique(labels)) - 1} labels", file=sys.stderr)
    return len(rois)


if __name__ == "__main__":
    sys.exit(main())
