"""Tiles of an image and their blending, and the resizing for a cell diameter (as cellpose 4 does both).

Axis order: images and per-tile outputs are channel-first, ``(C, Y, X)`` and ``(N, C, 256, 256)``.

- Padding: zeros, at least 8 px on each side and up to a multiple of 16 (or up to one whole tile for
  images smaller than a tile), as cellpose, so that the tiles sit where cellpose puts them.
- Tiles: 256x256, ``n = ceil((1 + 2 * overlap) * L / 256)`` tiles along a padded axis of length ``L > 256``
  (one tile otherwise), spread evenly from edge to edge; ``overlap`` in [0.05, 0.5], default 0.1.
- Blending: each tile's output is weighted by a taper mask (a sigmoid falloff with sigma 7.5 px, 20 px
  inside the tile's edges) and the weighted sum is divided by the summed weights.
- Augmented layouts (test-time augmentation): half-tile overlap, alternate tiles flipped in Y, X or both;
  outputs are flipped back and the signs of dY / dX restored before blending.
- :func:`resize`: bilinear, pixel centres aligned, no antialiasing, equal to OpenCV's INTER_LINEAR.

:func:`make_tiles` and :func:`blend_tiles` are an inverse pair: the :class:`TileLayout` that the first
returns is what the second needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BSIZE",
    "TileLayout",
    "pad_widths",
    "tile_starts",
    "taper_mask",
    "tile_layout",
    "make_tiles",
    "unflip",
    "blend_tiles",
    "resize",
    "resize_region",
]

BSIZE = 256  # tile size of Cellpose-SAM (the ViT sees 256x256 pixels as 32x32 tokens of 8x8)
PAD_DIV = 16  # cellpose pads each axis to a multiple of 16 plus a 16 px margin (half on each side)
TAPER_SIGMA = 7.5  # px, sigmoid falloff of the blending mask
TAPER_INSET = 20  # px, the mask is 0.5 this far inside a tile's edge


# --- tiles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one image lie: what :func:`blend_tiles` needs to undo :func:`make_tiles`.

    Attributes
    ----------
    shape : (int, int)
        (Y, X) of the image before padding.
    pads : (int, int, int, int)
        Zero padding (top, bottom, left, right) added before tiling (with augmentation, an axis still
        shorter than a tile is padded further at its end, as cellpose does, and that is counted here).
    ystarts, xstarts : tuple of int
        Top / left corner of each tile row / column in the padded image; tiles are ordered row-major
        (``index = row * len(xstarts) + column``).
    tile : (int, int)
        Tile height and width in pixels: the nominal tile size, or the padded image's size along an axis
        shorter than that (cellpose 3 runs its U-Net on such smaller tiles).
    augment : bool
        Tiles at odd rows are flipped in X, at odd columns in Y (cellpose's test-time augmentation).
    """

    shape: tuple[int, int]
    pads: tuple[int, int, int, int]
    ystarts: tuple[int, ...]
    xstarts: tuple[int, ...]
    tile: tuple[int, int]
    augment: bool

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(Y, X) of the padded image the tiles cover."""
        top, bottom, left, right = self.pads
        return self.shape[0] + top + bottom, self.shape[1] + left + right

    @property
    def n_tiles(self) -> int:
        return len(self.ystarts) * len(self.xstarts)

    def flips(self, row: int, col: int) -> tuple[int, ...]:
        """Axes (-2 = Y, -1 = X) flipped in the tile at (row, col); empty without augmentation."""
        if not self.augment:
            return ()
        return tuple(ax for ax, odd in ((-2, col % 2), (-1, row % 2)) if odd)


def pad_widths(length: int, bsize: int = BSIZE, *, to_tile: bool = True) -> tuple[int, int]:
    """Zero padding (before, after) of an axis of ``length`` pixels, as cellpose pads before tiling.

    At least ``PAD_DIV // 2`` px each side and a multiple of ``PAD_DIV`` in all. With ``to_tile``
    (cellpose 4, whose ViT needs whole tiles) an axis shorter than a tile is padded up to one tile
    (``bsize``); without (cellpose 3's U-Net) it is not.
    """
    if length >= bsize or not to_tile:
        total = PAD_DIV * math.ceil(length / PAD_DIV) - length + PAD_DIV
    else:
        total = max(PAD_DIV, bsize - length)
    return total // 2, total - total // 2


def tile_starts(length: int, bsize: int = BSIZE, overlap: float = 0.1, augment: bool = False) -> tuple[int, ...]:
    """Start of each tile along a padded axis of ``length`` pixels, first at 0, last at ``length - size``.

    ``size = min(bsize, length)``: ``ceil((1 + 2 * overlap) * length / bsize)`` tiles (one if the axis fits
    a tile); with ``augment`` (where ``length >= bsize``), ``max(2, ceil(2 * length / bsize))`` tiles
    (half-tile overlap, so every pixel is seen in two flips).
    """
    if augment:
        if length < bsize:
            raise ValueError(f"axis of {length} px is shorter than a tile ({bsize} px); pad it first")
        n = max(2, math.ceil(2.0 * length / bsize))
    else:
        n = 1 if length <= bsize else math.ceil((1.0 + 2 * overlap) * length / bsize)
    size = min(bsize, length)
    return tuple(int(v) for v in np.linspace(0, length - size, n).astype(int))


def taper_mask(ly: int = BSIZE, lx: int | None = None, sigma: float = TAPER_SIGMA) -> np.ndarray:
    """Blending weights of a tile, float64 ``(ly, lx)``: ~1 inside, a sigmoid falloff near the edges.

    ``w(y, x) = s(y) * s(x)``, ``s(t) = 1 / (1 + exp((|t - c| - (n / 2 - 20)) / sigma))`` on ``n =
    max(224, ly, lx)`` pixels (``c`` their centre ``(n - 1) / 2``: 0.5 at 20 px inside the edge, sigma
    7.5 px), cropped to the central ``(ly, lx)``: cellpose's mask, for square tiles and for the smaller
    tiles of images narrower than a tile.
    """
    lx = ly if lx is None else lx
    n = max(224, ly, lx)
    t = np.abs(np.arange(n) - (n - 1) / 2.0)
    s = 1.0 / (1.0 + np.exp((t - (n / 2.0 - TAPER_INSET)) / sigma))
    sy = s[n // 2 - ly // 2 : n // 2 + ly // 2 + ly % 2]
    sx = s[n // 2 - lx // 2 : n // 2 + lx // 2 + lx % 2]
    return sy[:, None] * sx[None, :]


def tile_layout(
    shape: tuple[int, int], bsize: int = BSIZE, overlap: float = 0.1, *, augment: bool = False, to_tile: bool = True
) -> TileLayout:
    """The :class:`TileLayout` :func:`make_tiles` lays over an image of ``shape`` (Y, X), without its pixels
    (:mod:`cpsnake.engine.blocks` takes a large image's tiles from it)."""
    Y, X = shape
    (top, bottom), (left, right) = pad_widths(Y, bsize, to_tile=to_tile), pad_widths(X, bsize, to_tile=to_tile)
    if augment:  # an axis still shorter than a tile is padded at its end (cellpose 3 does so)
        bottom += max(0, bsize - (Y + top + bottom))
        right += max(0, bsize - (X + left + right))
    Yp, Xp = Y + top + bottom, X + left + right
    return TileLayout(
        (Y, X),
        (top, bottom, left, right),
        tile_starts(Yp, bsize, overlap, augment),
        tile_starts(Xp, bsize, overlap, augment),
        (min(bsize, Yp), min(bsize, Xp)),
        augment,
    )


def make_tiles(
    img: np.ndarray, bsize: int = BSIZE, overlap: float = 0.1, *, augment: bool = False, to_tile: bool = True
) -> tuple[np.ndarray, TileLayout]:
    """Cut an image into overlapping tiles; :func:`blend_tiles` puts them back.

    Parameters
    ----------
    img : (C, Y, X) ndarray
        Image, any real dtype (tiles are float32).
    bsize : int
        Tile side in pixels (256 for Cellpose-SAM, 224 for cellpose 3's U-Net).
    overlap : float
        Fraction of a tile shared with each neighbour, in [0.05, 0.5] (ignored with ``augment``).
    augment : bool
        Half-tile overlap and flipped tiles (see :class:`TileLayout`).
    to_tile : bool
        Pad an image smaller than a tile up to a whole tile (see :func:`pad_widths`); else its tiles are
        the padded image's size along that axis.

    Returns
    -------
    tiles : (N, C, ty, tx) float32 ndarray
        N = ``len(layout.ystarts) * len(layout.xstarts)`` tiles of the zero-padded image, row-major;
        ``(ty, tx) = layout.tile``.
    layout : TileLayout
    """
    if img.ndim != 3:
        raise ValueError(f"image of shape {img.shape}, expected (C, Y, X)")
    if not augment and not 0.05 <= overlap <= 0.5:
        raise ValueError(f"tile overlap {overlap}, expected a fraction in [0.05, 0.5]")
    layout = tile_layout(img.shape[1:], bsize, overlap, augment=augment, to_tile=to_tile)
    top, bottom, left, right = layout.pads
    padded = np.pad(np.asarray(img, dtype=np.float32), ((0, 0), (top, bottom), (left, right)))
    ystarts, xstarts, (ty, tx) = layout.ystarts, layout.xstarts, layout.tile
    tiles = np.empty((layout.n_tiles, img.shape[0], ty, tx), np.float32)
    for r, y0 in enumerate(ystarts):
        for c, x0 in enumerate(xstarts):
            tile = padded[:, y0 : y0 + ty, x0 : x0 + tx]
            flips = layout.flips(r, c)
            tiles[r * len(xstarts) + c] = np.flip(tile, flips) if flips else tile
    return tiles, layout


def unflip(out: np.ndarray, flips: tuple[int, ...], yx_channels: tuple[int, int] | None = (0, 1)) -> np.ndarray:
    """One tile's output ``(K, ty, tx)`` as float64, flipped back along ``flips`` (:meth:`TileLayout.flips`) with
    the signs of its Y / X vector channels restored there."""
    out = np.asarray(out, dtype=np.float64)
    if not flips:
        return out
    out = np.flip(out, flips).copy()
    if yx_channels is not None:
        for ax, ch in zip((-2, -1), yx_channels):
            if ax in flips:
                out[ch] *= -1
    return out


def blend_tiles(outputs: np.ndarray, layout: TileLayout, *, yx_channels: tuple[int, int] | None = (0, 1)) -> np.ndarray:
    """Blend per-tile outputs into one image: the inverse of :func:`make_tiles`.

    Parameters
    ----------
    outputs : (N, K, ty, tx) ndarray
        One output per tile, in the order :func:`make_tiles` returned the tiles.
    layout : TileLayout
        From :func:`make_tiles`.
    yx_channels : (int, int) or None
        Channels holding the Y and X components of a vector field (dY, dX): with an augmented layout a
        tile flipped in Y gets its Y component negated (and likewise X). None: no vector channels.

    Returns
    -------
    (K, Y, X) float32 ndarray
        Taper-weighted mean of the overlapping tiles, padding removed (the input image's size).
    """
    n, k, by, bx = outputs.shape
    ty, tx = layout.tile
    if n != layout.n_tiles or (by, bx) != (ty, tx):
        raise ValueError(f"outputs of shape {outputs.shape}, expected ({layout.n_tiles}, K, {ty}, {tx})")
    mask = taper_mask(ty, tx)
    Yp, Xp = layout.padded_shape
    acc = np.zeros((k, Yp, Xp), np.float64)
    weight = np.zeros((Yp, Xp), np.float64)
    for r, y0 in enumerate(layout.ystarts):
        for c, x0 in enumerate(layout.xstarts):
            out = unflip(outputs[r * len(layout.xstarts) + c], layout.flips(r, c), yx_channels)
            acc[:, y0 : y0 + ty, x0 : x0 + tx] += out * mask
            weight[y0 : y0 + ty, x0 : x0 + tx] += mask
    acc /= weight
    top, bottom, left, right = layout.pads
    return acc[:, top : Yp - bottom, left : Xp - right].astype(np.float32)


# --- resizing ----------------------------------------------------------------------------------------


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for each of ``n_out`` pixel centres resampled from ``n_in``."""
    # pixel centres aligned; the position is rounded to float32 as OpenCV does (so results match cv2.resize)
    src = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
    src = np.clip(src, np.float32(0), np.float32(n_in - 1))  # edges repeat the border pixel
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0.astype(np.float32)).astype(np.float64)


def resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of each channel, pixel centres aligned, no antialiasing (as OpenCV's INTER_LINEAR).

    img : (C, Y, X) ndarray -> (C, shape[0], shape[1]) float32 ndarray (equal to cv2.resize within 1 float32 ulp).
    """
    img = np.asarray(img, dtype=np.float32)
    (Y, X), (Yo, Xo) = img.shape[-2:], (int(shape[0]), int(shape[1]))
    if (Y, X) == (Yo, Xo):
        return img.copy()
    return resize_region(lambda y0, y1, x0, x1: img[:, y0:y1, x0:x1], (Y, X), (Yo, Xo), (0, Yo, 0, Xo))


def resize_region(
    read, in_shape: tuple[int, int], out_shape: tuple[int, int], region: tuple[int, int, int, int]
) -> np.ndarray:
    """The pixels ``region`` = (y0, y1, x0, x1) of :func:`resize` of an image to ``out_shape``, reading only the
    input pixels they need: ``read(y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0)`` gives the input (of ``in_shape``).

    The same taps and the same arithmetic as the whole resize, so equal to its crop to the bit
    (:mod:`cpsnake.engine.blocks` resizes a block of a large image this way). Returns (C, y1 - y0, x1 - x0) float32.
    """
    (Y, X), (Yo, Xo) = in_shape, out_shape
    y0, y1, x0, x1 = region
    if (Y, X) == (Yo, Xo):
        return np.array(read(y0, y1, x0, x1), dtype=np.float32)
    ty0, ty1, wy = _linear_taps(Y, Yo)
    tx0, tx1, wx = _linear_taps(X, Xo)
    i0, i1, wy = ty0[y0:y1], ty1[y0:y1], wy[y0:y1]
    j0, j1, wx = tx0[x0:x1], tx1[x0:x1], wx[x0:x1]
    s0, s1, t0, t1 = int(i0.min()), int(i1.max()) + 1, int(j0.min()), int(j1.max()) + 1
    src = np.asarray(read(s0, s1, t0, t1), dtype=np.float32)
    rows = src[:, i0 - s0, :] * (1.0 - wy)[:, None] + src[:, i1 - s0, :] * wy[:, None]  # C y X, float64
    out = rows[:, :, j0 - t0] * (1.0 - wx) + rows[:, :, j1 - t0] * wx
    return out.astype(np.float32)
