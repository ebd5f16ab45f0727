"""Percentile normalization of an image's channels for the network: arrays in, arrays out.

:func:`normalize` scales a ``(C, Y, X)`` image (or a whole ``(C, Z, Y, X)`` stack) to float32 of the same shape
and returns the record of the values used; :func:`select_channels` picks the channels that go to the network
(C <= 3); :func:`channel_values` and :func:`scale` split one normalization into its values (from one pass
over an image read in regions) and their application to any region. The command that reads IMAGE and
writes OUT.tif and OUT.json is :mod:`cpsnake.steps.normalize`.

Per channel (Cellpose's definition, equal to ``cellpose.transforms.normalize_img`` 4.2.1.1 for the
defaults): the ``low`` percentile (1) maps to 0.0 and the ``high`` percentile (99) to 1.0, values
outside are kept (not clipped). Percentiles use numpy's linear interpolation on float32 values; for
channels above 224**3 pixels they are taken on every (Y//224, X//224)-th pixel, as Cellpose does.

Arithmetic: float32, as Cellpose, for every image whose values float32 holds exactly (8- and 16-bit
integers, float16, float32, and wider types whose values all lie within +-2**24). An image of a wider
type (uint32, int32, uint64, int64, float64) with a value beyond +-2**24 is normalized in float64
instead (percentiles, low/high and scaling; the output is still float32), because float32 would round
its values to 24 bits and change the segmentation silently; the record says ``"arithmetic":
"float64"``. Integers beyond 2**53 lose their lowest bits even in float64: a warning says so.

- ``low_high`` (``--low-high LO HI``): fixed values instead of percentiles (same for every channel, or per
  channel).
- ``invert`` (``--invert``): 1 - x after scaling, for dark objects on a bright background.
- ``tile_size`` (``--tile-norm N``): percentiles per N x N tile (tiles overlap by 10 %), flat tiles (range
  < 1e-3) take the values of the nearest good tile, the tile grid of lows and highs is smoothed with a
  Gaussian of sigma 1 tile along Y and X and interpolated bilinearly to every pixel. (Cellpose's
  ``tile_norm_blocksize`` smooths the grid twice along Y and not along X; without smoothing both are
  the same.)

Flat channels (percentile and tile modes): a channel that is constant, or whose low and high
percentiles are within 1e-3 (in tile mode: every tile), is set to 0 (as Cellpose does for the
whole-image case) and marked in the record; with ``invert`` it stays 0 (Cellpose gives 1 for the
second kind, and in tile mode passes a flat channel through unscaled). A whole image that is
constant (every mode), or whose every channel is flat, is an error naming the fix. With
``low_high`` every channel is scaled as given.

scipy.ndimage (0.6 s to import) is imported inside the tile mode, the only user, so that importing this
module stays quick for the commands that never tile.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from cpsnake.errors import CpsnakeError, CpsnakeWarning

__all__ = [
    "select_channels",
    "normalize",
    "channel_values",
    "scale",
    "sample_step",
    "needs_float64",
    "tile_starts",
    "upsample_bilinear",
]

MAX_CHANNELS = 3
FLAT_RANGE = 1e-3  # a low..high range at most this wide is no range (Cellpose's threshold)
SAMPLE_ABOVE = 224**3  # channels with more pixels take percentiles on a regular subsample (as Cellpose)
TILE_OVERLAP = 0.1
TILE_ROWS = 256  # tile mode (and float64 scaling) works on this many image rows at a time
FLOAT32_EXACT = 2**24  # every integer up to this magnitude is exact in float32
FLOAT64_EXACT = 2**53


def needs_float64(dtype: np.dtype, largest: float) -> bool:
    """True for a type wider than float32 holds exactly (uint32, int32, 64-bit) whose largest |value| is beyond 2**24.

    uint8, int8, uint16, int16, float16, float32 and bool are always False (Cellpose's float32 arithmetic).
    """
    dtype = np.dtype(dtype)
    wider = dtype.kind in "uif" and dtype.itemsize > 2 and dtype != np.float32
    return bool(wider and largest > FLOAT32_EXACT)


def select_channels(img: np.ndarray, channels: Sequence[int] | None = None) -> np.ndarray:
    """Pick the channels that go to the network, in the order given.

    Parameters
    ----------
    img : (C, Y, X) or (Z, C, Y, X) ndarray
    channels : list of int, optional
        0-based indices into C, at most 3, no repeats. None keeps all channels (then C must be <= 3).

    Returns
    -------
    (C', Y, X) or (Z, C', Y, X) ndarray, C' <= 3 (a view when all channels are kept in order).
    """
    if img.ndim not in (3, 4):
        raise CpsnakeError(f"found an image of shape {img.shape}, expected (C, Y, X) or a stack (Z, C, Y, X)")
    n = img.shape[-3]
    if channels is None:
        if n > MAX_CHANNELS:
            raise CpsnakeError(
                f"found {n} channels, expected at most {MAX_CHANNELS}; choose which go in with --channels, "
                "e.g. --channels 0,1"
            )
        return img
    channels = [int(c) for c in channels]
    if not channels or len(channels) > MAX_CHANNELS:
        raise CpsnakeError(f"--channels {channels} names {len(channels)} channels, expected 1 to {MAX_CHANNELS}")
    if len(set(channels)) != len(channels):
        raise CpsnakeError(f"--channels {channels} repeats a channel; expected distinct channel indices")
    bad = [c for c in channels if not 0 <= c < n]
    if bad:
        raise CpsnakeError(
            f"--channels {channels}: channel {bad[0]} does not exist; the image has {n} channel(s), 0-based 0..{n - 1}"
        )
    if channels == list(range(n)):
        return img
    return img[..., channels, :, :]


def sample_step(shape: Sequence[int]) -> list[int]:
    """Steps of Cellpose's percentile subsample of a (Y, X) or (Z, Y, X) channel: above 224**3 px every
    (Y // 224, X // 224)-th pixel (and in a stack every (Z // 50)-th plane), else every pixel."""
    shape = tuple(int(n) for n in shape)
    if math.prod(shape) <= SAMPLE_ABOVE:
        return [1] * len(shape)
    step = [max(1, n // 224) for n in shape]
    if len(shape) == 3:
        step[0] = max(1, shape[0] // 50)
    return step


def _percentiles(sample: np.ndarray, q: tuple[float, float], work=np.float32) -> tuple[np.floating, np.floating]:
    """Low and high percentiles of a channel's subsample (see :func:`sample_step`) in ``work`` (float32, or
    float64 for wide values), numpy's linear interpolation."""
    sample = sample.astype(work, copy=True)  # our own copy, so the partition may reuse it
    lo, hi = np.percentile(sample, q, overwrite_input=True)
    return work(lo), work(hi)


def _scale_rows(x: np.ndarray, lo, hi, o: np.ndarray) -> None:
    """o = (x - lo) / (hi - lo) in float64, a block of rows at a time; ``lo``/``hi`` scalars or (rows, X) maps;
    a (Z, Y, X) channel (scalar ``lo``/``hi``) plane by plane."""
    if x.ndim == 3:
        for z in range(x.shape[0]):
            _scale_rows(x[z], lo, hi, o[z])
        return
    for y in range(0, x.shape[0], TILE_ROWS):
        rows = slice(y, min(y + TILE_ROWS, x.shape[0]))
        t = x[rows].astype(np.float64)
        t -= lo if np.ndim(lo) == 0 else lo[rows]
        t /= (hi - lo) if np.ndim(lo) == 0 else (hi[rows] - lo[rows])
        o[rows] = t


def tile_starts(length: int, block: int, overlap: float = TILE_OVERLAP) -> tuple[np.ndarray, int]:
    """Start offsets and size of the normalization tiles along one axis.

    ``ceil((1 + 2 * overlap) * length / block)`` tiles of ``min(block, length)`` pixels spread evenly
    from 0 to ``length - size`` (one tile when the axis is not longer than a block).
    """
    size = min(block, length)
    n = 1 if length <= block else int(math.ceil((1.0 + 2.0 * overlap) * length / block))
    return np.linspace(0, length - size, n).astype(int), size


def _linear_index(n_src: int, n_dst: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV-style linear interpolation along one axis: (i0, i1, t) with value = (1 - t) v[i0] + t v[i1]."""
    f = (np.arange(n_dst, dtype=np.float64) + 0.5) * (n_src / n_dst) - 0.5
    i0 = np.floor(f).astype(int)
    t = f - i0
    t[i0 < 0] = 0.0  # before the first centre: the edge value
    i0 = np.clip(i0, 0, n_src - 1)
    i1 = np.minimum(i0 + 1, n_src - 1)  # after the last centre: the edge value
    return i0, i1, t.astype(dtype)


def upsample_bilinear(
    grid: np.ndarray, shape: tuple[int, int], rows: slice | None = None, dtype=np.float32
) -> np.ndarray:
    """Interpolate a (ny, nx) grid of tile values to (Y, X) pixels, in ``dtype`` (float32, as Cellpose).

    Tile values sit at the centres of ny x nx equal cells covering the image (pixel centres at
    +0.5); pixels beyond the outermost centres take the edge value (OpenCV's INTER_LINEAR rule).
    ``rows`` restricts the output to those image rows (a (len(rows), X) block of the same result).
    """
    grid = np.asarray(grid, dtype=dtype)
    y0, y1, ty = _linear_index(grid.shape[0], shape[0], dtype)
    x0, x1, tx = _linear_index(grid.shape[1], shape[1], dtype)
    if rows is not None:
        y0, y1, ty = y0[rows], y1[rows], ty[rows]
    band = grid[y0] * (1 - ty)[:, None] + grid[y1] * ty[:, None]  # (rows, nx)
    out = band[:, x0]  # (rows, X)
    out *= 1 - tx
    out += band[:, x1] * tx
    return out


def _tile_maps(
    x: np.ndarray, q: tuple[float, float], block: int, smooth: float, work=np.float32
) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(ny, nx) grids of low and high values from tile percentiles, and a record; None when every tile is flat."""
    from scipy.ndimage import gaussian_filter1d

    ys, by = tile_starts(x.shape[0], block)
    xs, bx = tile_starts(x.shape[1], block)
    lo = np.empty((len(ys), len(xs)), work)
    hi = np.empty_like(lo)
    for j, y in enumerate(ys):  # one row of tiles at a time: (nx, by, bx) in the working type
        band = np.stack([x[y : y + by, x0 : x0 + bx] for x0 in xs]).astype(work)
        lo[j], hi[j] = np.percentile(band.reshape(len(xs), -1), q, axis=1, overwrite_input=True)
    flat = hi - lo < FLAT_RANGE
    if flat.all():
        return None
    if flat.any():  # a flat tile takes the values of the nearest good tile (first in row order on ties)
        fy, fx = np.nonzero(flat)
        gy, gx = np.nonzero(~flat)
        nearest = ((fy - gy[:, None]) ** 2 + (fx - gx[:, None]) ** 2).argmin(axis=0)
        lo[fy, fx] = lo[gy[nearest], gx[nearest]]
        hi[fy, fx] = hi[gy[nearest], gx[nearest]]
    if smooth > 0:
        for a in (0, 1):
            lo = gaussian_filter1d(lo, smooth, axis=a)
            hi = gaussian_filter1d(hi, smooth, axis=a)
    info = {
        "tile_starts_y": ys.tolist(),
        "tile_starts_x": xs.tolist(),
        "tile_shape": [int(by), int(bx)],
        "tiles_filled": int(flat.sum()),
        "low": lo.tolist(),
        "high": hi.tolist(),
    }
    return lo, hi, info


def _check_not_constant(ranges: list[tuple], allow_flat: bool) -> None:
    if all(lo == hi for lo, hi in ranges) and not allow_flat:
        values = sorted({float(lo) for lo, _ in ranges})
        shown = f"every pixel is {values[0]:g}" if len(values) == 1 else "every channel is constant"
        raise CpsnakeError(
            f"found a constant image ({shown}); expected an image with varying intensities; "
            "check that the right file or channel was exported (a blank or saturated frame cannot be segmented)"
        )


def _arithmetic(dtype: np.dtype, ranges: list[tuple]) -> bool:
    """True when the image needs float64 arithmetic (see the module doc); warns beyond 2**53."""
    top = max(max(abs(float(lo)), abs(float(hi))) for lo, hi in ranges)
    if np.dtype(dtype).kind in "ui" and top > FLOAT64_EXACT:
        warnings.warn(
            f"found {dtype} values up to {top:.0f}, beyond 2**53, the largest integers float64 holds exactly; "
            "they were normalized in float64, so values closer than about "
            f"{top / FLOAT64_EXACT:.0f} apart became equal",
            CpsnakeWarning,
            stacklevel=3,
        )
    return needs_float64(dtype, top)


def _check_percentiles(percentiles) -> tuple[float, float]:
    q = (float(percentiles[0]), float(percentiles[1]))
    if not 0.0 <= q[0] < q[1] <= 100.0:
        raise CpsnakeError(f"percentiles {q[0]:g} {q[1]:g}, expected 0 <= low < high <= 100, e.g. --percentiles 1 99")
    return q


def _check_low_high(low_high, nchan: int) -> np.ndarray | None:
    if low_high is None:
        return None
    lh = np.asarray(low_high, dtype=np.float64)
    if lh.shape == (2,):
        lh = np.tile(lh, (nchan, 1))
    if lh.shape != (nchan, 2) or not np.all(np.isfinite(lh)) or np.any(lh[:, 1] <= lh[:, 0]):
        raise CpsnakeError(
            f"low/high values {np.asarray(low_high).tolist()}, expected finite LO < HI (one pair, or one per channel)"
        )
    return lh


def _all_flat_error(per_channel: list[dict], q: tuple[float, float]) -> CpsnakeError:
    return CpsnakeError(
        f"found no channel with a spread of intensities between percentiles {q[0]:g} and {q[1]:g} "
        f"({'; '.join(e['status'] for e in per_channel)}); expected low < high; "
        "use wider --percentiles (e.g. 0 100), fixed --low-high values or --tile-norm"
    )


def channel_values(
    ranges: Sequence[tuple],
    dtype: np.dtype,
    samples: Sequence[np.ndarray],
    steps: Sequence[list[int]],
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    low_high: Sequence[float] | np.ndarray | None = None,
    invert: bool = False,
    allow_flat: bool = False,
) -> dict:
    """The normalization record (percentile or low/high mode) from what a pass over the image collects.

    Parameters
    ----------
    ranges : per channel (min, max) of the whole channel
    dtype : the image's dtype
    samples : per channel, the pixels Cellpose takes its percentiles from: the channel subsampled with
        ``steps`` (see :func:`sample_step`), any shape
    steps : per channel, the steps of that subsample
    percentiles, low_high, invert, allow_flat : as :func:`normalize`

    Returns the record :func:`normalize` returns; :func:`scale` applies it to any region of the image, so an
    image read in blocks and normalized with the values of one pass equals the image normalized whole.
    """
    q = _check_percentiles(percentiles)
    lh = _check_low_high(low_high, len(ranges))
    _check_not_constant(list(ranges), allow_flat)
    wide = _arithmetic(dtype, list(ranges))
    work = np.float64 if wide else np.float32
    per_channel = []
    for c, (lo_c, hi_c) in enumerate(ranges):
        entry: dict = {"low": None, "high": None, "status": "scaled"}
        if lh is not None:
            entry.update(low=float(lh[c, 0]), high=float(lh[c, 1]))
        elif lo_c == hi_c:
            entry["status"] = f"constant ({float(lo_c):g}): set to 0"
        else:
            lo, hi = _percentiles(samples[c], q, work)
            entry.update(low=float(lo), high=float(hi), sample_step=list(steps[c]))
            if not hi - lo > FLAT_RANGE:
                entry["status"] = f"percentiles {q[0]:g} and {q[1]:g} within {FLAT_RANGE:g}: set to 0"
        per_channel.append(entry)
    if all(e["status"] != "scaled" for e in per_channel) and not allow_flat:
        raise _all_flat_error(per_channel, q)
    mode = "low_high" if lh is not None else "percentile"
    return {
        "mode": mode,
        "arithmetic": "float64" if wide or mode == "low_high" else "float32",
        "percentiles": list(q) if mode != "low_high" else None,
        "invert": bool(invert),
        "tile_size": 0,
        "tile_smooth": None,
        "per_channel": per_channel,
    }


def scale(img: np.ndarray, record: dict) -> np.ndarray:
    """Apply a percentile or low/high ``record`` (:func:`channel_values`) to ``img`` (C, ...) or any region of it:
    float32 of the same shape, computed as :func:`normalize` computes it."""
    if record["mode"] not in ("percentile", "low_high"):
        raise ValueError(f"scale() applies percentile and low/high records, not {record['mode']!r}")
    out = np.empty(img.shape, np.float32)
    for x, o, entry in zip(img, out, record["per_channel"]):
        if entry["status"] != "scaled":
            o[:] = 0
            continue
        if record["mode"] == "low_high":  # float64 arithmetic, stored as float32 (Cellpose with user-given bounds)
            lo, hi = entry["low"], entry["high"]
            np.subtract(x, lo, out=o, dtype=np.float64, casting="same_kind")
            np.divide(o, hi - lo, out=o, dtype=np.float64, casting="same_kind")
        elif record["arithmetic"] == "float64":
            _scale_rows(x, np.float64(entry["low"]), np.float64(entry["high"]), o)
        else:  # Cellpose's float32 arithmetic, bit for bit
            lo, hi = np.float32(entry["low"]), np.float32(entry["high"])
            np.subtract(x, lo, out=o, dtype=np.float32, casting="unsafe")
            o /= hi - lo
        if record["invert"]:
            np.subtract(np.float32(1), o, out=o)
    return out


def normalize(
    img: np.ndarray,
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    low_high: Sequence[float] | np.ndarray | None = None,
    invert: bool = False,
    tile_size: int = 0,
    tile_smooth: float = 1.0,
    allow_flat: bool = False,
) -> tuple[np.ndarray, dict]:
    """Scale each channel so that its low value maps to 0.0 and its high value to 1.0.

    Parameters
    ----------
    img : (C, Y, X) ndarray, or (C, Z, Y, X) for a whole stack at once
        Any integer or real dtype; finite values. A stack (as cellpose's ``norm3D``) takes each channel's
        percentiles over all its planes (subsampled as cellpose above 224**3 voxels); no tile mode.
    percentiles : (float, float)
        Low and high percentiles (0 <= low < high <= 100), used unless ``low_high`` is given.
    low_high : (2,) or (C, 2) array-like, optional
        Fixed low and high values, for all channels or per channel.
    invert : bool
        Return ``1 - x`` for every channel that was scaled (flat channels stay 0).
    tile_size : int
        > 0: percentiles per tile of this size, interpolated to every pixel (see the module doc).
    tile_smooth : float
        Sigma, in tiles, of the Gaussian that smooths the tile grid along Y and X (0: none).
    allow_flat : bool
        A constant image, or one whose every channel is flat, becomes all 0 (each channel's status says why)
        instead of an error: for the planes of a stack normalized one by one (cellpose sets them to 0).

    Returns
    -------
    out : (C, Y, X) float32
    record : dict
        ``mode`` ("percentile", "low_high" or "tile"), ``arithmetic`` ("float32" as Cellpose, or "float64"
        for wide values and for ``low_high``), ``percentiles``, ``invert``, ``tile_size``
        and ``per_channel``: one dict per channel with ``low``, ``high`` (numbers, or tile grids in
        tile mode) and ``status`` ("scaled", or why the channel was set to 0).

    Raises
    ------
    CpsnakeError
        Not (C, Y, X); bad percentiles or low/high; a constant image; every channel flat.
    """
    if img.ndim not in (3, 4):
        raise CpsnakeError(
            f"found an array of shape {img.shape}, expected a 2-D image (C, Y, X) or a stack (C, Z, Y, X)"
        )
    if img.ndim == 4 and int(tile_size) > 0:
        raise CpsnakeError(
            f"--tile-norm {tile_size} with a whole-stack normalization (--do-3d or --stitch-threshold); expected "
            "--tile-norm only for 2-D images and plane-by-plane stacks; leave --tile-norm out for this stack"
        )
    if min(img.shape) < 1:
        raise CpsnakeError(f"found an empty image of shape {img.shape}, expected at least 1 x 1 pixels")
    q = _check_percentiles(percentiles)
    _check_low_high(low_high, img.shape[0])
    if int(tile_size) < 0:
        raise CpsnakeError(f"tile size {tile_size}, expected 0 (whole image) or a positive number of pixels")
    tile_size = int(tile_size)
    ranges = [(img[c].min(), img[c].max()) for c in range(img.shape[0])]
    if low_high is not None or tile_size == 0:
        steps = [sample_step(img.shape[1:])] * img.shape[0]
        samples = [img[c][tuple(slice(None, None, k) for k in steps[c])] for c in range(img.shape[0])]
        record = channel_values(
            ranges, img.dtype, samples, steps, percentiles=q, low_high=low_high, invert=invert, allow_flat=allow_flat
        )
        return scale(img, record), record
    _check_not_constant(ranges, allow_flat)
    wide = _arithmetic(img.dtype, ranges)
    work = np.float64 if wide else np.float32
    out = np.empty(img.shape, np.float32)
    per_channel = []
    for c in range(img.shape[0]):
        x, o = img[c], out[c]
        entry: dict = {"low": None, "high": None, "status": "scaled"}
        maps = None if ranges[c][0] == ranges[c][1] else _tile_maps(x, q, tile_size, tile_smooth, work)
        if ranges[c][0] == ranges[c][1]:
            o[:] = 0
            entry["status"] = f"constant ({float(ranges[c][0]):g}): set to 0"
        elif maps is None:
            o[:] = 0
            entry["status"] = f"every tile's percentiles within {FLAT_RANGE:g}: set to 0"
        else:
            lo_grid, hi_grid, info = maps
            for y in range(0, x.shape[0], TILE_ROWS):  # row blocks keep the per-pixel maps small
                rows = slice(y, min(y + TILE_ROWS, x.shape[0]))
                lo_map = upsample_bilinear(lo_grid, x.shape, rows, work)
                hi_map = upsample_bilinear(hi_grid, x.shape, rows, work)
                if wide:
                    _scale_rows(x[rows], lo_map, hi_map, o[rows])
                    continue
                np.subtract(x[rows], lo_map, out=o[rows], dtype=np.float32, casting="unsafe")
                hi_map -= lo_map
                o[rows] /= hi_map
            entry.update(info)
        if invert and entry["status"] == "scaled":
            np.subtract(np.float32(1), o, out=o)
        per_channel.append(entry)
    if all(e["status"] != "scaled" for e in per_channel) and not allow_flat:
        raise _all_flat_error(per_channel, q)
    record = {
        "mode": "tile",
        "arithmetic": "float64" if wide else "float32",
        "percentiles": list(q),
        "invert": bool(invert),
        "tile_size": tile_size,
        "tile_smooth": float(tile_smooth),
        "per_channel": per_channel,
    }
    return out, record
