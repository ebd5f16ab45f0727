"""The quality-control picture of a segmentation: label outlines over the image (:func:`render`).

The image is shown with auto-contrast (per channel, 1st and 99.8th percentile -> 0 and 255): a grey
picture of its first channel, or colour when it has three channels (RGB as stored). Every label's
outline (its pixels that touch another label or the background, 4-connectivity) is drawn in a colour
chosen from the label number, so neighbouring cells differ. An image longer than 8,192 px (a slide) is
shown every k-th pixel so that the longer side is at most 8,192.

The PNG is written atomically with Pillow (no partial file under the final name; :func:`write_png`). Labels
must have the image's Y and X size. The command, ``cpsnake overlay`` (which shows a stack's middle plane),
is :mod:`cpsnake.steps.overlay`.

Pillow is imported by :func:`write_png`, which alone uses it.
"""

from __future__ import annotations

import os

import numpy as np

from cpsnake.io.outputs import atomic_output

__all__ = ["MAX_SIDE", "auto_contrast", "outlines", "label_colours", "render", "write_png"]

MAX_SIDE = 8192  # longer images are shown every k-th pixel (see render)


def auto_contrast(img: np.ndarray, *, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Stretch each channel's ``low``..``high`` percentile to 0..255.

    Parameters
    ----------
    img : (C, Y, X) ndarray
        Any real or integer dtype.

    Returns
    -------
    (C, Y, X) uint8
        A constant channel becomes 0.
    """
    img = np.asarray(img)
    if not (img.dtype.kind in "ui" and img.dtype.itemsize <= 4):
        img = img.astype(np.float64)  # integers up to 32 bits give the same percentiles as their float64 copy
    out = np.zeros(img.shape, dtype=np.uint8)
    for c in range(img.shape[0]):
        lo, hi = np.percentile(img[c], [low, high])
        if hi > lo:
            for y in range(0, img.shape[1], 1024):  # the float64 arithmetic a band of rows at a time
                band = img[c, y : y + 1024]
                out[c, y : y + 1024] = np.round(np.clip((band - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean ``(Y, X)`` mask of label pixels with a 4-neighbour of another value (image border excluded).

    Parameters
    ----------
    labels : (Y, X) integer ndarray
        0 = background.
    """
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    dy = lab[1:, :] != lab[:-1, :]
    dx = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge & (lab > 0)


def label_colours(ids: np.ndarray) -> np.ndarray:
    """Bright, well-spread RGB colours for label numbers: hue = id * golden ratio (mod 1).

    Parameters
    ----------
    ids : (N,) integer ndarray

    Returns
    -------
    (N, 3) uint8
    """
    hue = np.mod(np.asarray(ids, dtype=np.float64) * 0.618033988749895, 1.0)
    # HSV -> RGB with saturation 0.9 and value 1
    k = np.mod(np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6.0, 6.0)
    rgb = 1.0 - 0.9 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def render(img: np.ndarray, labels: np.ndarray, *, max_side: int | None = None) -> np.ndarray:
    """The overlay picture.

    Parameters
    ----------
    img : (C, Y, X) ndarray
        C = 3 is shown as RGB, otherwise the first channel in grey.
    labels : (Y, X) integer ndarray
    max_side : an image longer than this (a slide; default :data:`MAX_SIDE`) is shown every k-th pixel,
        k = ceil(longest side / max_side), its labels likewise (never averaged), so the picture stays
        viewable and its memory bounded

    Returns
    -------
    (ceil(Y / k), ceil(X / k), 3) uint8 RGB (k = 1 up to ``max_side``)
    """
    if img.ndim != 3 or labels.shape != img.shape[1:]:
        raise ValueError(f"image {img.shape} (C, Y, X) and labels {labels.shape} (Y, X) do not match")
    k = -(-max(labels.shape) // (max_side or MAX_SIDE))
    if k > 1:
        img, labels = img[:, ::k, ::k], labels[::k, ::k]
    shown = img if img.shape[0] == 3 else img[:1]
    grey_or_rgb = auto_contrast(shown)
    rgb = np.empty((*grey_or_rgb.shape[1:], 3), np.uint8)  # C Y X -> Y X C (grey into all three)
    rgb[...] = grey_or_rgb[0, ..., np.newaxis] if grey_or_rgb.shape[0] == 1 else np.moveaxis(grey_or_rgb, 0, -1)
    edge = outlines(labels)
    rgb[edge] = label_colours(labels[edge])
    return rgb


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write a ``(Y, X, 3)`` uint8 RGB array as PNG, atomically."""
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")
