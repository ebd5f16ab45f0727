"""ImageJ ROI sets -> label images: reading ``RoiSet.zip`` safely and painting its ROIs (``cpsnake rois --import``).

Reading (:func:`read_rois`): only a regular file is opened; a zip's entries are read with size limits
(:data:`MAX_ENTRY_BYTES` each, :data:`MAX_TOTAL_BYTES` in all, :data:`MAX_ENTRIES` entries), their names
are never used as paths, and every failure -- a broken zip, an encrypted entry, a compression method
Python cannot read, an entry that is not an ImageJ ROI, a corrupt ROI header -- is one line naming the
zip *and* the entry, with the fix.

Painting (:func:`rois_to_labels`): ImageJ's rule "a pixel is inside when its centre is inside the
outline" (even-odd), for rectangle, oval, polygon, freehand, traced and composite (straight-segment)
ROIs. Each ROI is clipped to the target image before anything is allocated: the work and memory of a
ROI follow the part of it that lies in the image, whatever its bounding box claims, and an outline
may cross pixel rows at most :data:`MAX_CROSSINGS` times. A NaN or infinite coordinate is an error
naming the zip and the entry; a ROI that lies wholly outside the image paints nothing and is named in
a warning.

Coordinates are ImageJ's (x, y), origin at the top-left corner of the top-left pixel; label images
are (Y, X) or (S, Y, X).
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from cpsnake.errors import CpsnakeError, CpsnakeWarning, library_text
from cpsnake.io import files

__all__ = ["read_rois", "roi_mask", "rois_to_labels", "MAX_ENTRY_BYTES", "MAX_ENTRIES", "MAX_TOTAL_BYTES"]

MAX_ENTRY_BYTES = 64 * 2**20  # one .roi entry in a zip
MAX_ENTRIES = 1_000_000
MAX_TOTAL_BYTES = 2 * 2**30
MAX_CROSSINGS = (
    100_000_000  # (row, outline) crossings of one ROI; a traced outline crosses each row of its object twice
)
_READABLE = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
RESAVE = "re-save the ROI set from Fiji's ROI Manager (More > Save...)"
EXPECTED = "an ImageJ ROI set (RoiSet.zip) or a .roi file"


def _entries(path: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file entry of a zip, with the size limits; one CpsnakeError per problem."""
    blobs: list[tuple[str, bytes]] = []
    name = "?"
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_ENTRIES:
                raise CpsnakeError(
                    f"{path}: found {len(infos):,} entries, more than {MAX_ENTRIES:,}; expected one "
                    "entry per ROI; split the ROI set"
                )
            total = 0
            for info in infos:
                name = info.filename
                where = f"{path}: entry {name!r}"
                if info.flag_bits & 0x1:
                    raise CpsnakeError(
                        f"{where} is encrypted; expected an unencrypted ImageJ ROI set; {RESAVE}, "
                        "or unzip it with its password and zip it again without one"
                    )
                if info.compress_type not in _READABLE:
                    raise CpsnakeError(
                        f"{where} uses zip compression method {info.compress_type}, which cannot be read "
                        "here; expected stored or deflate entries (as ImageJ writes); " + RESAVE
                    )
                if info.file_size > MAX_ENTRY_BYTES:
                    raise CpsnakeError(
                        f"{where} is {info.file_size:,} bytes, more than {MAX_ENTRY_BYTES:,}; expected "
                        "ImageJ .roi entries of a few kB; remove it from the zip"
                    )
                total += info.file_size
                if total > MAX_TOTAL_BYTES:
                    raise CpsnakeError(
                        f"{path}: found more than {MAX_TOTAL_BYTES:,} bytes uncompressed; expected a ROI "
                        "set of at most that; split the ROI set"
                    )
                with zf.open(info) as fh:  # at most the limit (+1 to catch a size that lies)
                    data = fh.read(MAX_ENTRY_BYTES + 1)
                if len(data) > MAX_ENTRY_BYTES:
                    raise CpsnakeError(
                        f"{where} decompresses to more than {MAX_ENTRY_BYTES:,} bytes; expected ImageJ "
                        ".roi entries of a few kB; remove it from the zip"
                    )
                blobs.append((name, data))
    except CpsnakeError:
        raise
    except zipfile.BadZipFile as exc:
        raise CpsnakeError(
            f"{path}: found a broken zip ({library_text(exc)}); expected an ImageJ ROI set saved by the "
            f"ROI Manager; copy it again or {RESAVE}"
        ) from None
    except Exception as exc:  # zlib/bz2/lzma errors, EOF, a password prompt: anything the zip module raises
        raise CpsnakeError(
            f"{path}: entry {name!r} cannot be read ({type(exc).__name__}: {library_text(exc)}); "
            f"expected a complete ImageJ ROI set; copy it again or {RESAVE}"
        ) from None
    return blobs


def read_rois(path: str | os.PathLike) -> list[tuple[str, object]]:
    """Read an ImageJ ROI set (``.zip`` of ``.roi`` entries, or one ``.roi`` file) with size limits.

    Returns
    -------
    list of (entry name, ``roifile.ImagejRoi``) in zip order. Entry names are only used in messages.
    """
    from roifile import ImagejRoi

    path = Path(path)
    files.regular_file(path, EXPECTED)
    if zipfile.is_zipfile(path):
        blobs = _entries(path)
    else:
        blobs = [(path.name, files.read_bytes(path, "a .roi file of a few kB", limit=MAX_ENTRY_BYTES))]
    out = []
    for name, data in blobs:
        where = f"{path}: entry {name!r}"
        if data[:4] != b"Iout":
            raise CpsnakeError(
                f"{where} starts with other bytes, not 'Iout'; expected only ImageJ .roi entries; "
                f"remove that entry from the zip, or {RESAVE}"
            )
        try:
            roi = ImagejRoi.frombytes(data)
            roi.roitype, roi.composite  # noqa: B018 -- fields parsed lazily must parse here
        except Exception as exc:
            raise CpsnakeError(
                f"{where} has a corrupt ImageJ ROI header ({library_text(exc)}); expected a valid .roi; {RESAVE}"
            ) from None
        out.append((name, roi))
    return out


# --- painting ---------------------------------------------------------------------------------------


def _finite(xy: np.ndarray, where: str) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size and not np.isfinite(xy).all():
        raise CpsnakeError(
            f"{where}: found NaN or infinite coordinates; expected a finite outline; "
            f"redraw the ROI or remove it, then {RESAVE}"
        )
    return xy


def _box(lo_x: float, lo_y: float, hi_x: float, hi_y: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): image rows and columns whose pixel centres can lie in [lo, hi], clipped to ``shape``."""
    H, W = shape
    y0, y1 = int(np.clip(np.floor(lo_y), 0, H)), int(np.clip(np.ceil(hi_y) + 1, 0, H))
    x0, x1 = int(np.clip(np.floor(lo_x), 0, W)), int(np.clip(np.ceil(hi_x) + 1, 0, W))
    return y0, max(y0, y1), x0, max(x0, x1)


def _fill_polygons(polys: list[np.ndarray], shape: tuple[int, int], where: str = "ROI") -> np.ndarray:
    """Even-odd fill of closed polygons by ImageJ's rule: a pixel is inside when its centre is.

    Parameters
    ----------
    polys : list of (n, 2) float (x, y) vertex arrays (closing vertex optional), in pixel units of the
        (Y, X) grid of ``shape`` (pixel (r, c) has its centre at (c + 0.5, r + 0.5))
    shape : (Y, X)

    Returns
    -------
    (Y, X) bool mask. Work is proportional to the number of (row, edge) crossings inside ``shape``.
    """
    H, W = shape
    mask = np.zeros(shape, dtype=bool)
    segs = []
    for p in polys:
        p = np.asarray(p, dtype=np.float64)
        if len(p) < 3:
            continue
        segs.append(np.concatenate([p, np.roll(p, -1, axis=0)], axis=1))
    if not segs or H == 0 or W == 0:
        return mask
    s = np.concatenate(segs)
    s = s[s[:, 1] != s[:, 3]]  # horizontal edges never cross a pixel-centre row
    x0, y0, x1, y1 = s.T
    # rows r with ylo <= r + 0.5 < yhi, clipped to the image
    r0 = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, H).astype(np.int64)
    r1 = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, H).astype(np.int64)
    counts = np.maximum(r1 - r0, 0)
    total = int(counts.sum())
    if total > MAX_CROSSINGS:
        raise CpsnakeError(
            f"{where}: found an outline crossing pixel rows {total:,} times, more than {MAX_CROSSINGS:,}; "
            f"expected an area outline (a traced outline crosses each row of its object twice); "
            f"simplify the ROI (Fiji: Edit > Selection > Interpolate) or remove it, then {RESAVE}"
        )
    parity = np.zeros((H, W + 1), dtype=np.uint8)
    flat = parity.reshape(-1)
    seg_ends = np.cumsum(counts)
    step = 1 << 22  # crossings per chunk
    start = 0
    while start < len(counts):  # chunks of segments holding about `step` crossings
        stop = int(np.searchsorted(seg_ends, (seg_ends[start - 1] if start else 0) + step, side="right"))
        stop = max(stop, start + 1)
        n = counts[start:stop]
        seg = np.repeat(np.arange(start, stop), n)
        if seg.size:
            first = np.repeat(np.cumsum(n) - n, n)
            rows = r0[seg] + (np.arange(seg.size) - first)
            yc = rows + 0.5
            xs = x0[seg] + (yc - y0[seg]) * (x1[seg] - x0[seg]) / (y1[seg] - y0[seg])
            # pixel x is inside when an odd number of crossings lie at or left of its centre x + 0.5
            cols = np.clip(np.ceil(xs - 0.5), 0, W).astype(np.int64)
            np.bitwise_xor.at(flat, rows * (W + 1) + cols, 1)
        start = stop
    np.bitwise_xor.accumulate(parity, axis=1, out=parity)
    mask[:] = parity[:, :W].astype(bool)
    return mask


def _region(roi, shape: tuple[int, int], where: str) -> tuple[int, int, np.ndarray]:
    """(top, left, mask): the pixels of ``shape`` inside an area ROI, as a mask of its clipped bounding box."""
    from roifile import ROI_TYPE

    H, W = shape
    rt = roi.roitype

    def polygons(polys: list[np.ndarray]) -> tuple[int, int, np.ndarray]:
        polys = [_finite(p, where) for p in polys if len(p)]
        if not polys:
            return 0, 0, np.zeros((0, 0), bool)
        allxy = np.concatenate(polys)
        y0, y1, x0, x1 = _box(*allxy.min(axis=0), *allxy.max(axis=0), shape)
        shifted = [p - (x0, y0) for p in polys]  # integer shift: exact
        return y0, x0, _fill_polygons(shifted, (y1 - y0, x1 - x0), where)

    if roi.composite:
        try:
            paths = roi.path2coords(roi.multi_coordinates)
        except Exception as exc:
            raise CpsnakeError(
                f"{where}: composite ROI with curved or invalid segments ({library_text(exc)}); expected straight "
                f"segments; convert it in Fiji (Edit > Selection > Interpolate, or to polygons), then {RESAVE}"
            ) from None
        return polygons(paths)
    if rt == ROI_TYPE.RECT:
        if roi.subpixelrect:
            xs, ys, w, h = _finite(np.array([roi.xd, roi.yd, roi.widthd, roi.heightd]), where)
            return polygons([np.array([[xs, ys], [xs + w, ys], [xs + w, ys + h], [xs, ys + h]])])
        y0, y1 = min(max(roi.top, 0), H), min(max(roi.bottom, 0), H)
        x0, x1 = min(max(roi.left, 0), W), min(max(roi.right, 0), W)
        return y0, x0, np.ones((max(y1 - y0, 0), max(x1 - x0, 0)), bool)
    if rt == ROI_TYPE.OVAL:
        w, h = roi.right - roi.left, roi.bottom - roi.top
        y0, y1 = min(max(roi.top, 0), H), min(max(roi.bottom, 0), H)
        x0, x1 = min(max(roi.left, 0), W), min(max(roi.right, 0), W)
        if w <= 0 or h <= 0 or y1 <= y0 or x1 <= x0:
            return 0, 0, np.zeros((0, 0), bool)
        yy = np.arange(y0, y1)[:, None] - roi.top  # only the rows and columns inside the image
        xx = np.arange(x0, x1)[None, :] - roi.left
        return y0, x0, ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1.0
    if rt in (ROI_TYPE.POLYGON, ROI_TYPE.FREEHAND, ROI_TYPE.TRACED):
        try:
            xy = roi.coordinates()
        except Exception as exc:
            raise CpsnakeError(
                f"{where}: found unreadable coordinates ({library_text(exc)}); expected a valid .roi; {RESAVE}"
            ) from None
        if xy is None or len(xy) < 3:
            raise CpsnakeError(
                f"{where}: a {rt.name.lower()} with fewer than 3 vertices; expected an area outline; "
                f"remove it or redraw it, then {RESAVE}"
            )
        return polygons([xy])
    if not isinstance(rt, ROI_TYPE) or int(rt) < 0:  # roifile reads a type byte it does not know as -1
        raise CpsnakeError(
            f"{where}: found an unknown ROI type ({rt}); expected an ImageJ area ROI; the entry is corrupt: {RESAVE}"
        )
    name = rt.name.lower()
    raise CpsnakeError(
        f"{where}: found a ROI of type {name}, not an area; expected rectangle, oval, polygon, freehand, traced or "
        "composite ROIs; convert lines and points to areas in Fiji first (Edit > Selection > Line to Area, or "
        "Enlarge), or remove them"
    )


def roi_mask(roi, shape: tuple[int, int], *, entry: str = "?", source: str | os.PathLike | None = None) -> np.ndarray:
    """Pixels inside an ImageJ area ROI (centre-inside rule), as a (Y, X) bool mask of ``shape``.

    ``source`` (the zip) and ``entry`` name the ROI in error messages.
    """
    where = f"{source}: entry {entry!r}" if source is not None else f"ROI {entry!r}"
    m = np.zeros(shape, bool)
    top, left, box = _region(roi, tuple(shape), where)
    m[top : top + box.shape[0], left : left + box.shape[1]] = box
    return m


_NAME = re.compile(r"^(\d+)(?:-[zt]\d+)?$")


def rois_to_labels(
    rois: list[tuple[str, object]],
    shape: tuple[int, ...],
    *,
    stack_axis: str = "z",
    source: str | os.PathLike | None = None,
) -> np.ndarray:
    """Paint ROIs into a label image.

    Parameters
    ----------
    rois : list of (entry name, ``roifile.ImagejRoi``), as from :func:`read_rois`
    shape : (Y, X) or (S, Y, X); S is z or t (``stack_axis``), the ROI's position along it picks the slice
        (a ROI without position goes into every slice, as ImageJ shows it on every slice)
    source : the ROI set's path, for messages

    Returns
    -------
    (Y, X) or (S, Y, X) int32 labels: the ROI name when it is a number (``0042``, ``0042-z03``), else its
    1-based index in ``rois``; later ROIs overwrite earlier ones. Each ROI is clipped to the image; a
    :class:`~cpsnake.errors.CpsnakeWarning` names the ROIs that lie wholly outside it.
    """
    labels = np.zeros(shape, dtype=np.int32)
    plane = tuple(shape[-2:])
    outside = []
    for i, (entry, roi) in enumerate(rois):
        where = f"{source}: entry {entry!r}" if source is not None else f"ROI {entry!r}"
        stem = entry[:-4] if entry.lower().endswith(".roi") else entry
        m = _NAME.match(roi.name or stem) or _NAME.match(stem)
        value = int(m.group(1)) if m else i + 1
        if value > 2**31 - 1:
            raise CpsnakeError(
                f"{where}: found label {value} in its name, above 2**31 - 1; expected smaller numbers; "
                "rename the ROI (or give it a name that is not a number: it then takes its index)"
            )
        top, left, box = _region(roi, plane, where)
        if not box.any():
            outside.append(entry)
            continue
        window = (slice(top, top + box.shape[0]), slice(left, left + box.shape[1]))
        if len(shape) == 2:
            labels[window][box] = value
            continue
        pos = roi.t_position if stack_axis == "t" else roi.z_position
        if not pos:
            pos = roi.position
        if not pos:  # no position: ImageJ shows the ROI on every slice
            labels[(slice(None), *window)][:, box] = value
            continue
        if not 1 <= pos <= shape[0]:
            raise CpsnakeError(
                f"{where}: {stack_axis} position {pos}, expected 1..{shape[0]} (the image's slices); "
                "pass the image the ROIs were drawn on as --like"
            )
        labels[pos - 1][window][box] = value
    if outside:
        shown = ", ".join(repr(e) for e in outside[:5]) + (f" (+{len(outside) - 5} more)" if len(outside) > 5 else "")
        warnings.warn(
            f"{source or 'ROI set'}: {len(outside)} ROI(s) cover no pixel of the {plane[0]} x {plane[1]} image "
            f"and were skipped: {shown}; check that --like is the image the ROIs were drawn on",
            CpsnakeWarning,
            stacklevel=2,
        )
    return labels
