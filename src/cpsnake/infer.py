"""Tiled network inference: a normalized image -> flows (dY, dX, cellprob logits).

Command line::

    cpsnake infer NORMALIZED.tif FLOWS.tif --model NAME|PATH [--diameter D] [--augment]
        [--batch-size N] [--tile-overlap F] [--device auto|cpu|cuda|mps] [--precision auto|float32|bfloat16]

``NORMALIZED.tif`` is the float32 ``(C, Y, X)`` image (C = 1..3) written by ``cpsnake normalize``.
``FLOWS.tif`` is a float32 ImageJ TIFF ``(3, Y, X)`` = dY, dX, cellprob logits at the input's size,
carrying the input's pixel size and unit.

The method (as Cellpose-SAM / cellpose 4.x):

- Channels: fewer than 3 are padded with zero channels (the network sees ``(B, 3, 256, 256)``; for
  Cellpose-SAM this equals cellpose's use of the first C input channels of the patch embedding).
- Diameter ``d`` (optional): the image is resized by ``30 / d`` (bilinear, pixel-centre aligned) before the
  network and the three output maps are resized back to the input size afterwards. The flow *values* are not
  rescaled (as cellpose); ``cpsnake reconstruct --diameter`` follows them for ``200 * d / 30`` iterations.
- Padding: zeros, at least 8 px on each side and up to a multiple of 16 (or up to one whole tile for
  images smaller than a tile), as cellpose, so that the tiles sit where cellpose puts them.
- Tiles: 256x256, ``n = ceil((1 + 2 * overlap) * L / 256)`` tiles along a padded axis of length ``L > 256``
  (one tile otherwise), spread evenly from edge to edge; ``overlap`` in [0.05, 0.5], default 0.1.
- Blending: each tile's output is weighted by a taper mask (a sigmoid falloff with sigma 7.5 px, 20 px
  inside the tile's edges) and the weighted sum is divided by the summed weights.
- ``--augment``: test-time augmentation as cellpose's ``augment``: tiles overlap by half a tile and
  alternate tiles are flipped in Y, X or both; outputs are flipped back and the sign of dY (Y flip) and dX
  (X flip) restored before blending.
- Device ``auto`` picks cuda, then mps, then cpu. Precision ``auto`` is bfloat16 on a GPU, float32 on CPU.
  Batch size ``auto`` is 8 on CPU, 32 on a GPU. A progress bar over tiles goes to stderr for long images.

Python API: :func:`predict_many` (several images, their tiles pooled into shared network batches),
:func:`predict` (one image, with a diameter), :func:`run_net` (one image at its own scale), and the
inverse pair :func:`make_tiles` / :func:`stitch_tiles`.
"""

from __future__ import annotations

import argparse
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from cpsnake.errors import CpsnakeError, guard

__all__ = [
    "BSIZE",
    "TileLayout",
    "pad_widths",
    "tile_starts",
    "taper_mask",
    "make_tiles",
    "stitch_tiles",
    "resize",
    "resolve_device",
    "resolve_dtype",
    "run_net",
    "predict",
    "predict_many",
    "resized_shape",
    "read_normalized",
    "main",
]

BSIZE = 256  # tile size of Cellpose-SAM (the ViT sees 256x256 pixels as 32x32 tokens of 8x8)
PAD_DIV = 16  # cellpose pads each axis to a multiple of 16 plus a 16 px margin (half on each side)
TAPER_SIGMA = 7.5  # px, sigmoid falloff of the blending mask
TAPER_INSET = 20  # px, the mask is 0.5 this far inside a tile's edge
PROGRESS_MIN_TILES = 32  # progress=None shows a bar from this many tiles on


# --- tiles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one image lie: what :func:`stitch_tiles` needs to undo :func:`make_tiles`.

    Attributes
    ----------
    shape : (int, int)
        (Y, X) of the image before padding.
    pads : (int, int, int, int)
        Zero padding (top, bottom, left, right) added before tiling.
    ystarts, xstarts : tuple of int
        Top / left corner of each tile row / column in the padded image; tiles are ordered row-major
        (``index = row * len(xstarts) + column``).
    bsize : int
        Tile side in pixels.
    augment : bool
        Tiles at odd rows are flipped in X, at odd columns in Y (cellpose's test-time augmentation).
    """

    shape: tuple[int, int]
    pads: tuple[int, int, int, int]
    ystarts: tuple[int, ...]
    xstarts: tuple[int, ...]
    bsize: int
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


def pad_widths(length: int, bsize: int = BSIZE) -> tuple[int, int]:
    """Zero padding (before, after) of an axis of ``length`` pixels, as cellpose 4 pads before tiling.

    At least ``PAD_DIV // 2`` px each side and a multiple of ``PAD_DIV`` in all; an axis shorter than a
    tile is padded up to one tile (``bsize``).
    """
    if length >= bsize:
        total = PAD_DIV * math.ceil(length / PAD_DIV) - length + PAD_DIV
    else:
        total = max(PAD_DIV, bsize - length)
    return total // 2, total - total // 2


def tile_starts(length: int, bsize: int = BSIZE, overlap: float = 0.1, augment: bool = False) -> tuple[int, ...]:
    """Start of each tile along a padded axis of ``length >= bsize`` pixels, first at 0, last at ``length - bsize``.

    ``ceil((1 + 2 * overlap) * length / bsize)`` tiles (one if the axis fits a tile); with ``augment``,
    ``max(2, ceil(2 * length / bsize))`` tiles (half-tile overlap, so every pixel is seen in two flips).
    """
    if length < bsize:
        raise ValueError(f"axis of {length} px is shorter than a tile ({bsize} px); pad it first")
    if augment:
        n = max(2, math.ceil(2.0 * length / bsize))
    else:
        n = 1 if length <= bsize else math.ceil((1.0 + 2 * overlap) * length / bsize)
    return tuple(int(v) for v in np.linspace(0, length - bsize, n).astype(int))


def taper_mask(bsize: int = BSIZE, sigma: float = TAPER_SIGMA) -> np.ndarray:
    """Blending weights of a tile, float64 ``(bsize, bsize)``: ~1 inside, a sigmoid falloff near the edges.

    ``w(y, x) = s(y) * s(x)``, ``s(t) = 1 / (1 + exp((|t - c| - (bsize / 2 - 20)) / sigma))``, ``c`` the
    tile centre ``(bsize - 1) / 2``: 0.5 at 20 px inside the edge, sigma 7.5 px.
    """
    t = np.abs(np.arange(bsize) - (bsize - 1) / 2.0)
    s = 1.0 / (1.0 + np.exp((t - (bsize / 2.0 - TAPER_INSET)) / sigma))
    return s[:, None] * s[None, :]


def make_tiles(
    img: np.ndarray, bsize: int = BSIZE, overlap: float = 0.1, *, augment: bool = False
) -> tuple[np.ndarray, TileLayout]:
    """Cut an image into overlapping square tiles; :func:`stitch_tiles` puts them back.

    Parameters
    ----------
    img : (C, Y, X) ndarray
        Image, any real dtype (tiles are float32).
    bsize : int
        Tile side in pixels.
    overlap : float
        Fraction of a tile shared with each neighbour, in [0.05, 0.5] (ignored with ``augment``).
    augment : bool
        Half-tile overlap and flipped tiles (see :class:`TileLayout`).

    Returns
    -------
    tiles : (N, C, bsize, bsize) float32 ndarray
        N = ``len(layout.ystarts) * len(layout.xstarts)`` tiles of the zero-padded image, row-major.
    layout : TileLayout
    """
    if img.ndim != 3:
        raise ValueError(f"image of shape {img.shape}, expected (C, Y, X)")
    if not augment and not 0.05 <= overlap <= 0.5:
        raise ValueError(f"tile overlap {overlap}, expected a fraction in [0.05, 0.5]")
    _, Y, X = img.shape
    (top, bottom), (left, right) = pad_widths(Y, bsize), pad_widths(X, bsize)
    padded = np.pad(np.asarray(img, dtype=np.float32), ((0, 0), (top, bottom), (left, right)))
    ystarts = tile_starts(padded.shape[1], bsize, overlap, augment)
    xstarts = tile_starts(padded.shape[2], bsize, overlap, augment)
    layout = TileLayout((Y, X), (top, bottom, left, right), ystarts, xstarts, bsize, augment)
    tiles = np.empty((layout.n_tiles, img.shape[0], bsize, bsize), np.float32)
    for r, y0 in enumerate(ystarts):
        for c, x0 in enumerate(xstarts):
            tile = padded[:, y0 : y0 + bsize, x0 : x0 + bsize]
            flips = layout.flips(r, c)
            tiles[r * len(xstarts) + c] = np.flip(tile, flips) if flips else tile
    return tiles, layout


def stitch_tiles(
    outputs: np.ndarray, layout: TileLayout, *, yx_channels: tuple[int, int] | None = (0, 1)
) -> np.ndarray:
    """Blend per-tile outputs into one image: the inverse of :func:`make_tiles`.

    Parameters
    ----------
    outputs : (N, K, bsize, bsize) ndarray
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
    if n != layout.n_tiles or by != layout.bsize or bx != layout.bsize:
        raise ValueError(f"outputs of shape {outputs.shape}, expected ({layout.n_tiles}, K, {layout.bsize}, {layout.bsize})")
    mask = taper_mask(layout.bsize)
    Yp, Xp = layout.padded_shape
    acc = np.zeros((k, Yp, Xp), np.float64)
    weight = np.zeros((Yp, Xp), np.float64)
    b = layout.bsize
    for r, y0 in enumerate(layout.ystarts):
        for c, x0 in enumerate(layout.xstarts):
            out = np.asarray(outputs[r * len(layout.xstarts) + c], dtype=np.float64)
            flips = layout.flips(r, c)
            if flips:
                out = np.flip(out, flips).copy()
                if yx_channels is not None:
                    for ax, ch in zip((-2, -1), yx_channels):
                        if ax in flips:
                            out[ch] *= -1
            acc[:, y0 : y0 + b, x0 : x0 + b] += out * mask
            weight[y0 : y0 + b, x0 : x0 + b] += mask
    acc /= weight
    top, bottom, left, right = layout.pads
    return acc[:, top : Yp - bottom, left : Xp - right].astype(np.float32)


# --- resizing, device, precision -------------------------------------------------------------------


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
    y0, y1, wy = _linear_taps(Y, Yo)
    x0, x1, wx = _linear_taps(X, Xo)
    rows = img[:, y0, :] * (1.0 - wy)[:, None] + img[:, y1, :] * wy[:, None]  # C Yo X, float64
    out = rows[:, :, x0] * (1.0 - wx) + rows[:, :, x1] * wx  # C Yo Xo
    return out.astype(np.float32)


def resolve_device(name: str = "auto") -> "torch.device":
    """``"auto"`` -> cuda if available, else mps, else cpu; other names (``"cpu"``, ``"cuda:1"``) as given."""
    import torch

    if name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CpsnakeError(f"--device {name}: found no CUDA device; use --device auto or cpu")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise CpsnakeError(f"--device {name}: found no MPS device; use --device auto or cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(precision: str, device: "torch.device") -> "torch.dtype":
    """``"auto"`` -> bfloat16 on a GPU, float32 on CPU; ``"float32"`` / ``"bfloat16"`` as named."""
    import torch

    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if precision == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if precision not in choices:
        raise CpsnakeError(f"--precision {precision}: unknown; expected auto, float32 or bfloat16")
    return choices[precision]


def _net_device_dtype(net: Callable) -> tuple["torch.device", "torch.dtype"]:
    import torch

    params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
    floats = [p for p in params if p.is_floating_point()]
    if floats:
        return floats[0].device, floats[0].dtype
    return torch.device("cpu"), torch.float32


# --- the network over tiles ---------------------------------------------------------------------


@dataclass
class _Pending:
    """One image on its way through the pooled tile stream (see :func:`predict_many`)."""

    tiles: np.ndarray  # (N, 3, 256, 256) float32
    layout: TileLayout
    size: tuple[int, int] | None  # (Y, X) to resize the flows back to; None: no resizing
    outputs: np.ndarray  # (N, 3, 256, 256) float32, filled as batches come back
    done: int = 0  # tiles whose outputs are in
    bar: object = None  # tqdm progress bar, or None


def _as_network_input(img: np.ndarray, diameter: float | None, tile_overlap: float, augment: bool,
                      max_pixels: int | None = None) -> _Pending:
    """Pad to 3 channels, resize by 30 / diameter, tile: what the network needs of one image."""
    img = np.asarray(img)
    if img.ndim != 3 or not 1 <= img.shape[0] <= 3:
        raise ValueError(f"image of shape {img.shape}, expected (C, Y, X) with C = 1..3")
    size = None
    if diameter is not None:
        if not diameter > 0:
            raise ValueError(f"diameter {diameter}, expected a positive number of pixels")
        size = img.shape[1:]
        img = resize(img, resized_shape(img.shape, diameter, max_pixels))
    if img.shape[0] < 3:  # zero channels: for CPSAM the same as using the first C kernel channels
        img = np.concatenate([img, np.zeros((3 - img.shape[0], *img.shape[1:]), img.dtype)])
    tiles, layout = make_tiles(img, BSIZE, tile_overlap, augment=augment)
    return _Pending(tiles, layout, size, np.empty((len(tiles), 3, BSIZE, BSIZE), np.float32))


def _finish(item: _Pending) -> np.ndarray:
    flows = stitch_tiles(item.outputs, item.layout, yx_channels=(0, 1))
    return flows if item.size is None else resize(flows, item.size)


def predict_many(
    net: Callable,
    images: Iterable[np.ndarray],
    *,
    diameters: float | Sequence[float | None] | None = None,
    batch_size: int = 8,
    tile_overlap: float = 0.1,
    augment: bool = False,
    device: "str | torch.device | None" = None,
    dtype: "torch.dtype | None" = None,
    progress: bool | None = None,
    max_pixels: int | None = None,
) -> Iterator[np.ndarray]:
    """Flows of several normalized images, their tiles pooled into shared network batches.

    Tiles of consecutive images fill each batch of ``batch_size`` tiles (32 tiles on a GPU even when
    every image has 1-4), and the next image is padded, resized and tiled in a background thread while
    the network runs. Each image's flows equal :func:`predict` on that image alone (the same tiles go
    through the same network; only which tiles share a batch differs).

    Parameters
    ----------
    net : torch.nn.Module or callable
        Maps a float tensor ``(B, 3, 256, 256)`` to ``(B, 3, 256, 256)`` = dY, dX, cellprob logits.
        A module is set to eval mode and, if ``device`` / ``dtype`` are given, moved there.
    images : iterable of (C, Y, X) ndarray
        Normalized images, C = 1..3 (fewer than 3 channels are padded with zero channels). Read lazily:
        at most the current and the next image are held besides the tiles in flight.
    diameters : float, sequence of (float or None), or None
        Typical cell diameter in pixels, for every image or one per image: the image is resized to
        ``(int(Y * 30 / d), int(X * 30 / d))`` before tiling and the flows resized back to (Y, X).
        Flow values are not rescaled.
    batch_size, tile_overlap, augment, device, dtype, progress
        As :func:`run_net`; ``progress`` counts the tiles of the image being prepared.
    max_pixels : int, optional
        Most samples an image resized for its diameter may hold (:func:`cpsnake.limits.max_pixels`).

    Yields
    ------
    (3, Y, X) float32 ndarray per image, in the order given: dY, dX, cellprob logits at its size.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}, expected >= 1")
    if isinstance(net, torch.nn.Module):
        if device is not None or dtype is not None:
            net.to(device=device, dtype=dtype)
        net.eval()
    net_device, net_dtype = _net_device_dtype(net)
    device = torch.device(device) if device is not None else net_device
    dtype = dtype if dtype is not None else net_dtype
    per_image = diameters if isinstance(diameters, (list, tuple)) else None
    source = iter(images)

    def prepare(k: int, img: np.ndarray) -> _Pending:
        d = per_image[k] if per_image is not None else diameters
        return _as_network_input(img, d, tile_overlap, augment, max_pixels)

    with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        def submit(k: int):
            img = next(source, None)
            return None if img is None else pool.submit(prepare, k, img)

        queue: list[_Pending] = []  # images whose tiles are (partly) in flight, oldest first
        ahead, k, cursor = submit(0), 0, 0  # cursor: next tile of queue[-1] to send
        while True:
            batch: list[tuple[_Pending, int]] = []
            while len(batch) < batch_size:
                if not queue or cursor == len(queue[-1].tiles):
                    if ahead is None:
                        break
                    queue.append(ahead.result())  # errors of one image surface here, in order
                    k, cursor = k + 1, 0
                    ahead = submit(k)
                    _show(queue[-1], progress)
                    continue
                take = min(batch_size - len(batch), len(queue[-1].tiles) - cursor)
                batch += [(queue[-1], i) for i in range(cursor, cursor + take)]
                cursor += take
            if batch:
                x = torch.from_numpy(np.stack([item.tiles[i] for item, i in batch])).to(device=device, dtype=dtype)
                y = net(x)
                if tuple(y.shape[1:]) != (3, BSIZE, BSIZE):
                    raise ValueError(f"network output of shape {tuple(y.shape)}, expected (B, 3, {BSIZE}, {BSIZE})")
                y = y.float().cpu().numpy()
                for (item, i), out in zip(batch, y):
                    item.outputs[i] = out
                    item.done += 1
                    if item.bar is not None:
                        item.bar.update(1)
            while queue and queue[0].done == len(queue[0].tiles):
                item = queue.pop(0)
                if item.bar is not None:
                    item.bar.close()
                yield _finish(item)
            if not batch and ahead is None and not queue:
                return


def _show(item: _Pending, progress: bool | None) -> None:
    """Attach a tqdm bar over the image's tiles (stderr) when asked, or from PROGRESS_MIN_TILES on."""
    if progress if progress is not None else len(item.tiles) >= PROGRESS_MIN_TILES:
        from tqdm import tqdm

        item.bar = tqdm(total=len(item.tiles), unit="tile", desc="infer", mininterval=1.0)


def run_net(
    net: Callable,
    img: np.ndarray,
    *,
    batch_size: int = 8,
    tile_overlap: float = 0.1,
    augment: bool = False,
    device: "str | torch.device | None" = None,
    dtype: "torch.dtype | None" = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Run a tile network over a whole image: pad, tile, batch, blend.

    Parameters
    ----------
    net : torch.nn.Module or callable
        Maps a float tensor ``(B, 3, 256, 256)`` to ``(B, 3, 256, 256)`` = dY, dX, cellprob logits.
        A module is set to eval mode and, if ``device`` / ``dtype`` are given, moved there
        (``nn.Module.to`` works in place).
    img : (C, Y, X) ndarray
        Normalized image, C = 1..3 (fewer than 3 channels are padded with zero channels).
    batch_size : int
        Tiles per network call.
    tile_overlap : float
        Overlap fraction of neighbouring tiles, in [0.05, 0.5].
    augment : bool
        Flip test-time augmentation (see the module docstring).
    device, dtype : optional
        Where and in which precision the network runs; None: those of the net's parameters (cpu, float32
        for a callable without parameters).
    progress : bool or None
        Progress bar over tiles on stderr; None: only from ``PROGRESS_MIN_TILES`` tiles on.

    Returns
    -------
    (3, Y, X) float32 ndarray
        dY, dX, cellprob logits at the image's size.
    """
    return predict(net, img, batch_size=batch_size, tile_overlap=tile_overlap, augment=augment, device=device,
                   dtype=dtype, progress=progress)


def resized_shape(shape: Sequence[int], diameter: float, max_pixels: int | None = None) -> tuple[int, int]:
    """(Y', X') of a (C, Y, X) image resized by 30 / ``diameter`` for the network; a CpsnakeError when that
    leaves no pixel or more than ``max_pixels`` samples (:func:`cpsnake.limits.max_pixels`)."""
    from cpsnake import limits

    C, Y, X = (int(n) for n in shape[-3:])
    scale = 30.0 / diameter
    Yr, Xr = int(Y * scale), int(X * scale)
    if Yr < 1 or Xr < 1:
        raise CpsnakeError(
            f"diameter {diameter}: resizing the {Y}x{X} image by 30/{diameter} leaves {Yr}x{Xr} pixels; "
            "give a smaller diameter"
        )
    limit = limits.max_pixels(max_pixels)
    if Yr * Xr * C > limit:
        raise CpsnakeError(
            f"diameter {diameter}: resizing the {Y}x{X} image by 30/{diameter} gives {Yr}x{Xr} pixels "
            f"({Yr * Xr * C:,} samples), more than the limit of {limit:,}; expected the typical cell "
            f"diameter in pixels (e.g. 17); give a larger diameter, or raise the limit with {limits.RAISE}"
        )
    return Yr, Xr


def predict(
    net: Callable,
    img: np.ndarray,
    *,
    diameter: float | None = None,
    batch_size: int = 8,
    tile_overlap: float = 0.1,
    augment: bool = False,
    device: "str | torch.device | None" = None,
    dtype: "torch.dtype | None" = None,
    progress: bool | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Flows of a normalized image, optionally at the scale where cells are 30 px across.

    Parameters
    ----------
    img : (C, Y, X) ndarray
        Normalized image, C = 1..3.
    diameter : float, optional
        Typical cell diameter in pixels: the image is resized to ``(int(Y * 30 / d), int(X * 30 / d))``
        before the network and the outputs resized back to (Y, X). Flow values are not rescaled.
        The resized image may hold at most ``max_pixels`` samples (:func:`cpsnake.limits.max_pixels`).
    Other parameters : as :func:`run_net`.

    Returns
    -------
    (3, Y, X) float32 ndarray
        dY, dX, cellprob logits at the input's size.
    """
    return next(predict_many(net, [img], diameters=diameter, batch_size=batch_size, tile_overlap=tile_overlap,
                             augment=augment, device=device, dtype=dtype, progress=progress, max_pixels=max_pixels))


# --- command line ----------------------------------------------------------------------------------


def read_normalized(path: str | Path, *, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a normalized image: float32 ``(C, Y, X)`` with C = 1..3, and ``{"pixel_size", "unit"}``.

    A 2-D ``(Y, X)`` file is one channel. Anything else (integers, complex, more channels, NaN, an image
    thinner than :data:`cpsnake.limits.MIN_SIDE`, more samples than ``max_pixels``) is a CpsnakeError.
    """
    from cpsnake import limits
    from cpsnake.io import read_tiff

    what = "the float32 (C, Y, X) image written by `cpsnake normalize`"
    fix = f"pass {what}"
    data, meta = read_tiff(path, expected=what, fix=fix, max_pixels=max_pixels, what="normalized image")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or not 1 <= data.shape[0] <= 3 or min(data.shape[1:]) < 1:
        raise CpsnakeError(f"{path}: found shape {data.shape}, expected (C, Y, X) with C = 1..3; {fix}")
    if not np.issubdtype(data.dtype, np.floating):
        raise CpsnakeError(f"{path}: found dtype {data.dtype}, expected float32 (a normalized image); {fix}")
    limits.check_min_side(path, data.shape)
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise CpsnakeError(f"{path}: found NaN or infinite values, expected finite floats; {fix}")
    return data, meta


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive number")
    return value


def _batch_size(text: str) -> int | None:
    if text == "auto":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive integer or auto")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpsnake infer", description="Tiled Cellpose-SAM inference: normalized image -> flows (dY, dX, cellprob)."
    )
    p.add_argument("normalized", type=Path, help="float32 (C, Y, X) TIFF from `cpsnake normalize`, C = 1..3")
    p.add_argument("flows", type=Path, help="output flows TIFF, float32 (3, Y, X) = dY, dX, cellprob logits")
    p.add_argument("--model", required=True, help="registry name (see `cpsnake weights list`) or path to a weights file")
    add_options(p)
    from cpsnake import limits

    limits.add_option(p)
    return p


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the inference options (shared by ``cpsnake infer`` and ``cpsnake segment``)."""
    p.add_argument("--diameter", type=_positive_float, default=None, help="cell diameter in px: resize by 30/D first")
    p.add_argument("--augment", action="store_true", help="flip test-time augmentation (slower, smoother)")
    p.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|auto", help="tiles per batch (auto: 8 CPU, 32 GPU)")
    p.add_argument("--tile-overlap", type=float, default=0.1, help="overlap fraction of tiles, 0.05..0.5 (default 0.1)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto", help="auto: bfloat16 on GPU, float32 on CPU")


def check_options(args: argparse.Namespace) -> None:
    """The option checks that need no torch (so they come before any file is read)."""
    if not 0.05 <= args.tile_overlap <= 0.5:
        raise CpsnakeError(f"--tile-overlap {args.tile_overlap}: expected a fraction in [0.05, 0.5]; the default is 0.1")


def options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`predict` from parsed options: device, dtype and batch size resolved."""
    check_options(args)
    device = resolve_device(args.device)
    return dict(
        diameter=args.diameter,
        augment=args.augment,
        batch_size=args.batch_size or (8 if device.type == "cpu" else 32),
        tile_overlap=args.tile_overlap,
        device=device,
        dtype=resolve_dtype(args.precision, device),
    )


@guard("infer")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_options(args)
    img, meta = read_normalized(args.normalized, max_pixels=args.max_pixels)
    if args.diameter is not None:
        resized_shape(img.shape, args.diameter, args.max_pixels)  # before the model is loaded

    from cpsnake import statefile, weights

    path = weights.resolve(args.model, progress=True)
    statefile.check(path)  # a hostile weights file is refused here, before torch (0.9 GB) is imported
    opts = options(args)
    from cpsnake import model

    net = model.load_model(path, device=str(opts["device"]))
    flows = predict(net, img, progress=None, max_pixels=args.max_pixels, **opts)
    from cpsnake.io import write_flows

    write_flows(args.flows, flows, pixel_size=meta["pixel_size"], unit=meta["unit"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
