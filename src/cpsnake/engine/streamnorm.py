"""The normalization values of an image too large to hold whole, from one pass over bands of its rows.

:func:`stream_values` takes the image as bands of rows, top to bottom (what
:func:`cpsnake.io.regions.bands` reads from a TIFF or OME-Zarr region by region), and collects, per channel,
the minimum and maximum and the pixels Cellpose takes its percentiles from: every pixel up to 224**3 px,
above that every (Y // 224, X // 224)-th one (:func:`cpsnake.engine.normalize.sample_step`; the grid goes on
from one band to the next). From those, :func:`cpsnake.engine.normalize.channel_values` makes the record, so
the values, and every region scaled with them (:func:`cpsnake.engine.normalize.scale`), are bit-equal to
:func:`cpsnake.engine.normalize.normalize` on the whole image, for every dtype. Only the subsample is kept:
memory is that of one band plus about Y * X / 224**2 samples per channel.

Shapes: bands ``(C, rows, X)``; the image ``(C, Y, X)``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from cpsnake.engine.normalize import channel_values, sample_step, select_channels

__all__ = ["stream_values"]


def stream_values(
    bands: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, int, int],
    dtype: np.dtype,
    channels: Sequence[int] | None = None,
    *,
    percentiles=(1.0, 99.0),
    low_high=None,
    invert: bool = False,
) -> dict:
    """The normalization record of the whole image ``(C, Y, X)`` = ``shape`` of ``dtype`` from one pass over
    ``bands``: ``(y0, pixels (C, rows, X))`` for consecutive bands of rows covering the image from row 0.

    ``channels`` as :func:`cpsnake.engine.normalize.select_channels` (checked against C before the first band is
    taken); the rest as :func:`cpsnake.engine.normalize.normalize`. Errors of the bands (a corrupt chunk, NaN)
    reach the caller as they are; the record's errors (a constant image, ...) are those of
    :func:`cpsnake.engine.normalize.channel_values`.
    """
    C, Y, X = shape
    select_channels(np.zeros((C, 1, 1), np.uint8), channels)  # checks the channel list against C
    picked = list(channels) if channels is not None else list(range(C))
    step = sample_step((Y, X))
    lo = [None] * len(picked)
    hi = [None] * len(picked)
    parts: list[list[np.ndarray]] = [[] for _ in picked]
    for y0, band in bands:
        band = band[picked]
        first = -y0 % step[0]  # the band's first row on the subsample grid (rows 0, step, 2 step, ...)
        for c in range(len(picked)):
            x = band[c]
            bmin, bmax = x.min(), x.max()
            lo[c] = bmin if lo[c] is None else min(lo[c], bmin)
            hi[c] = bmax if hi[c] is None else max(hi[c], bmax)
            parts[c].append(np.array(x[first :: step[0], :: step[1]]))
    samples = [np.concatenate(p, axis=0) for p in parts]
    return channel_values(
        list(zip(lo, hi)),
        dtype,
        samples,
        [step] * len(picked),
        percentiles=percentiles,
        low_high=low_high,
        invert=invert,
    )
