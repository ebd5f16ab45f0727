"""Large 2-D images read region by region, never whole: TIFF / BigTIFF / pyramidal OME-TIFF and OME-Zarr.

:func:`open_image` reads a file's header and returns a :class:`RegionImage` whose ``read(y0, y1, x0, x1)``
decodes only the chunks (TIFF tiles or strips, Zarr chunks) that overlap the region:

* **TIFF, BigTIFF, OME-TIFF** (tiled or striped, any codec imagecodecs has): the first series at full
  resolution (level 0 of a pyramid), through tifffile's Zarr store of it (``series.aszarr``), which maps
  each chunk to its tile or strip in the file. Uncompressed data stored in one piece (what ImageJ and
  tifffile write by default, one "chunk" the size of the image) is read by file offset, a band of rows at
  a time. Why tifffile's store rather than a TIFF reader of our own: it already knows every layout and
  codec cpsnake's whole-image reader accepts, so both readers see the same pixels.
* **OME-Zarr** (NGFF 0.4, Zarr v2; NGFF 0.5, Zarr v3): a folder; the first multiscale image's first
  dataset (the full resolution), its axes, and its pixel size from the ``scale`` transformations. Why zarr
  and not ome-zarr-py: the reading needs the multiscales metadata (a few JSON keys) and one array, and
  ome-zarr-py would bring dask, fsspec and an S3 client to every install; the tests use ome-zarr-py as the
  oracle that writes the inputs and reads cpsnake's outputs.

Axes as :func:`cpsnake.io.read_image`: C or S (RGB samples) become channels, an alpha sample is dropped,
singleton axes are dropped, an axis without a name is taken as channels when it has at most 3 entries.
A stack (Z or T with more than one plane) is reported by ``stack_axes`` (the caller reads it whole).

:func:`stream_values` computes the normalization record in one pass over the image (per channel: the
minimum and maximum, NaN/infinity check, and the pixels Cellpose takes its percentiles from: every pixel
up to 224**3 px, above that every (Y // 224, X // 224)-th one), so the values, and every normalized
region, are bit-equal to :func:`cpsnake.normalize.normalize` on the whole image, for every dtype.

Errors are one line each (:class:`~cpsnake.errors.CpsnakeError`): a corrupt or truncated chunk (found
by the streaming pass, before any segmentation), an OME-Zarr without ``multiscales`` metadata, a missing
pyramid level, an unreadable header.

Shapes: regions ``(C, y1 - y0, x1 - x0)`` in the file's dtype (bool as uint8).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cpsnake.errors import CpsnakeError

__all__ = ["RegionImage", "is_ome_zarr", "open_image", "stream_values", "band_rows"]

_UNKNOWN = "QI"  # tifffile's names for axes without metadata
MAX_GUESSED_CHANNELS = 3
_UNITS = {"micrometer": "micron", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
          "angstrom": "\\u00c5"}


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """True for a folder holding a Zarr group (``zarr.json``, or ``.zgroup`` / ``.zattrs``)."""
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in ("zarr.json", ".zgroup", ".zattrs"))


class RegionImage:
    """A 2-D image on disk, read region by region.

    Attributes: ``path``; ``shape`` (C, Y, X) after axis handling; ``dtype``; ``chunks`` (rows, cols) of its
    storage; ``stack_axes``; ``meta`` (as :func:`cpsnake.io.read_image`'s: ``pixel_size``, ``unit``, ``axes``,
    ``shape`` (the file's), ``dtype``, ``format`` ("tiff" or "ome-zarr"), ``dropped_alpha``,
    ``calibration_problem``, ``stack_axes``, ``z_step``, ``frame_interval``, ``time_unit``; plus ``levels``,
    the pyramid's level count).

    ``fetch(index)`` returns the raw array's pixels for a tuple of one int or slice per file axis;
    ``close()`` releases the file.
    """

    def __init__(self, path: Path, raw_shape: Sequence[int], chunks: Sequence[int], axes: str, meta: dict,
                 fetch: Callable[[tuple], np.ndarray], close: Callable[[], None] | None = None):
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

    def __enter__(self) -> "RegionImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``(C, y1 - y0, x1 - x0)`` of the region, in the file's dtype; only overlapping chunks are decoded."""
        idx = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else i
                    for a, i in zip(self._axes, self._index))
        from cpsnake import limits

        # the chunks a region overlaps are decoded whole: their codecs may not expand beyond that
        ch, cw = self.chunks
        declared = self.shape[0] * (y1 - y0 + ch) * (x1 - x0 + cw) * self.dtype.itemsize
        try:
            with limits.decode_budget(2 * declared):
                data = np.asarray(self._fetch(idx))
        except MemoryError:
            raise CpsnakeError(
                f"{self.path}: found compressed data in rows {y0}-{y1}, columns {x0}-{x1} that expand beyond the size "
                "the header declares; expected chunks that match the header; the file is corrupt or hostile: export "
                "it again from the original") from None
        except CpsnakeError:
            raise
        except Exception as exc:  # codecs raise many types for a corrupt chunk
            msg = " ".join(str(exc).split()) or type(exc).__name__
            raise CpsnakeError(
                f"{self.path}: found a chunk that cannot be decoded in rows {y0}-{y1}, columns {x0}-{x1} ({msg}); "
                "expected complete image data; the file is truncated or corrupt: copy or export it again"
            ) from None
        data = data.transpose(self._order)
        if data.ndim == 2:
            data = data[np.newaxis]
        if data.dtype == bool:
            data = data.astype(np.uint8)
        return np.ascontiguousarray(data.astype(data.dtype.newbyteorder("="), copy=False))


def _contiguous_fetch(path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], ydim: int
                      ) -> Callable[[tuple], np.ndarray]:
    """``fetch`` of uncompressed data stored in one piece: the rows of the region, one file read per plane before Y."""

    def fetch(idx: tuple) -> np.ndarray:
        rows = idx[ydim]
        y0, y1 = rows.start, rows.stop
        row = math.prod(shape[ydim + 1:])  # samples per row
        lead = shape[:ydim]
        out = np.empty(lead + (y1 - y0,) + shape[ydim + 1:], dtype)
        flat = out.reshape(math.prod(lead), -1) if lead else out.reshape(1, -1)
        with open(path, "rb") as fh:
            for k in range(flat.shape[0]):
                fh.seek(offset + (k * shape[ydim] + y0) * row * dtype.itemsize)
                n = fh.readinto(memoryview(flat[k]).cast("B"))
                if n != flat[k].nbytes:
                    raise CpsnakeError(f"{path}: found the file shorter than its header declares (rows {y0}-{y1}); "
                                       "expected complete image data; the file is truncated: copy or export it again")
        return out[tuple(slice(None) if d == ydim else i for d, i in enumerate(idx))]

    return fetch


def _plan(path: Path, axes: str, shape: tuple[int, ...], meta: dict) -> tuple[tuple, tuple, int]:
    """How to index the raw array and transpose it to ([T, Z,] C, Y, X): (index per raw axis, order, channels).

    Also sets ``meta["stack_axes"]`` (a stack is not refused here: the caller reads it whole)."""
    if "Y" not in axes or "X" not in axes or len(axes) != len(shape):
        raise CpsnakeError(f"{path}: found shape {shape} with axes {axes!r}; expected an image with Y and X axes; "
                           "save the image again with its axes (e.g. Fiji: File > Save As > Tiff)")
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
                    "axes named (Z, T or C); save it as an ImageJ hyperstack or OME-TIFF with its axes")
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
            raise CpsnakeError(f"{path}: found axis {a!r} in axes {axes!r} (shape {shape}); expected a 2-D image with "
                               "channels (C, Y, X); save one image per file")
    if kept.count("C") > 1:
        raise CpsnakeError(f"{path}: found two channel axes in {axes!r} (shape {shape}); expected one; save one image "
                           "per file")
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


def open_image(path: str | os.PathLike, *, level: int = 0) -> RegionImage:
    """Open a TIFF (file) or OME-Zarr (folder) image for region reads; only its header is read."""
    path = Path(path)
    if path.is_dir():
        if not is_ome_zarr(path):
            raise CpsnakeError(f"{path}: found a folder that is not a Zarr group (no zarr.json, .zgroup or .zattrs); "
                               "expected an image file or an OME-Zarr folder; pass the .zarr folder itself")
        return _open_zarr(path, level)
    return _open_tiff(path, level)


def _open_tiff(path: Path, level: int) -> RegionImage:
    """A TIFF's first series (:func:`cpsnake.io.open_tiff`: broken metadata set aside with a warning) at ``level``."""
    import warnings

    import zarr

    from cpsnake import io
    from cpsnake.calibration import calibration_warning
    from cpsnake.errors import CpsnakeWarning, library_text

    expected = "a TIFF image (tiled or striped, BigTIFF, pyramidal OME-TIFF)"
    head = io.open_tiff(path, expected=expected, fix="export it again")
    tif, series = head.tif, head.series
    try:
        if level >= len(series.levels):
            raise CpsnakeError(f"{path}: found {len(series.levels)} pyramid level(s), expected level {level}; "
                               "pass a level the file has (0 is the full resolution)")
        lev = series.levels[level]
        dtype = lev.dtype
        if dtype is None or dtype.kind not in "buif":
            raise CpsnakeError(f"{path}: found pixels of type {dtype}; expected integer or real intensities; "
                               "convert the image (e.g. Fiji: Image > Type > 32-bit)")
        problem = head.meta["calibration_problem"]
        page = lev.pages[0] if lev.pages else tif.pages.first
        cal = head.meta
        meta = {"pixel_size": cal["pixel_size"], "unit": cal["unit"], "axes": lev.axes,
                "shape": tuple(int(n) for n in lev.shape), "dtype": str(dtype), "format": "tiff",
                "dropped_alpha": False,
                "calibration_problem": problem, "z_step": cal["z_step"], "frame_interval": cal["frame_interval"],
                "time_unit": cal["time_unit"], "levels": len(series.levels),
                "has_alpha": bool(getattr(page, "extrasamples", ())) and "S" in lev.axes}
        offset = lev.dataoffset
        if offset is not None and "Y" in lev.axes:  # uncompressed, in one piece (tifffile: dataoffset)
            shape = tuple(int(n) for n in lev.shape)
            fetch = _contiguous_fetch(path, int(offset), np.dtype(dtype).newbyteorder(tif.byteorder), shape,
                                      lev.axes.index("Y"))
            tif.close()
            img = RegionImage(path, shape, (1,) * len(shape), lev.axes, meta, fetch)
        else:
            store = series.aszarr(level=level)
            array = zarr.open_array(store, mode="r")
            img = RegionImage(path, array.shape, array.chunks, lev.axes, meta, array.__getitem__,
                              close=lambda: (store.close(), tif.close()))
    except CpsnakeError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise CpsnakeError(f"{path}: found a TIFF whose layout cannot be read in regions ({library_text(exc)}); "
                           f"expected {expected}; export it again (e.g. Fiji: File > Save As > Tiff, or as a tiled "
                           "OME-TIFF)") from None
    if head.ignored:
        warnings.warn(head.ignored, CpsnakeWarning, stacklevel=3)
    if problem:
        warnings.warn(calibration_warning(path, problem), CpsnakeWarning, stacklevel=3)
    return img


def _zarr_attrs(path: Path) -> dict:
    """The group's attributes: ``zarr.json``'s ``attributes`` (v3) or ``.zattrs`` (v2)."""
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = path / name
        if f.is_file():
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CpsnakeError(f"{f}: found metadata that is not JSON ({exc}); expected OME-Zarr metadata; "
                                   "write the OME-Zarr again") from None
            if not isinstance(doc, dict):
                raise CpsnakeError(f"{f}: found {type(doc).__name__} metadata, expected a JSON object")
            attrs = doc.get(key, {}) if key else doc
            if attrs:
                return attrs if isinstance(attrs, dict) else {}
    return {}


def _open_zarr(path: Path, level: int) -> RegionImage:
    import zarr

    attrs = _zarr_attrs(path)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests under "ome"
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise CpsnakeError(f"{path}: found a Zarr group without OME-NGFF multiscales metadata; expected an OME-Zarr "
                           "image (NGFF 0.4 or 0.5, e.g. written by bioformats2raw, QuPath or ome-zarr-py); convert it, "
                           "e.g. bioformats2raw IMAGE OUT.zarr")
    m = ms[0]
    datasets = m.get("datasets") or []
    if level >= len(datasets) or not isinstance(datasets[level], dict) or "path" not in datasets[level]:
        raise CpsnakeError(f"{path}: found {len(datasets)} pyramid level(s) in the multiscales metadata, expected level "
                           f"{level}; the OME-Zarr is incomplete: write it again")
    ds = datasets[level]
    try:
        array = zarr.open_array(store=str(path / ds["path"]), mode="r")
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise CpsnakeError(f"{path}: found pyramid level {level} ({ds['path']!r}) missing or unreadable ({msg}); "
                           "expected the array the multiscales metadata names; the OME-Zarr is incomplete: write it "
                           "again") from None
    names, units = [], []
    for a in m.get("axes") or []:
        names.append((a.get("name") if isinstance(a, dict) else str(a)).lower())
        units.append(a.get("unit") if isinstance(a, dict) else None)
    if not names:  # NGFF 0.1-0.3 without axes: tczyx
        names = list("tczyx")[-array.ndim:]
        units = [None] * array.ndim
    if len(names) != array.ndim:
        raise CpsnakeError(f"{path}: found {len(names)} axes in the metadata for an array of {array.ndim} dimensions; "
                           "expected one axis per dimension; write the OME-Zarr again")
    axes = "".join({"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(n, "Q") for n in names)
    scale = np.ones(array.ndim)
    for tr in list(ds.get("coordinateTransformations") or []) + list(m.get("coordinateTransformations") or []):
        if isinstance(tr, dict) and tr.get("type") == "scale" and len(tr.get("scale") or []) == array.ndim:
            scale = scale * np.asarray(tr["scale"], float)
    yi, xi = axes.find("Y"), axes.find("X")
    pixel_size = unit = problem = None
    if yi >= 0 and xi >= 0:
        py, px = float(scale[yi]), float(scale[xi])
        if not (math.isfinite(py) and math.isfinite(px) and 1e-30 <= py <= 1e30 and 1e-30 <= px <= 1e30):
            problem = f"scale ({py}, {px}) in the multiscales metadata"
        elif units[xi] or (py, px) != (1.0, 1.0):
            pixel_size, unit = (py, px), _UNITS.get(units[xi] or "", units[xi]) if units[xi] else None
    zi = axes.find("Z")
    meta = {"pixel_size": pixel_size, "unit": unit, "axes": axes, "shape": tuple(int(n) for n in array.shape),
            "dtype": str(array.dtype), "format": "ome-zarr", "dropped_alpha": False, "calibration_problem": problem,
            "z_step": float(scale[zi]) if zi >= 0 and scale[zi] != 1 else None, "frame_interval": None,
            "time_unit": None, "levels": len(datasets)}
    if np.dtype(array.dtype).kind not in "buif":
        raise CpsnakeError(f"{path}: found pixels of type {array.dtype}; expected integer or real intensities")
    return RegionImage(path, array.shape, array.chunks, axes, meta, array.__getitem__)


def band_rows(img: RegionImage, target_bytes: int = 64 * 2**20) -> int:
    """Rows per band of a streaming pass: a whole number of storage chunks, about ``target_bytes`` of data."""
    per_row = max(1, img.shape[0] * img.shape[2] * img.dtype.itemsize)
    rows = max(1, target_bytes // per_row)
    ch = max(1, img.chunks[0])
    return max(ch, rows // ch * ch)


def stream_values(img: RegionImage, channels: Sequence[int] | None = None, *, percentiles=(1.0, 99.0),
                  low_high=None, invert: bool = False, rows: int | None = None) -> dict:
    """The normalization record of the whole image from one pass over bands of rows (see the module doc).

    ``channels`` as :func:`cpsnake.normalize.select_channels`; the rest as :func:`cpsnake.normalize.normalize`;
    ``rows`` per band (default :func:`band_rows`).
    Raises a one-line CpsnakeError on NaN or infinite values and on a corrupt chunk.
    """
    from cpsnake.normalize import channel_values, sample_step, select_channels

    C, Y, X = img.shape
    select_channels(np.zeros((C, 1, 1), np.uint8), channels)  # checks the channel list against C
    picked = list(channels) if channels is not None else list(range(C))
    step = sample_step((Y, X))
    lo = [None] * len(picked)
    hi = [None] * len(picked)
    parts: list[list[np.ndarray]] = [[] for _ in picked]
    rows = rows or band_rows(img)
    for y0 in range(0, Y, rows):
        y1 = min(Y, y0 + rows)
        band = img.read(y0, y1, 0, X)[picked]
        if band.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(band)))
            if bad:
                raise CpsnakeError(
                    f"{img.path}: found {bad} NaN or infinite pixel values in rows {y0}-{y1}; expected finite "
                    "intensities; replace them first (e.g. Fiji: Process > Math > Remove NaNs)")
        first = -y0 % step[0]  # the band's first row on the subsample grid (rows 0, step, 2 step, ...)
        for c in range(len(picked)):
            x = band[c]
            bmin, bmax = x.min(), x.max()
            lo[c] = bmin if lo[c] is None else min(lo[c], bmin)
            hi[c] = bmax if hi[c] is None else max(hi[c], bmax)
            parts[c].append(np.array(x[first :: step[0], :: step[1]]))
    samples = [np.concatenate(p, axis=0) for p in parts]
    return channel_values(list(zip(lo, hi)), img.dtype, samples, [step] * len(picked), percentiles=percentiles,
                          low_high=low_high, invert=invert)
