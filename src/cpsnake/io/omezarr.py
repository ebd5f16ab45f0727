"""OME-Zarr folders opened for region reads, from inside themselves only.

An OME-Zarr image (NGFF 0.4, Zarr v2; NGFF 0.5, Zarr v3) is a folder (:func:`is_ome_zarr`);
:func:`open_zarr_regions` reads the first multiscale image's first dataset (the full resolution), its axes,
and its pixel size from the ``scale`` transformations, and returns a :class:`cpsnake.io.regions.RegionImage`.
Why zarr and not ome-zarr-py: the reading needs the multiscales metadata (a few JSON keys) and one array, and
ome-zarr-py would bring dask, fsspec and an S3 client to every install; the tests use ome-zarr-py as the
oracle that writes the inputs and reads cpsnake's outputs. (cpsnake writes OME-Zarr labels with
:mod:`cpsnake.io.ngff`.)

An OME-Zarr folder is read only from inside itself: every file zarr or cpsnake reads in it (metadata
and chunks) is checked as it is read (:func:`_folder_store`, a few ``stat`` calls per file, no walk of
the folder up front): it must be a regular file (a FIFO, device or socket is refused before it is
opened, so nothing hangs) whose real location (symbolic links resolved) lies inside the folder; a
symbolic link that leads out of the folder, a ``datasets[].path`` that is absolute, holds ``..`` or is
not a string is refused with one line naming the entry. Links that stay inside the folder are followed.

Errors are one line each (:class:`~cpsnake.errors.CpsnakeError`): a Zarr group without ``multiscales``
metadata, metadata that are not JSON or over :data:`MAX_METADATA_BYTES`, a missing pyramid level, axes or
transformations that cannot be read; region reads fail as :mod:`cpsnake.io.regions` says.

zarr is imported inside the functions that use it (its import takes a second).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from cpsnake.errors import CpsnakeError, library_text
from cpsnake.io import files
from cpsnake.io.regions import RegionImage, settle_reads

__all__ = ["ZARR_FILE", "ZARR_NAMES", "MAX_METADATA_BYTES", "is_ome_zarr", "open_zarr_regions"]

_UNITS = {
    "micrometer": "micron",
    "nanometer": "nm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "angstrom": "\\u00c5",
}
ZARR_FILE = "a file of an OME-Zarr image (metadata or chunk)"
ZARR_NAMES = ("zarr.json", ".zgroup", ".zattrs")
MAX_METADATA_BYTES = 16 * 2**20  # one zarr.json / .zarray / .zattrs / .zgroup file
_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
_JSON_KIND = {
    int: "a number",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


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
            "OME-Zarr again"
        )
    if not os.path.lexists(entry):
        parent = entry.parent
        while not os.path.lexists(parent) and parent != root:
            parent = parent.parent
        if not parent.is_dir():  # a file, FIFO, ... where the key needs a folder: not a missing chunk
            raise CpsnakeError(
                f"{parent}: is not a folder; expected the folder that holds {entry.name} in the "
                "OME-Zarr; write the OME-Zarr again"
            )
        return None
    st = files.regular_file(entry, ZARR_FILE)
    if metadata and st.st_size > MAX_METADATA_BYTES:
        raise CpsnakeError(
            f"{entry}: found {st.st_size:,} bytes of metadata, more than {MAX_METADATA_BYTES:,}; "
            "expected the JSON metadata of an OME-Zarr; write the OME-Zarr again"
        )
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
                return (
                    _entry(self.root, key, metadata=key.rsplit("/", 1)[-1] in _METADATA, real_root=self._real_root)
                    is not None
                )

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
                raise CpsnakeError(
                    f"{f}: found metadata that is not JSON ({library_text(exc)}); expected OME-Zarr "
                    "metadata; write the OME-Zarr again"
                ) from None
            if not isinstance(doc, dict):
                raise CpsnakeError(
                    f"{f}: found {type(doc).__name__} metadata, expected a JSON object; write the OME-Zarr again"
                )
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
    fix = (
        'expected a relative path of a folder inside the .zarr folder (e.g. "0"); fix the metadata or write the '
        "OME-Zarr again"
    )
    if not isinstance(value, str):
        found = (
            f"{where} as {_JSON_KIND.get(type(value), 'a value that is not a string')}"
            if isinstance(ds, dict) and "path" in ds
            else f"no {where}"
        )
        raise CpsnakeError(f"{path}: found {found}; {fix}")
    shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
    parts = value.strip("/").split("/")
    problem = (
        "an absolute path"
        if value.startswith("/") or os.path.isabs(value)
        else "it climbs out of the folder with '..'"
        if ".." in parts
        else "not a plain relative path"
        if not value.strip("/") or "" in parts or "." in parts or "\\" in value
        else None
    )
    if problem:
        raise CpsnakeError(f"{path}: found {where} {shown}: {problem}; {fix}")
    real, root = os.path.realpath(path / value), os.path.realpath(path)
    if not _inside(real, root) or real == root:
        raise CpsnakeError(
            f"{path}: found {where} {shown}: it leads outside the folder (or to the folder itself) "
            f"through a symbolic link; {fix}, or copy the data into the folder (e.g. cp -rL)"
        )
    return "/".join(parts)


def open_zarr_regions(path: Path, level: int = 0, max_pixels: int | None = None) -> RegionImage:
    """The OME-Zarr folder ``path`` (an OME-Zarr group, :func:`is_ome_zarr`) for region reads: the first multiscale
    image at pyramid ``level``; only its metadata are read. Its chunks, shards and inner chunks count against
    ``max_pixels`` (:class:`cpsnake.io.regions.RegionImage`)."""
    import zarr

    attrs = _zarr_attrs(path)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests under "ome"
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise CpsnakeError(
            f"{path}: found a Zarr group without OME-NGFF multiscales metadata; expected an OME-Zarr "
            "image (NGFF 0.4 or 0.5, e.g. written by bioformats2raw, QuPath or ome-zarr-py); convert "
            "it, e.g. bioformats2raw IMAGE OUT.zarr"
        )
    m = ms[0]
    datasets = m.get("datasets")
    datasets = datasets if isinstance(datasets, list) else []
    if level >= len(datasets):
        raise CpsnakeError(
            f"{path}: found {len(datasets)} pyramid level(s) in the multiscales metadata, expected "
            f"level {level}; the OME-Zarr is incomplete: write it again"
        )
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
        settle_reads()
        raise
    except Exception as exc:  # zarr and numcodecs raise many types for missing or malformed metadata
        settle_reads()
        raise CpsnakeError(
            f"{path}: found pyramid level {level} ({key!r}) missing or unreadable "
            f"({library_text(exc)}); expected the Zarr array the multiscales metadata names (zarr.json "
            "or .zarray with a known data type and codecs); the OME-Zarr is incomplete or unsupported: "
            "write it again (e.g. ome-zarr-py, bioformats2raw)"
        ) from None
    if dtype.kind not in "buif":
        raise CpsnakeError(
            f"{path}: found pixels of type {library_text(dtype)}; expected integer or real intensities; "
            "convert the image (e.g. Fiji: Image > Type > 32-bit) and write the OME-Zarr again"
        )
    try:
        axes, units_of_axes, scale = _axes_and_scale(m, ds, len(shape))
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        raise CpsnakeError(
            f"{path}: found multiscales axes or coordinateTransformations that cannot be read "
            f"({library_text(exc)}); expected NGFF 0.4 / 0.5 metadata (axes: a list of objects with a "
            "name; scale: a list of numbers per axis); write the OME-Zarr again"
        ) from None
    if axes is None:
        raise CpsnakeError(
            f"{path}: found {units_of_axes} axes in the metadata for an array of {len(shape)} "
            "dimensions; expected one axis per dimension; write the OME-Zarr again"
        )
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
    meta = {
        "pixel_size": pixel_size,
        "unit": unit,
        "axes": axes,
        "shape": shape,
        "dtype": str(dtype),
        "format": "ome-zarr",
        "dropped_alpha": False,
        "calibration_problem": problem,
        "z_step": float(scale[zi]) if zi >= 0 and scale[zi] != 1 else None,
        "frame_interval": None,
        "time_unit": None,
        "levels": len(datasets),
    }
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
        if (
            isinstance(tr, dict)
            and tr.get("type") == "scale"
            and isinstance(tr.get("scale"), list)
            and len(tr["scale"]) == ndim
        ):
            scale = scale * np.asarray(tr["scale"], float)
    return axes, units, scale
