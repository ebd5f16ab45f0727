"""Training augmentations: one random geometric warp (image and flow targets together) + intensity changes.

Geometry. :func:`random_warp` draws a rotation (any angle), a flip, and a scale that brings the image's
median object diameter to a log-uniform draw in ``diam_range`` (default 7.5-120 px), plus a crop
position; :func:`warp` applies it: the image channels and flow vectors are resampled bilinearly, and the
flow *vectors* are rotated/flipped with the same orthogonal matrix (scaling does not change a unit
vector's direction), then renormalised to unit length. The cell-probability target is resampled
bilinearly (the loss thresholds it at 0.5). So transforming precomputed flows agrees with recomputing
flows from the transformed label image (tests/training/test_train.py checks that).

Axis order: images and targets are (C, Y, X); a geometric map acts on (y, x) column vectors:
``out - c_out = L @ (in - c_in)`` with ``L = s * Q``, ``Q`` orthogonal (rotation, possibly a flip).

Intensity (on a percentile-normalised (3, Y, X) crop, 0 -> background, 1 -> bright; probabilities in
:data:`INTENSITY_P`): channel permutation, dropping a channel, grey conversion (mean into one channel),
contrast inversion, brightness/contrast jitter, Gaussian blur (isotropic or anisotropic), downsampling and
back, Poisson noise. Every function takes a ``numpy.random.Generator`` and has no other state.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = ["INTENSITY_P", "random_warp", "warp", "intensity", "augment"]

INTENSITY_P = {
    "permute": 0.5,
    "drop": 0.2,
    "grey": 0.2,
    "invert": 0.25,
    "jitter": 0.5,
    "blur": 0.2,
    "aniso_blur": 0.1,
    "downsample": 0.1,
    "poisson": 0.2,
}


def random_warp(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    diameter: float | None,
    diam_range: tuple[float, float] = (7.5, 120.0),
    bsize: int = 256,
    rotate: bool = True,
    flip: bool = True,
) -> dict:
    """Draw one geometric transform for an input of ``shape`` (Y, X).

    Returns
    -------
    dict
        ``L`` (2, 2) forward linear map on (y, x), ``c_in`` (2,) centre in input coordinates,
        ``bsize`` (output side), ``scale`` (float). With ``diameter`` None or <= 0 the scale is 1.
    """
    if diameter and diameter > 0:
        lo, hi = np.log(diam_range[0]), np.log(diam_range[1])
        scale = float(np.exp(rng.uniform(lo, hi)) / diameter)
    else:
        scale = 1.0
    theta = rng.uniform(0, 2 * np.pi) if rotate else 0.0
    c, s = math.cos(theta), math.sin(theta)
    q = np.array([[c, -s], [s, c]])
    if flip and rng.random() < 0.5:
        q = q @ np.diag([1.0, -1.0])  # flip x before rotating
    half = bsize / 2 / scale  # half the crop side, in input pixels
    c_in = np.empty(2)
    for ax in range(2):
        n = shape[ax]
        c_in[ax] = rng.uniform(half - 0.5, n - half - 0.5) if n > 2 * half else (n - 1) / 2
    return {"L": scale * q, "c_in": c_in, "bsize": int(bsize), "scale": scale}


def warp(arr: np.ndarray, t: dict, *, order: int = 1, vectors: bool = False) -> np.ndarray:
    """Resample ``arr`` (C, Y, X) with transform ``t`` -> (C, bsize, bsize) float32 (0 outside).

    With ``vectors=True`` ``arr`` is (2, Y, X) = (dY, dX) unit vectors: they are also multiplied by
    ``Q = L / scale`` and renormalised (zero vectors stay zero).
    """
    L, c_in, b = t["L"], t["c_in"], t["bsize"]
    inv = np.linalg.inv(L)
    c_out = np.full(2, (b - 1) / 2)
    offset = c_in - inv @ c_out  # input = inv @ out + offset
    out = np.stack(
        [
            ndi.affine_transform(
                a.astype(np.float32), inv, offset=offset, output_shape=(b, b), order=order, mode="constant", cval=0.0
            )
            for a in arr
        ]
    )
    if vectors:
        q = L / t["scale"]
        out = np.einsum("ij,jyx->iyx", q, out).astype(np.float32)
        norm = np.sqrt((out**2).sum(axis=0))
        out = np.where(norm > 1e-3, out / np.maximum(norm, 1e-3), 0.0).astype(np.float32)
    return out


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (Y, X) to ``shape`` (pixel centres aligned)."""
    zy, zx = shape[0] / a.shape[0], shape[1] / a.shape[1]
    ys = (np.arange(shape[0]) + 0.5) / zy - 0.5
    xs = (np.arange(shape[1]) + 0.5) / zx - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return ndi.map_coordinates(a, [yy, xx], order=1, mode="nearest")


def intensity(img: np.ndarray, rng: np.random.Generator, p: dict | None = None) -> np.ndarray:
    """Random intensity augmentations of a normalised crop ``img`` (3, Y, X) float32 -> same shape.

    Channels that are all zero are treated as absent (images with fewer than 3 channels are zero-padded).
    """
    p = INTENSITY_P if p is None else p
    img = img.astype(np.float32, copy=True)
    present = [c for c in range(img.shape[0]) if np.any(img[c] != 0)]
    if rng.random() < p["drop"] and len(present) > 1:
        img[rng.choice(present)] = 0
    if rng.random() < p["grey"] and len(present) > 1:
        grey = img[present].mean(axis=0)
        img[:] = 0
        img[0] = grey
    if rng.random() < p["permute"]:
        img = img[rng.permutation(img.shape[0])]
    present = np.array([np.any(img[c] != 0) for c in range(img.shape[0])])
    if rng.random() < p["invert"]:
        img[present] = 1.0 - img[present]
    if rng.random() < p["jitter"]:
        gain = rng.uniform(0.6, 1.4)
        shift = rng.uniform(-0.2, 0.2)
        img[present] = img[present] * gain + shift
    if rng.random() < p["blur"]:
        sig = rng.uniform(0.5, 2.5)
        img = np.stack([ndi.gaussian_filter(c, sig) for c in img])
    elif rng.random() < p["aniso_blur"]:
        sig = [rng.uniform(0.1, 0.5), rng.uniform(1.5, 4.0)]
        rng.shuffle(sig)
        img = np.stack([ndi.gaussian_filter(c, sig) for c in img])
    if rng.random() < p["downsample"]:
        f = rng.uniform(2, 4)
        small = (max(1, round(img.shape[1] / f)), max(1, round(img.shape[2] / f)))
        img = np.stack([_resize(_resize(c, small), img.shape[1:]) for c in img])
    if rng.random() < p["poisson"]:
        lam = float(np.exp(rng.uniform(np.log(5), np.log(200))))
        img[present] = rng.poisson(np.clip(img[present], 0, None) * lam) / lam
    img[~present] = 0
    return img.astype(np.float32)


def augment(
    img: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    *,
    diameter: float | None,
    diam_range: tuple[float, float] = (7.5, 120.0),
    bsize: int = 256,
    p: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: warp ``img`` (3, Y, X) and ``target`` (3, Y, X) = (cellprob, dY, dX) together,
    then change the image's intensities.

    Returns
    -------
    img : (3, bsize, bsize) float32 ; target : (3, bsize, bsize) float32 (cellprob in [0, 1], unit dY, dX)
    """
    t = random_warp(rng, img.shape[1:], diameter=diameter, diam_range=diam_range, bsize=bsize)
    x = warp(img, t, order=1)
    prob = warp(target[:1], t, order=1)
    flows = warp(target[1:], t, order=1, vectors=True)
    return intensity(x, rng, p), np.concatenate([prob, flows])
