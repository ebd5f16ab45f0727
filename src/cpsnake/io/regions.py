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

Axes as :func:`cpsnake.io.images.read_image`: C or S (RGB samples) become channels, an alpha sample is dropped,
singleton axes are dropped, an axis without a name is taken as channels when it has at most 3 entries.
A stack (Z or T with more than one plane) is reported by ``stack_axes`` (the caller reads it whole).

:func:`stream_values` computes the normalization record in one pass over the image (per channel: the
minimum and maximum, NaN/infinity check, and the pixels Cellpose takes its percentiles from: every pixel
up to 224**3 px, above that every (Y // 224, X // 224)-th one), so the values, and every normalized
region, are bit-equal to :func:`cpsnake.engine.normalize.normalize` on the whole image, for every dtype.

Errors are one line each (:class:`~cpsnake.errors.CpsnakeError`): a corrupt or truncated chunk (found
by the streaming pass, before any segmentation), NaN or infinite pixels (every region read checks its
pixels), an OME-Zarr without ``multiscales`` metadata, a missing pyramid level, an unreadable header.
When one chunk of a read fails, the reads zarr still runs for the others are waited for before the error
is raised, so nothing is printed after its line and the file can be closed.

Limits (:mod:`cpsnake.io.limits`): a storage chunk (TIFF tile or strip, Zarr chunk, Zarr v3 shard and inner
chunk) is decoded whole, so each declares at most ``max_pixels`` samples (all its axes), checked at open
before any pixel is decoded; a region read runs under a decode budget of twice the bytes of the chunks it
overlaps (+ 256 MB), so a chunk whose compressed data expand beyond its declared size fails with one line.

An OME-Zarr folder is read only from inside itself: every file zarr or cpsnake reads in it (metadata
and chunks) is checked as it is read (:func:`_folder_store`, a few ``stat`` calls per file, no walk of
the folder up front): it must be a regular file (a FIFO, device or socket is refused before it is
opened, so nothing hangs) whose real location (symbolic links resolved) lies inside the folder; a
symbolic link that leads out of the folder, a ``datasets[].path`` that is absolute, holds ``..`` or is
not a string is refused with one line naming the entry. Links that stay inside the folder are followed.

Shapes: regions ``(C, y1 - y0, x1 - x0)`` in the file's dtype (bool as uint8).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cpsnake.io import files, limits
from cpsnake.errors import CpsnakeError, library_text

__all__ = ["RegionImage", "is_ome_zarr", "open_image", "stream_values", "band_rows"]

_UNKNOWN = "QI"  # tifffile's names for axes without metadata
MAX_GUESSED_CHANNELS = 3
_UNITS = {"micrometer": "micron", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
          "angstrom": "\\u00c5"}
ZARR_FILE = "a file of an OME-Zarr image (metadata or chunk)"
ZARR_NAMES = ("zarr.json", ".zgroup", ".zattrs")
MAX_METADATA_BYTES = 16 * 2**20  # one zarr.json / .zarray / .zattrs / .zgroup file
_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
_JSON_KIND = {int: "a number", float: "a number", bool: "true or false", list: "a list", dict: "an object",
              type(None): "null"}


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """True for a folder holding a Zarr group (an entry ``zarr.json``, ``.zgroup`` or ``.zattrs`` of any kind:
    only ``stat`` is used, and a FIFO or broken link among them is refused when the folder is opened)."""
    p = Path(path)
    try:
        return p.is_dir() and any(os.path.lexists(p / n) for n in ZARR_NAMES)
    except OSError:  # a name too long for the file system, ...: not a folder; the file readers say what it is
        return False


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _entry(root: Path, key: str, *, metadata: bool = False, real_root: str | None = None) -> Path | None:
    """The file ``root/key`` of an OME-Zarr folder, checked before it is opened; None if it does not exist.

    Refused with one line naming the entry: a location outside ``root`` once symbolic links are resolved, a
    FIFO, device, socket or folder (:func:`cpsnake.io.files.regular_file`), a broken link, a file where a folder
    is expected, and metadata files over :data:`MAX_METADATA_BYTES`. Costs a few ``stat`` calls (``real_root``:
    ``os.path.realpath(root)`` when the caller knows it).
    """
    entry = root / key
    real_root = real_root or os.path.realpath(root)
    if not _inside(os.path.realpath(entry), real_root):
        raise CpsnakeError(
            f"{entry}: found a path that leads outside the OME-Zarr folder {root} (through '..', an absolute path or "
            "a symbolic link); expected its files inside the folder; copy the data into it (e.g. cp -rL) or write the "
            "OME-Zarr again")
    if not os.path.lexists(entry):
        parent = entry.parent
        while not os.path.lexists(parent) and parent != root:
            parent = parent.parent
        if not parent.is_dir():  # a file, FIFO, ... where the key needs a folder: not a missing chunk
            raise CpsnakeError(f"{parent}: is not a folder; expected the folder that holds {entry.name} in the "
                               "OME-Zarr; write the OME-Zarr again")
        return None
    st = files.regular_file(entry, ZARR_FILE)
    if metadata and st.st_size > MAX_METADATA_BYTES:
        raise CpsnakeError(f"{entry}: found {st.st_size:,} bytes of metadata, more than {MAX_METADATA_BYTES:,}; "
                           "expected the JSON metadata of an OME-Zarr; write the OME-Zarr again")
    return entry


_STORE: list = []


def _folder_store(root: Path):
    """A read-only zarr ``LocalStore`` of the folder ``root`` whose every read goes through :func:`_entry`."""
    if not _STORE:
        from zarr.storage import LocalStore

        class _FolderStore(LocalStore):
            """zarr's LocalStore, reading a key only after :func:`_entry` checked its file (regular, inside)."""

            def _check(self, key: str) -> bool:
                if getattr(self, "_real_root", None) is None:
                    self._real_root = os.path.realpath(self.root)
                return _entry(self.root, key, metadata=key.rsplit("/", 1)[-1] in _METADATA,
                              real_root=self._real_root) is not None

            def get_sync(self, key, *, prototype=None, byte_range=None):
                return super().get_sync(key, prototype=prototype, byte_range=byte_range) if self._check(key) else None

            async def get(self, key, prototype=None, byte_range=None):
                return await super().get(key, prototype, byte_range) if self._check(key) else None

            async def get_partial_values(self, prototype, key_ranges):
                key_ranges = list(key_ranges)
                for key, _ in key_ranges:
                    self._check(key)
                return await super().get_partial_values(prototype, key_ranges)

        _STORE.append(_FolderStore)
    return _STORE[0](root, read_only=True)


def _settle() -> None:
    """Wait (60 s at most) for the chunk reads that zarr's event loop still runs after one read of a region
    failed, collecting their errors: else they finish, or fail on a closed file, after the error line is
    printed and fill stderr with asyncio's reports of pending tasks."""
    import asyncio
    import sys

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
    storage; ``stack_axes``; ``meta`` (as :func:`cpsnake.io.images.read_image`'s: ``pixel_size``, ``unit``, ``axes``,
    ``shape`` (the file's), ``dtype``, ``format`` ("tiff" or "ome-zarr"), ``dropped_alpha``,
    ``calibration_problem``, ``stack_axes``, ``z_step``, ``frame_interval``, ``time_unit``; plus ``levels``,
    the pyramid's level count).

    ``fetch(index)`` returns the raw array's pixels for a tuple of one int or slice per file axis;
    ``close()`` releases the file. ``units``: every shape (one entry per file axis) the storage decodes whole
    (chunks, and Zarr v3 shards and their inner chunks; default ``[chunks]``); each must hold at most
    ``max_pixels`` samples (:func:`cpsnake.io.limits.max_pixels` when None), else a one-line CpsnakeError (about
    the image itself when it too holds more, as :func:`cpsnake.io.limits.check_samples` words it).
    """

    def __init__(self, path: Path, raw_shape: Sequence[int], chunks: Sequence[int], axes: str, meta: dict,
                 fetch: Callable[[tuple], np.ndarray], close: Callable[[], None] | None = None, *,
                 units: Sequence[Sequence[int]] | None = None, max_pixels: int | None = None):
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
                raise CpsnakeError(f"{path}: found storage chunks of {dims} for axes {axes!r}; expected at least 1 "
                                   "sample per axis; write the image again")
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
            lo, hi = ((y0, y1) if a == "Y" else (x0, x1) if a == "X" else (0, size) if isinstance(i, slice)
                      else (i, i + 1))
            n *= (-(-hi // unit) - lo // unit) * unit
        return n * self.dtype.itemsize

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``(C, y1 - y0, x1 - x0)`` of the region, in the file's dtype; only overlapping chunks are decoded.

        Decoding runs under :func:`cpsnake.io.limits.decode_budget` of twice the overlapped chunks' bytes. Raises a
        one-line CpsnakeError naming the file and the rows and columns for data that expand beyond that, a
        chunk that cannot be decoded or read (any exception of the codecs or of zarr), and NaN or infinite values.
        """
        idx = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else i
                    for a, i in zip(self._axes, self._index))
        where = f"rows {y0}-{y1}, columns {x0}-{x1}"
        try:
            with limits.decode_budget(2 * self._decoded_bytes(y0, y1, x0, x1)):
                try:
                    data = np.asarray(self._fetch(idx))
                except BaseException:
                    _settle()  # inside the budget: the other chunks of the read are decoded under it too
                    raise
        except MemoryError:
            raise CpsnakeError(
                f"{self.path}: found compressed data in {where} that expand beyond the size the header declares; "
                "expected chunks that match the header; the file is corrupt or hostile: export it again from the "
                "original") from None
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
                    "replace them first (e.g. Fiji: Process > Math > Remove NaNs, or set them to the background value)")
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


def open_image(path: str | os.PathLike, *, level: int = 0, max_pixels: int | None = None) -> RegionImage:
    """Open a TIFF (file) or OME-Zarr (folder) image for region reads; only its header is read.

    ``max_pixels`` bounds the samples of each storage chunk (see :class:`RegionImage`; the image's own size is
    the caller's check, :func:`cpsnake.io.limits.check_samples`). Errors: one-line CpsnakeErrors (module doc)."""
    path = Path(path)
    if path.is_dir():
        if not is_ome_zarr(path):
            raise CpsnakeError(f"{path}: found a folder that is not a Zarr group (no zarr.json, .zgroup or .zattrs); "
                               "expected an image file or an OME-Zarr folder; pass the .zarr folder itself")
        return _open_zarr(path, level, max_pixels)
    return _open_tiff(path, level, max_pixels)


def _open_tiff(path: Path, level: int, max_pixels: int | None = None) -> RegionImage:
    """A TIFF's first series (:func:`cpsnake.io.images.open_tiff`: broken metadata set aside with a warning) at ``level``;
    its tiles or strips count against ``max_pixels`` (:class:`RegionImage`)."""
    import warnings

    import zarr

    from cpsnake.io.images import open_tiff
    from cpsnake.io.calibration import calibration_warning
    from cpsnake.errors import CpsnakeWarning

    expected = "a TIFF image (tiled or striped, BigTIFF, pyramidal OME-TIFF)"
    head = open_tiff(path, expected=expected, fix="export it again")
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
            img = RegionImage(path, shape, (1,) * len(shape), lev.axes, meta, fetch, max_pixels=max_pixels)
        else:
            store = series.aszarr(level=level)
            array = zarr.open_array(store, mode="r")
            img = RegionImage(path, array.shape, array.chunks, lev.axes, meta, array.__getitem__,
                              close=lambda: (store.close(), tif.close()), max_pixels=max_pixels)
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
    """The group's attributes: ``zarr.json``'s ``attributes`` (v3) or ``.zattrs`` (v2); each file checked by
    :func:`_entry` (regular, inside the folder, at most 16 MiB) before it is read, ``.zgroup`` too."""
    found = {name: _entry(path, name, metadata=True) for name in ZARR_NAMES}
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = found[name]
        if f is not None:
            text = files.read_text(f, "the JSON metadata of an OME-Zarr", limit=MAX_METADATA_BYTES)
            try:
                doc = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise CpsnakeError(f"{f}: found metadata that is not JSON ({library_text(exc)}); expected OME-Zarr metadata; "
                                   "write the OME-Zarr again") from None
            if not isinstance(doc, dict):
                raise CpsnakeError(f"{f}: found {type(doc).__name__} metadata, expected a JSON object; write the "
                                   "OME-Zarr again")
            attrs = doc.get(key, {}) if key else doc
            if attrs:
                return attrs if isinstance(attrs, dict) else {}
    return {}


def _dataset_path(path: Path, datasets: list, level: int) -> str:
    """``datasets[level]["path"]``, checked: a relative path of plain names (no ``..``, not absolute) whose real
    location lies inside the folder ``path``."""
    where = f"multiscales[0].datasets[{level}].path"
    ds = datasets[level]
    value = ds.get("path") if isinstance(ds, dict) else None
    fix = ("expected a relative path of a folder inside the .zarr folder (e.g. \"0\"); fix the metadata or write the "
           "OME-Zarr again")
    if not isinstance(value, str):
        found = f"{where} as {_JSON_KIND.get(type(value), 'a value that is not a string')}" \
            if isinstance(ds, dict) and "path" in ds else f"no {where}"
        raise CpsnakeError(f"{path}: found {found}; {fix}")
    shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
    parts = value.strip("/").split("/")
    problem = ("an absolute path" if value.startswith("/") or os.path.isabs(value) else
               "it climbs out of the folder with '..'" if ".." in parts else
               "not a plain relative path" if not value.strip("/") or "" in parts or "." in parts or "\\" in value
               else None)
    if problem:
        raise CpsnakeError(f"{path}: found {where} {shown}: {problem}; {fix}")
    real, root = os.path.realpath(path / value), os.path.realpath(path)
    if not _inside(real, root) or real == root:
        raise CpsnakeError(f"{path}: found {where} {shown}: it leads outside the folder (or to the folder itself) "
                           f"through a symbolic link; {fix}, or copy the data into the folder (e.g. cp -rL)")
    return "/".join(parts)


def _open_zarr(path: Path, level: int, max_pixels: int | None = None) -> RegionImage:
    import zarr

    attrs = _zarr_attrs(path)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests under "ome"
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise CpsnakeError(f"{path}: found a Zarr group without OME-NGFF multiscales metadata; expected an OME-Zarr "
                           "image (NGFF 0.4 or 0.5, e.g. written by bioformats2raw, QuPath or ome-zarr-py); convert it, "
                           "e.g. bioformats2raw IMAGE OUT.zarr")
    m = ms[0]
    datasets = m.get("datasets")
    datasets = datasets if isinstance(datasets, list) else []
    if level >= len(datasets):
        raise CpsnakeError(f"{path}: found {len(datasets)} pyramid level(s) in the multiscales metadata, expected level "
                           f"{level}; the OME-Zarr is incomplete: write it again")
    key = _dataset_path(path, datasets, level)
    ds = datasets[level]
    try:
        array = zarr.open_array(store=_folder_store(path), path=key, mode="r")
        dtype = np.dtype(array.dtype)
        shape, chunks = tuple(int(n) for n in array.shape), tuple(int(n) for n in array.chunks)
        units = [chunks] + ([tuple(int(n) for n in array.shards)] if array.shards else [])
        codecs = list(getattr(array.metadata, "codecs", None) or ())
        while codecs:  # nested sharding: every inner chunk shape
            c = codecs.pop()
            if hasattr(c, "chunk_shape") and hasattr(c, "codecs"):
                units.append(tuple(int(n) for n in c.chunk_shape))
                codecs.extend(c.codecs)
    except CpsnakeError:
        _settle()
        raise
    except Exception as exc:  # zarr and numcodecs raise many types for missing or malformed metadata
        _settle()
        raise CpsnakeError(f"{path}: found pyramid level {level} ({key!r}) missing or unreadable ({library_text(exc)}); "
                           "expected the Zarr array the multiscales metadata names (zarr.json or .zarray with a known "
                           "data type and codecs); the OME-Zarr is incomplete or unsupported: write it again (e.g. "
                           "ome-zarr-py, bioformats2raw)") from None
    if dtype.kind not in "buif":
        raise CpsnakeError(f"{path}: found pixels of type {library_text(dtype)}; expected integer or real intensities; "
                           "convert the image (e.g. Fiji: Image > Type > 32-bit) and write the OME-Zarr again")
    try:
        axes, units_of_axes, scale = _axes_and_scale(m, ds, len(shape))
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        raise CpsnakeError(f"{path}: found multiscales axes or coordinateTransformations that cannot be read "
                           f"({library_text(exc)}); expected NGFF 0.4 / 0.5 metadata (axes: a list of objects with a name; "
                           "scale: a list of numbers per axis); write the OME-Zarr again") from None
    if axes is None:
        raise CpsnakeError(f"{path}: found {units_of_axes} axes in the metadata for an array of {len(shape)} "
                           "dimensions; expected one axis per dimension; write the OME-Zarr again")
    yi, xi = axes.find("Y"), axes.find("X")
    pixel_size = unit = problem = None
    if yi >= 0 and xi >= 0:
        py, px = float(scale[yi]), float(scale[xi])
        if not (math.isfinite(py) and math.isfinite(px) and 1e-30 <= py <= 1e30 and 1e-30 <= px <= 1e30):
            problem = f"scale ({py}, {px}) in the multiscales metadata"
        elif units_of_axes[xi] or (py, px) != (1.0, 1.0):
            ux = units_of_axes[xi]
            pixel_size, unit = (py, px), _UNITS.get(ux or "", ux) if ux else None
    zi = axes.find("Z")
    meta = {"pixel_size": pixel_size, "unit": unit, "axes": axes, "shape": shape,
            "dtype": str(dtype), "format": "ome-zarr", "dropped_alpha": False, "calibration_problem": problem,
            "z_step": float(scale[zi]) if zi >= 0 and scale[zi] != 1 else None, "frame_interval": None,
            "time_unit": None, "levels": len(datasets)}
    return RegionImage(path, shape, chunks, axes, meta, array.__getitem__, units=units, max_pixels=max_pixels)


def _axes_and_scale(m: dict, ds: dict, ndim: int) -> tuple[str | None, list | int, np.ndarray]:
    """Axes letters (T, C, Z, Y, X, Q for others), units (str or None) and scale per axis of a multiscale ``m``
    and its dataset ``ds``; (None, the count of axes, ...) when the axes do not match ``ndim``. Malformed
    entries raise TypeError / ValueError / AttributeError (the caller makes one line of them)."""
    names, units = [], []
    for a in list(m.get("axes") or []):
        name = a.get("name") if isinstance(a, dict) else a
        if not isinstance(name, str):
            raise TypeError(f"axis name {name!r} is not a string")
        unit = a.get("unit") if isinstance(a, dict) else None
        names.append(name.lower())
        units.append(unit if isinstance(unit, str) else None)
    if not names:  # NGFF 0.1-0.3 without axes: tczyx
        names = list("tczyx")[-ndim:]
        units = [None] * ndim
    if len(names) != ndim:
        return None, len(names), np.ones(ndim)
    axes = "".join({"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(n, "Q") for n in names)
    scale = np.ones(ndim)
    for tr in list(ds.get("coordinateTransformations") or []) + list(m.get("coordinateTransformations") or []):
        if isinstance(tr, dict) and tr.get("type") == "scale" and isinstance(tr.get("scale"), list) \
                and len(tr["scale"]) == ndim:
            scale = scale * np.asarray(tr["scale"], float)
    return axes, units, scale


def band_rows(img: RegionImage, target_bytes: int = 64 * 2**20) -> int:
    """Rows per band of a streaming pass: a whole number of storage chunks, about ``target_bytes`` of data."""
    per_row = max(1, img.shape[0] * img.shape[2] * img.dtype.itemsize)
    rows = max(1, target_bytes // per_row)
    ch = max(1, img.chunks[0])
    return max(ch, rows // ch * ch)


def stream_values(img: RegionImage, channels: Sequence[int] | None = None, *, percentiles=(1.0, 99.0),
                  low_high=None, invert: bool = False, rows: int | None = None) -> dict:
    """The normalization record of the whole image from one pass over bands of rows (see the module doc).

    ``channels`` as :func:`cpsnake.engine.normalize.select_channels`; the rest as :func:`cpsnake.engine.normalize.normalize`;
    ``rows`` per band (default :func:`band_rows`).
    Raises a one-line CpsnakeError on NaN or infinite values and on a corrupt chunk.
    """
    from cpsnake.engine.normalize import channel_values, sample_step, select_channels

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
        band = img.read(y0, y1, 0, X)[picked]  # NaN and infinity are refused by the read
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
