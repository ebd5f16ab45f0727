"""Pixel size and unit of a TIFF (OME-XML, ImageJ tags, resolution tags), and what to do when they are unusable.

ImageJ 1 reads calibration only from ImageJ-style TIFF tags (resolution + ``unit``), not OME-XML; cpsnake
reads both. A stored pixel size that is not finite, zero, negative or outside 1e-30..1e30 (which would
give ``Area = inf`` or negative areas in a measurement table), or whose unit is not a short printable
name (1 to 32 characters), is never used: the image is treated as
uncalibrated (measurements in pixels), :func:`calibration` says why, and the readers emit one
:class:`~cpsnake.errors.CpsnakeWarning` naming the file and the value (the normalize JSON and the
provenance record it as ``calibration_problem``).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

from cpsnake.errors import CpsnakeWarning

if TYPE_CHECKING:
    import tifffile

__all__ = [
    "PIXEL_SIZE_RANGE",
    "calibration",
    "read_calibration",
    "calibration_warning",
    "stack_calibration",
    "stack_calibration_problem",
    "stack_calibration_warning",
]

PIXEL_SIZE_RANGE = (1e-30, 1e30)  # a usable pixel size: finite, positive, and its square finite and nonzero


def _usable(v: float) -> bool:
    return math.isfinite(v) and PIXEL_SIZE_RANGE[0] <= v <= PIXEL_SIZE_RANGE[1]


MAX_UNIT_CHARS = 32


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unit_ok(unit: str) -> bool:
    """A unit name: 1 to 32 printable characters (``micron``, ``µm``, ``nm``, ``\\u00c5``)."""
    return 0 < len(unit.strip()) <= MAX_UNIT_CHARS and unit.isprintable()


def calibration(tif: "tifffile.TiffFile") -> tuple[tuple[float, float] | None, str | None, str | None]:
    """(y, x) pixel size, unit and problem of an open TIFF: see :func:`read_calibration`.

    ``problem`` is None, or one phrase saying which stored pixel size was unusable (non-finite, zero,
    negative or outside 1e-30..1e30) and where it was found; the pixel size is then None (uncalibrated).
    """
    import re

    page = tif.pages.first
    if tif.is_ome and tif.ome_metadata:
        # the first <Pixels ...> element belongs to the first image, the one read_image reads
        pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", tif.ome_metadata)
        attrs = pixels.group(0) if pixels else tif.ome_metadata
        m = re.search(r'PhysicalSizeX="([^"]*)"', attrs)
        n = re.search(r'PhysicalSizeY="([^"]*)"', attrs)
        u = re.search(r'PhysicalSizeXUnit="([^"]+)"', attrs)
        if m:
            unit = u.group(1) if u else "µm"
            if not _unit_ok(unit):
                return None, None, "a length unit that is not a short name in the OME metadata"
            texts = (n.group(1) if n else m.group(1), m.group(1))
            try:
                py, px = (float(t) for t in texts)
            except ValueError:
                py = px = math.nan
            if not (_usable(px) and _usable(py)):
                shown = " x ".join(repr(t) if _number(t) and len(t) <= 32 else "(not a number)" for t in texts)
                return None, None, f"pixel size (Y x X) {shown} {unit} in the OME metadata"
            return (py, px), unit, None
    unit = None
    ij = tif.imagej_metadata or {}
    if ij.get("unit"):
        unit = str(ij["unit"])
    try:
        (xn, xd), (yn, yd) = (tuple(int(v) for v in page.tags[t].value) for t in ("XResolution", "YResolution"))
    except (KeyError, TypeError, ValueError):
        return None, None, None
    if (xn, xd, yn, yd) == (0, 0, 0, 0):  # unset
        return None, None, None
    # pixels per unit -> unit per pixel; 0 pixels per unit is an infinite pixel, 0/0 not a number
    px = xd / xn if xn else (math.inf if xd else math.nan)
    py = yd / yn if yn else (math.inf if yd else math.nan)
    if unit is None:
        ru = page.tags.get("ResolutionUnit")
        try:
            ru = int(ru.value) if ru is not None else 2  # TIFF default is inch
        except (TypeError, ValueError):
            ru = 2
        if ru == 3:  # centimetre
            unit, px, py = "micron", px * 1e4, py * 1e4
        elif ru == 2:  # inch: the common default of 72 dpi is not a calibration
            return None, None, None
    if unit in (None, "pixel", "pixels") and px == 1.0 and py == 1.0:
        return None, None, None
    if unit is not None and not _unit_ok(unit):
        return None, None, "a length unit that is not a short name in the ImageJ metadata"
    if not (_usable(px) and _usable(py)):
        return (
            None,
            None,
            (
                f"pixel size (Y x X) {py:g} x {px:g} {unit or ''} from the TIFF resolution tags "
                f"({yn}/{yd} and {xn}/{xd} pixels per unit)"
            ).replace("  ", " "),
        )
    return (py, px), unit, None


def read_calibration(tif: "tifffile.TiffFile") -> tuple[tuple[float, float] | None, str | None]:
    """(y, x) pixel size and unit of an open TIFF, from OME-XML, ImageJ tags or the resolution tags; else (None, None).

    OME-XML ``PhysicalSizeY``/``PhysicalSizeX`` (unit ``PhysicalSizeXUnit``, OME's default µm) win when
    present (a missing Y size means square pixels); then the TIFF resolution tags with the ImageJ
    ``unit``, or ResolutionUnit centimetre (converted to micron). Inch resolutions (the 72 dpi that
    many programs write) and 1 pixel-per-pixel without a unit are no calibration. A stored size that
    is not finite, zero, negative or outside 1e-30..1e30 is no calibration either, and a
    :class:`~cpsnake.errors.CpsnakeWarning` names the file and the value (see :func:`calibration`).
    """
    pixel_size, unit, problem = calibration(tif)
    if problem:
        warnings.warn(calibration_warning(getattr(tif.filehandle, "path", "?"), problem), CpsnakeWarning, stacklevel=2)
    return pixel_size, unit


def calibration_warning(path: object, problem: str) -> str:
    return (
        f"{path}: found {problem}; expected a finite positive pixel size in a named unit; the file is treated as "
        "uncalibrated (measurements in pixels); set the pixel size in Fiji (Image > Properties) and save again to "
        "calibrate it"
    )


def _positive(text) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if _usable(v) else None


def _stack_texts(tif: "tifffile.TiffFile") -> tuple[object, object, str, str]:
    """(stored z step, stored frame interval, time unit, where) as the metadata hold them (None: not stored)."""
    import re

    if tif.is_ome and tif.ome_metadata:
        pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", tif.ome_metadata)
        attrs = pixels.group(0) if pixels else ""
        z = re.search(r'PhysicalSizeZ="([^"]*)"', attrs)
        t = re.search(r'TimeIncrement="([^"]*)"', attrs)
        tu = re.search(r'TimeIncrementUnit="([^"]+)"', attrs)
        return z.group(1) if z else None, t.group(1) if t else None, tu.group(1) if tu else "s", "OME"
    ij = tif.imagej_metadata or {}
    return ij.get("spacing"), ij.get("finterval"), str(ij.get("tunit") or "sec"), "ImageJ"


def stack_calibration(tif: "tifffile.TiffFile") -> tuple[float | None, float | None, str | None]:
    """(z step, frame interval, time unit) of an open TIFF; None for what is not stored or not usable.

    OME-XML: ``PhysicalSizeZ`` (in ``PhysicalSizeZUnit``, taken to be the X unit) and ``TimeIncrement``
    (``TimeIncrementUnit``, OME's default s). ImageJ: ``spacing`` (in the image's unit) and ``finterval``
    (``tunit``, default sec). A value that is not finite and positive counts as not stored, and so does a frame
    interval whose unit is not a short printable name (:func:`stack_calibration_problem` says which).
    """
    z, t, tunit, where = _stack_texts(tif)
    default = "s" if where == "OME" else "sec"
    usable = _unit_ok(tunit)
    return _positive(z), _positive(t) if usable else None, tunit if usable else default


def _stored(value) -> bool:
    """False for a value that is absent or zero (some writers store 0 for unset), else True."""
    try:
        return value is not None and float(value) != 0
    except (TypeError, ValueError):
        return True


def stack_calibration_problem(tif: "tifffile.TiffFile", axes: str) -> str | None:
    """A phrase naming the stored Z step (when ``axes`` has Z) or frame interval (T) that
    :func:`stack_calibration` could not use (0 counts as unset, not as a problem), else None."""
    z, t, tunit, where = _stack_texts(tif)
    if "Z" in axes and _stored(z) and _positive(z) is None:
        return f"a Z step (voxel depth) that is not a finite positive number in the {where} metadata"
    if "T" in axes and _stored(t) and (_positive(t) is None or not _unit_ok(tunit)):
        return f"a frame interval that is not a finite positive number of a named unit in the {where} metadata"
    return None


def stack_calibration_warning(path: object, problem: str) -> str:
    return (
        f"{path}: found {problem}; expected a finite positive number; it is treated as not stored (measurements "
        "along that axis in planes); set it in Fiji (Image > Properties: Voxel depth, Frame interval) and save again"
    )
