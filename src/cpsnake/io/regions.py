"""Large 2-D images read region by region, never whole: a :class:`RegionImage` and the TIFF behind one.

:func:`cpsnake.io.inputs.open_regions` reads a file's header and returns a :class:`RegionImage` whose
``read(y0, y1, x0, x1)`` decodes only the chunks (TIFF tiles or strips, Zarr chunks) that overlap the region:

* **TIFF, BigTIFF, OME-TIFF** (tiled or striped, any codec imagecodecs has; :func:`open_tiff_regions`): the
  first series at full resolution (level 0 of a pyramid), through tifffile's Zarr store of it
  (``series.aszarr``), which maps each chunk to its tile or strip in the file. Uncompressed data stored in
  one piece (what ImageJ and tifffile write by default, one "chunk" the size of the image) is read by file
  offset, a band of rows at a time. Why tifffile's store rather than a TIFF reader of our own: it already
  knows every layout and codec cpsnake's whole-image reader accepts, so both readers see the same pixels.
* **OME-Zarr** (NGFF 0.4 / 0.5): :func:`cpsnake.io.omezarr.open_zarr_regions`, a folder read only from inside
  itself.

Axes as :func:`cpsnake.io.inputs.read_image`: C or S (RGB samples) become channels, an alpha sample is dropped,
singleton axes are dropped, an axis without a name is taken as channels when it has at most 3 entries.
A stack (Z or T with more than one plane) is reported by ``stack_axes`` (the caller reads it whole).

:func:`bands` gives the whole image as bands of rows, top to bottom, a whole number of storage chunks each
(:func:`band_rows`): the one pass over a large image from which
:func:`cpsnake.engine.streamnorm.stream_values` computes the normalization values.

Errors are one line each (:class:`~cpsnake.errors.CpsnakeError`): a corrupt or truncated chunk (found
by the streaming pass, before any segmentation), NaN or infinite pixels (every region read checks its
pixels), a missing pyramid level, an unreadable header. When one chunk of a read fails, the reads zarr still
runs for the others are waited for (:func:`settle_reads`) before the error is raised, so nothing is printed
after its line and the file can be closed.

Limits (:mod:`cpsnake.io.limits`): a storage chunk (TIFF tile or strip, Zarr chunk, Zarr v3 shard and inner
chunk) is decoded whole, so each declares at most ``max_pixels`` samples (all its axes), checked at open
before any pixel is decoded; a region read runs under a decode budget of twice the bytes of the chunks it
overlaps (+ 256 MB), so a chunk whose compressed data expand beyond its declared size fails with one line.

Shapes: regions ``(C, y1 - y0, x1 - x0)`` in the file's dtype (bool as uint8).

zarr is imported inside the functions that use it (its import takes a second): a command that reads a small
image whole does not pay for it.
"""

from __future__ import annotations

import asyncio
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from cpsnake.errors import CpsnakeError, CpsnakeWarning, library_text
from cpsnake.io import limits
from cpsnake.io.calibration import calibration_warning
from cpsnake.io.formats import MAX_GUESSED_CHANNELS
from cpsnake.io.tiff import open_tiff

__all__ = ["RegionImage", "settle_reads", "open_tiff_regions", "band_rows", "bands"]

_UNKNOWN = "QI"  # tifffile's names for axes without metadata


def settle_reads() -> None:
    """Wait (60 s at most) for the chunk reads that zarr's event loop still runs after one read of a region
    failed, collecting their errors: else they finish, or fail on a closed file, after the error line is
    printed and fill stderr with asyncio's reports of pending tasks."""
    sync = sys.modules.get("zarr.core.sync")
    if sync is None or sync.loop[0] is None or sync.loop[0].is_closed():
        return

    async def rest() -> None:
        me = asyncio.current_task()
        while pending := [t for t in asyncio.all_tasks() if t is not me]:
            await asyncio.gather(*pending, return_exceptions=True)

    try:
        sync.sync(rest(), timeout=60)
    except Exception:
        pass


class RegionImage:
    """A 2-D image on disk, read region by region.

    Attributes: ``path``; ``shape`` (C, Y, X) after axis handling; ``dtype``; ``chunks`` (rows, cols) of its
    storage; ``stack_axes``; ``meta`` (as :func:`cpsnake.io.inputs.read_image`'s: ``pixel_size``, ``unit``, ``axes``,
    ``shape`` (the file's), ``dtype``, ``format`` ("tiff" or "ome-zarr"), ``dropped_alpha``,
    ``calibration_problem``, ``stack_axes``, ``z_step``, ``frame_interval``, ``time_unit``; plus ``levels``,
    the pyramid's level count).

    ``fetch(index)`` returns the raw array's pixels for a tuple of one int or slice per file axis;
    ``close()`` releases the file. ``units``: every shape (one entry per file axis) the storage decodes whole
    (chunks, and Zarr v3 shards and their inner chunks; default ``[chunks]``); each must hold at most
    ``max_pixels`` samples (:func:`cpsnake.io.limits.max_pixels` when None), else a one-line CpsnakeError (about
    the image itself when it too holds more, as :func:`cpsnake.io.limits.check_samples` words it).
    """

    def __init__(
        self,
        path: Path,
        raw_shape: Sequence[int],
        chunks: Sequence[int],
        axes: str,
        meta: dict,
        fetch: Callable[[tuple], np.ndarray],
        close: Callable[[], None] | None = None,
        *,
        units: Sequence[Sequence[int]] | None = None,
        max_pixels: int | None = None,
    ):
        self.path = path
        self.raw_shape = tuple(int(n) for n in raw_shape)
        self.meta = meta
        self.dtype = np.dtype(meta["dtype"]) if meta["dtype"] != "bool" else np.dtype(np.uint8)
        self._fetch, self._close, self._axes = fetch, close, axes
        self._index, self._order, nchan = _plan(path, axes, self.raw_shape, meta)
        self.stack_axes = meta["stack_axes"]
        ydim, xdim = axes.index("Y"), axes.index("X")
        self.shape = (nchan, self.raw_shape[ydim], self.raw_shape[xdim])
        self.chunks = (int(chunks[ydim]), int(chunks[xdim]))
        units = [tuple(int(n) for n in u) for u in (units or [chunks])]
        allowed = limits.max_pixels(max_pixels)
        for unit in units:
            n, dims = math.prod(unit), " x ".join(str(k) for k in unit)
            if len(unit) != len(axes) or min(unit) < 1:
                raise CpsnakeError(
                    f"{path}: found storage chunks of {dims} for axes {axes!r}; expected at least 1 "
                    "sample per axis; write the image again"
                )
            if n > allowed:
                limits.check_samples(path, self.raw_shape, limit=allowed)  # the image too: its own line comes first
                limits.check_chunk(path, unit, limit=allowed, what="storage chunks", image=self.raw_shape)
        self._unit = tuple(max(u[d] for u in units) for d in range(len(axes)))  # the largest decoded whole

    def __enter__(self) -> "RegionImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def _decoded_bytes(self, y0: int, y1: int, x0: int, x1: int) -> int:
        """Bytes of the storage units (all their axes) that the region ``[y0:y1, x0:x1]`` overlaps."""
        n = 1
        for a, size, unit, i in zip(self._axes, self.raw_shape, self._unit, self._index):
            lo, hi = (
                (y0, y1) if a == "Y" else (x0, x1) if a == "X" else (0, size) if isinstance(i, slice) else (i, i + 1)
            )
            n *= (-(-hi // unit) - lo // unit) * unit
        return n * self.dtype.itemsize

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``(C, y1 - y0, x1 - x0)`` of the region, in the file's dtype; only overlapping chunks are decoded.

        Decoding runs under :func:`cpsnake.io.limits.decode_budget` of twice the overlapped chunks' bytes. Raises a
        one-line CpsnakeError naming the file and the rows and columns for data that expand beyond that, a
        chunk that cannot be decoded or read (any exception of the codecs or of zarr), and NaN or infinite values.
        """
        idx = tuple(
            slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else i for a, i in zip(self._axes, self._index)
        )
        where = f"rows {y0}-{y1}, columns {x0}-{x1}"
        try:
            with limits.decode_budget(2 * self._decoded_bytes(y0, y1, x0, x1)):
                try:
                    data = np.asarray(self._fetch(idx))
                except BaseException:
                    settle_reads()  # inside the budget: the other chunks of the read are decoded under it too
                    raise
        except MemoryError:
            raise CpsnakeError(
                f"{self.path}: found compressed data in {where} that expand beyond the size the header declares; "
                "expected chunks that match the header; the file is corrupt or hostile: export it again from the "
                "original"
            ) from None
        except CpsnakeError:
            raise
        except Exception as exc:  # codecs and zarr raise many types for a corrupt chunk
            raise CpsnakeError(
                f"{self.path}: found a chunk that cannot be decoded in {where} ({library_text(exc)}); "
                "expected complete image data; the file is truncated or corrupt: copy or export it again"
            ) from None
        data = data.transpose(self._order)
        if data.ndim == 2:
            data = data[np.newaxis]
        if data.dtype == bool:
            data = data.astype(np.uint8)
        if data.dtype.kind == "f":
            bad = data.size - int(np.count_nonzero(np.isfinite(data)))
            if bad:
                raise CpsnakeError(
                    f"{self.path}: found {bad} NaN or infinite pixel values in {where}; expected finite intensities; "
                    "replace them first (e.g. Fiji: Process > Math > Remove NaNs, or set them to the background value)"
                )
        return np.ascontiguousarray(data.astype(data.dtype.newbyteorder("="), copy=False))


def _contiguous_fetch(
    path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], ydim: int
) -> Callable[[tuple], np.ndarray]:
    """``fetch`` of uncompressed data stored in one piece: the rows of the region, one file read per plane before Y."""

    def fetch(idx: tuple) -> np.ndarray:
        rows = idx[ydim]
        y0, y1 = rows.start, rows.stop
        row = math.prod(shape[ydim + 1 :])  # samples per row
        lead = shape[:ydim]
        out = np.empty(lead + (y1 - y0,) + shape[ydim + 1 :], dtype)
        flat = out.reshape(math.prod(lead), -1) if lead else out.reshape(1, -1)
        with open(path, "rb") as fh:
            for k in range(flat.shape[0]):
                fh.seek(offset + (k * shape[ydim] + y0) * row * dtype.itemsize)
                n = fh.readinto(memoryview(flat[k]).cast("B"))
                if n != flat[k].nbytes:
                    raise CpsnakeError(
                        f"{path}: found the file shorter than its header declares (rows {y0}-{y1}); "
                        "expected complete image data; the file is truncated: copy or export it again"
                    )
        return out[tuple(slice(None) if d == ydim else i for d, i in enumerate(idx))]

    return fetch


def _plan(path: Path, axes: str, shape: tuple[int, ...], meta: dict) -> tuple[tuple, tuple, int]:
    """How to index the raw array and transpose it to ([T, Z,] C, Y, X): (index per raw axis, order, channels).

    Also sets ``meta["stack_axes"]`` (a stack is not refused here: the caller reads it whole)."""
    if "Y" not in axes or "X" not in axes or len(axes) != len(shape):
        raise CpsnakeError(
            f"{path}: found shape {shape} with axes {axes!r}; expected an image with Y and X axes; "
            "save the image again with its axes (e.g. Fiji: File > Save As > Tiff)"
        )
    index: list = []
    kept = []
    for a, n in zip(axes, shape):
        if a in "YX":
            index.append(slice(None))
            kept.append(a)
        elif n == 1:
            index.append(0)
        elif a in "CS" + _UNKNOWN:
            if a in _UNKNOWN and (n > MAX_GUESSED_CHANNELS or "C" in kept):
                raise CpsnakeError(
                    f"{path}: found {n} planes on an axis without a name (shape {shape}, axes {axes!r}); expected the "
                    "axes named (Z, T or C); save it as an ImageJ hyperstack or OME-TIFF with its axes"
                )
            if meta.pop("has_alpha", False) and a == "S" and n in (2, 4):
                index.append(slice(0, n - 1))
                meta["dropped_alpha"] = True
            else:
                index.append(slice(None))
            kept.append("C")
        elif a in "TZ":
            index.append(slice(None))
            kept.append(a)
        else:
            raise CpsnakeError(
                f"{path}: found axis {a!r} in axes {axes!r} (shape {shape}); expected a 2-D image with "
                "channels (C, Y, X); save one image per file"
            )
    if kept.count("C") > 1:
        raise CpsnakeError(
            f"{path}: found two channel axes in {axes!r} (shape {shape}); expected one; save one image per file"
        )
    meta["stack_axes"] = "".join(a for a in "TZ" if a in kept)
    order = tuple(kept.index(a) for a in meta["stack_axes"] + ("C" if "C" in kept else "") + "YX")
    if "C" in kept:
        c = axes[[i for i, x in enumerate(index) if not isinstance(x, int)][kept.index("C")]]
        sl = index[axes.index(c)]
        n = shape[axes.index(c)]
        nchan = len(range(n)[sl])
    else:
        nchan = 1
    return tuple(index), order, nchan


def open_tiff_regions(path: Path, level: int = 0, max_pixels: int | None = None) -> RegionImage:
    """A TIFF's first series (:func:`cpsnake.io.tiff.open_tiff`: broken metadata set aside with a warning) at
    ``level``; its tiles or strips count against ``max_pixels`` (:class:`RegionImage`)."""
    import zarr

    expected = "a TIFF image (tiled or striped, BigTIFF, pyramidal OME-TIFF)"
    head = open_tiff(path, expected=expected, fix="export it again")
    tif, series = head.tif, head.series
    try:
        if level >= len(series.levels):
            raise CpsnakeError(
                f"{path}: found {len(series.levels)} pyramid level(s), expected level {level}; "
                "pass a level the file has (0 is the full resolution)"
            )
        lev = series.levels[level]
        dtype = lev.dtype
        if dtype is None or dtype.kind not in "buif":
            raise CpsnakeError(
                f"{path}: found pixels of type {dtype}; expected integer or real intensities; "
                "convert the image (e.g. Fiji: Image > Type > 32-bit)"
            )
        problem = head.meta["calibration_problem"]
        page = lev.pages[0] if lev.pages else tif.pages.first
        cal = head.meta
        meta = {
            "pixel_size": cal["pixel_size"],
            "unit": cal["unit"],
            "axes": lev.axes,
            "shape": tuple(int(n) for n in lev.shape),
            "dtype": str(dtype),
            "format": "tiff",
            "dropped_alpha": False,
            "calibration_problem": problem,
            "z_step": cal["z_step"],
            "frame_interval": cal["frame_interval"],
            "time_unit": cal["time_unit"],
            "levels": len(series.levels),
            "has_alpha": bool(getattr(page, "extrasamples", ())) and "S" in lev.axes,
        }
        offset = lev.dataoffset
        if offset is not None and "Y" in lev.axes:  # uncompressed, in one piece (tifffile: dataoffset)
            shape = tuple(int(n) for n in lev.shape)
            fetch = _contiguous_fetch(
                path, int(offset), np.dtype(dtype).newbyteorder(tif.byteorder), shape, lev.axes.index("Y")
            )
            tif.close()
            img = RegionImage(path, shape, (1,) * len(shape), lev.axes, meta, fetch, max_pixels=max_pixels)
        else:
            store = series.aszarr(level=level)
            array = zarr.open_array(store, mode="r")
            img = RegionImage(
                path,
                array.shape,
                array.chunks,
                lev.axes,
                meta,
                array.__getitem__,
                close=lambda: (store.close(), tif.close()),
                max_pixels=max_pixels,
            )
    except CpsnakeError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise CpsnakeError(
            f"{path}: found a TIFF whose layout cannot be read in regions ({library_text(exc)}); "
            f"expected {expected}; export it again (e.g. Fiji: File > Save As > Tiff, or as a tiled "
            "OME-TIFF)"
        ) from None
    if head.ignored:
        warnings.warn(head.ignored, CpsnakeWarning, stacklevel=3)
    if problem:
        warnings.warn(calibration_warning(path, problem), CpsnakeWarning, stacklevel=3)
    return img


def band_rows(img: RegionImage, target_bytes: int = 64 * 2**20) -> int:
    """Rows per band of a streaming pass: a whole number of storage chunks, about ``target_bytes`` of data."""
    per_row = max(1, img.shape[0] * img.shape[2] * img.dtype.itemsize)
    rows = max(1, target_bytes // per_row)
    ch = max(1, img.chunks[0])
    return max(ch, rows // ch * ch)


def bands(img: RegionImage, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(y0, pixels (C, rows, X))`` of each band of rows of the whole image, top to bottom; ``rows`` per band
    (default :func:`band_rows`; the last band may be shorter). Each band is a region read (NaN and infinity
    refused, a corrupt chunk one line)."""
    C, Y, X = img.shape
    rows = rows or band_rows(img)
    for y0 in range(0, Y, rows):
        yield y0, img.read(y0, min(Y, y0 + rows), 0, X)
