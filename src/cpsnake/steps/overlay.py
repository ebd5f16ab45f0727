"""``cpsnake overlay IMAGE LABELS OUT.png``: a quality-control picture of a segmentation.

The picture is :func:`cpsnake.export.overlay.render`'s: the image with auto-contrast, every label's outline in a
colour chosen from its number. Stacks show their middle plane. Labels must have the image's Y and X size.
A label image segmented block by block is read by region, every k-th pixel (:func:`overlay_file_by_window`,
the same bytes).

:mod:`cpsnake.export.blockout` is imported by :func:`overlay_file_by_window`: it brings the measurement engine
(scipy.ndimage, about 0.7 s) that ``cpsnake overlay`` does not need.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import numpy as np

from cpsnake.errors import CpsnakeError, guard
from cpsnake.export.overlay import render, write_png
from cpsnake.io import limits
from cpsnake.io.inputs import open_regions, read_image
from cpsnake.io.labels import read_labels

__all__ = ["overlay_file", "overlay_file_by_window", "main"]


def _plane(data: np.ndarray, what: str, path: str) -> np.ndarray:
    """Middle plane of a stack: (Z, C, Y, X) -> (C, Y, X) for images, (Z, Y, X) -> (Y, X) for labels."""
    if (what == "image" and data.ndim == 4) or (what == "labels" and data.ndim == 3):
        return data[data.shape[0] // 2]
    return data


@guard("overlay")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpsnake overlay", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="the segmented image (TIFF, PNG or JPEG)")
    parser.add_argument("labels", help="label image (cpsnake reconstruct output)")
    parser.add_argument("out", help="output PNG")
    limits.add_option(parser)
    args = parser.parse_args(argv)

    overlay_file(args.image, args.labels, args.out, max_pixels=args.max_pixels)
    return 0


def overlay_file(image_path, labels_path, out_png, *, max_pixels: int | None = None) -> None:
    """Read an image and its labels, write the QC picture ``out_png`` (middle plane of a stack)."""
    img, _ = read_image(image_path, max_pixels=max_pixels)
    labels, _ = read_labels(labels_path, max_pixels=max_pixels)
    img, labels = _plane(img, "image", image_path), _plane(labels, "labels", labels_path)
    if labels.shape != img.shape[1:]:
        raise CpsnakeError(
            f"{labels_path}: found labels of size {labels.shape} (Y, X), expected the image's size "
            f"{img.shape[1:]} ({image_path}); pass the label image made from this image"
        )
    write_png(out_png, render(img, labels))


def overlay_file_by_window(image_path, labels_path, out_png, *, max_pixels: int | None = None) -> None:
    """:func:`overlay_file` of a 2-D image and its label TIFF, both read by region (``max_pixels`` bounds the image's
    storage chunks), every k-th pixel (:func:`cpsnake.export.blockout.write_overlay`: the same bytes)."""
    from cpsnake.export.blockout import TiffLabels, write_overlay  # lazy: see the module docstring

    with (
        contextlib.closing(TiffLabels(labels_path)) as labels,
        contextlib.closing(open_regions(image_path, max_pixels=max_pixels)) as image,
    ):
        if tuple(image.shape[1:]) != labels.shape:
            raise CpsnakeError(
                f"{labels_path}: found labels of size {labels.shape} (Y, X), expected the image's size "
                f"{tuple(image.shape[1:])} ({image_path}); pass the label image made from this image"
            )
        write_overlay(out_png, image, labels)


if __name__ == "__main__":
    sys.exit(main())
