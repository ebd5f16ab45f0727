"""``cpsnake samples``: which images a run holds, what each one is, and how they are batched.

Usage::

    cpsnake samples (--images FOLDER_OR_GLOB | --sheet SAMPLES.tsv) --out samples.tsv
                    [--channels I,J,K] [--diameter D] [--batch-pixels N] [--batch-images M] [--max-pixels N]

Samples come from a folder (every ``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.jpeg`` file and every
OME-Zarr ``.zarr`` folder directly in it, hidden ones skipped), a glob (``data/**/*.tif``) or a sample sheet: a TSV or CSV file with one row
per image and the columns

* ``sample`` (required): the name the outputs carry (``masks/SAMPLE.tif``, ...); letters, digits,
  ``.``, ``_``, ``-``; unique;
* ``path`` (required): the image file, absolute or relative to the sheet's folder;
* ``channels`` (optional): 0-based channels for the network, e.g. ``0,2`` (empty: the run's ``channels``);
* ``diameter`` (optional): typical cell diameter in pixels, or ``auto`` (a U-Net's size model; empty: the
  run's ``diameter``);
* ``pixel_size`` (optional): pixel size in the image's unit, replacing the file's calibration (square
  pixels; empty: the file's own).

Without a sheet, a sample's name is its file name without the extension (``.ome.tif`` counts as one);
two files with one name are an error, whatever their folders.

Each image is *inspected* from its header only (shape, channels, planes, dtype; no pixel is decoded,
so this is cheap for thousands of images and for slides): a file that is missing, not an image, or has
a header that cannot be read, fails here with its one-line reason and goes into no batch. Images that
pass are *batched*: in sample-name order, a batch takes images while it holds at most
``--batch-images`` images (default 64) and at most ``--batch-pixels`` pixels (Y x X x planes, default
50,000,000); an image larger than that budget is a batch of its own. Batches are named ``b0001``,
``b0002``, ... in that order, so the same samples and settings always give the same batches.

The output table (TSV) has one row per sample: ``sample, path, channels, diameter, pixel_size, status``
(``ok`` or ``failed``), ``reason``, ``height, width, channels_in_file, planes, dtype, pixels, batch, block``.
``block`` > 0 marks a 2-D TIFF that the workflow segments block by block (cores of ``block`` px, one job
per block, :mod:`cpsnake.blockjob`): ``--block-size N`` for every 2-D TIFF, 0 for none, by default those
above 4096 x 4096 px in blocks of 2048.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import os
import re
import sys
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

from cpsnake.errors import CpsnakeError, CpsnakeWarning, collected_warnings, guard, library_text

__all__ = [
    "IMAGE_SUFFIXES",
    "BATCH_IMAGES",
    "BATCH_PIXELS",
    "Sample",
    "sample_name",
    "name_clash",
    "discover",
    "read_sheet",
    "form_batches",
    "write_table",
    "read_table",
    "inspect_header",
    "inspect",
    "main",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
BATCH_IMAGES = 64  # at most this many images per batch job
BATCH_PIXELS = 50_000_000  # at most this many pixels (Y x X x planes) per batch job, unless one image is larger
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Sample:
    """One row of the samples table (see the module docstring for the columns)."""

    sample: str
    path: str
    channels: list[int] | None = None
    diameter: float | str | None = None  # pixels, or "auto"
    pixel_size: float | None = None
    status: str = "ok"
    reason: str = ""
    height: int | None = None
    width: int | None = None
    channels_in_file: int | None = None
    planes: int | None = None
    dtype: str = ""
    pixels: int | None = None
    batch: str = ""
    block: int = 0  # > 0: segmented block by block, cores of this many px (cpsnake.blockjob)
    extra: dict = field(default_factory=dict, repr=False)


COLUMNS = [f.name for f in fields(Sample) if f.name != "extra"]


def sample_name(path: str | os.PathLike) -> str:
    """File name without its extension (``.ome.tif`` / ``.ome.tiff`` / ``.ome.zarr`` count as one extension)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def discover(spec: str) -> list[Sample]:
    """Samples of a folder or a glob pattern, sorted by name; an error when none, or when two share a name."""
    from cpsnake.regions import is_ome_zarr

    if Path(spec).is_dir() and not is_ome_zarr(spec):
        files = [p for p in sorted(Path(spec).iterdir()) if not p.name.startswith(".")]
        files = [p for p in files if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                 or (p.suffix.lower() == ".zarr" and is_ome_zarr(p))]
    else:
        files = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file() or is_ome_zarr(p)]
    if not files:
        raise CpsnakeError(
            f"images={spec!r}: found no image files, expected a folder holding {'/'.join(IMAGE_SUFFIXES)} files "
            "or a glob matching files; check the path, or give a sample sheet"
        )
    clash = name_clash(files)
    if clash:
        first, second, name = clash
        raise CpsnakeError(
            f"images={spec!r}: found two files named {name!r} ({first}, {second}), expected unique names; "
            "rename one, narrow the glob, or name the samples in a sample sheet"
        )
    return sorted((Sample(sample_name(p), str(p)) for p in files), key=lambda s: s.sample)


def name_clash(paths: Iterable[str | os.PathLike]) -> tuple[Path, Path, str] | None:
    """The first two paths with one sample name (:func:`sample_name`) and that name, or None."""
    seen: dict[str, Path] = {}
    for path in map(Path, paths):
        name = sample_name(path)
        if name in seen:
            return seen[name], path, name
        seen[name] = path
    return None


def _parse_channels(text: str, where: str) -> list[int] | None:
    text = text.strip().strip("[]")
    if not text:
        return None
    try:
        chans = [int(t) for t in text.replace(" ", ",").split(",") if t != ""]
    except ValueError:
        chans = []
    if not chans or len(chans) > 3 or len(set(chans)) != len(chans) or min(chans) < 0:
        raise CpsnakeError(f"{where}: channels {text!r}, expected 1 to 3 distinct 0-based channel numbers, e.g. 0,2")
    return chans


def _parse_positive(text: str, where: str, what: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CpsnakeError(f"{where}: {what} {text!r}, expected a positive number (or an empty cell for none)")
    return value


def read_sheet(path: str | os.PathLike) -> list[Sample]:
    """Samples of a sample sheet (TSV or CSV, told by its first line), sorted by name.

    Relative paths are relative to the sheet's folder. Errors (one line, naming the sheet and the row):
    missing ``sample`` / ``path`` columns, unknown columns, an empty or malformed name, a repeated name,
    bad ``channels`` / ``diameter`` / ``pixel_size`` values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CpsnakeError(f"{path}: cannot be read as a text sample sheet ({library_text(exc)}); expected a TSV or "
                           "CSV file") from None
    lines = text.splitlines()
    if not lines:
        raise CpsnakeError(f"{path}: empty sample sheet; expected a header line 'sample<TAB>path' and one row per image")
    delimiter = "\t" if "\t" in lines[0] else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    allowed = ("sample", "path", "channels", "diameter", "pixel_size")
    if "sample" not in header or "path" not in header:
        raise CpsnakeError(f"{path}: found columns {header}, expected at least 'sample' and 'path' "
                           f"(optional: channels, diameter, pixel_size)")
    unknown = [h for h in header if h not in allowed]
    if unknown:
        raise CpsnakeError(f"{path}: unknown column(s) {unknown}, expected only {', '.join(allowed)}; rename or remove them")
    samples: dict[str, Sample] = {}
    for i, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path} line {i}"
        name = row.get("sample", "")
        if not NAME_RE.match(name):
            raise CpsnakeError(f"{where}: sample name {name!r}, expected letters, digits, '.', '_' or '-' "
                               "(it names the output files)")
        if name in samples:
            raise CpsnakeError(f"{where}: sample {name!r} appears twice, expected unique sample names")
        image = row.get("path", "")
        if not image:
            raise CpsnakeError(f"{where}: sample {name!r} has no path, expected the image file")
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        samples[name] = Sample(
            name, str(image_path),
            channels=_parse_channels(row.get("channels", ""), where),
            diameter=("auto" if row.get("diameter", "").strip() == "auto"
                      else _parse_positive(row.get("diameter", ""), where, "diameter")),
            pixel_size=_parse_positive(row.get("pixel_size", ""), where, "pixel_size"),
        )
    if not samples:
        raise CpsnakeError(f"{path}: no rows, expected one row per image under the header")
    return [samples[n] for n in sorted(samples)]


def form_batches(sizes: Sequence[tuple[str, int]], *, max_pixels: int = BATCH_PIXELS,
                 max_images: int = BATCH_IMAGES) -> list[list[str]]:
    """Group (name, pixels) pairs into batches, deterministically.

    Names are taken in sorted order; a batch grows while it has fewer than ``max_images`` names and its
    pixels stay within ``max_pixels``; an image larger than ``max_pixels`` is a batch of its own.

    Returns
    -------
    list of batches, each a list of names in sorted order.
    """
    if max_images < 1 or max_pixels < 1:
        raise ValueError(f"batch limits {max_images} images / {max_pixels} pixels, expected >= 1")
    batches: list[list[str]] = []
    current: list[str] = []
    total = 0
    for name, pixels in sorted(sizes):
        if current and (len(current) >= max_images or total + pixels > max_pixels):
            batches.append(current)
            current, total = [], 0
        current.append(name)
        total += pixels
    if current:
        batches.append(current)
    return batches


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_table(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    """Write the samples table (TSV, :data:`COLUMNS`) atomically."""
    from cpsnake.io import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(COLUMNS)
        for s in samples:
            w.writerow([_cell(getattr(s, c)) for c in COLUMNS])


def read_table(path: str | os.PathLike) -> list[Sample]:
    """Read a table written by :func:`write_table` (a missing or damaged one is a one-line CpsnakeError)."""
    from cpsnake.files import regular_file

    what = "the samples table written by `cpsnake samples`"
    regular_file(path, what)
    try:
        return _rows(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CpsnakeError(f"{path}: cannot be read ({type(exc).__name__}: {library_text(exc)}); expected {what}; "
                           "delete it and run `cpsnake samples` (or the workflow) again") from None


def _rows(path) -> list[Sample]:
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            def num(key, kind):
                return kind(row[key]) if row.get(key, "") != "" else None

            out.append(Sample(
                row["sample"], row["path"],
                channels=[int(c) for c in row["channels"].split(",")] if row.get("channels") else None,
                diameter="auto" if row.get("diameter") == "auto" else num("diameter", float),
                pixel_size=num("pixel_size", float),
                status=row["status"], reason=row["reason"], height=num("height", int), width=num("width", int),
                channels_in_file=num("channels_in_file", int), planes=num("planes", int), dtype=row["dtype"],
                pixels=num("pixels", int), batch=row["batch"], block=num("block", int) or 0,
            ))
    return out


# --- inspection: from each file's header only ---------------------------------------------------------


def inspect_header(path: str | os.PathLike) -> dict:
    """What an image's header declares, decoding no pixel: ``height, width, channels_in_file, planes, dtype, pixels``.

    TIFF / OME-TIFF: the first series' shape and axes (Y, X; C/S are channels; Z/T planes; axes without
    metadata count as channels up to 3 entries, else planes, as :func:`cpsnake.io.read_image` reads
    them); PNG: the IHDR chunk; JPEG: the frame header. ``pixels`` is Y x X x planes. A file that is
    missing, not a regular file, not an image, or whose header cannot be read is a one-line CpsnakeError.
    """
    from cpsnake import io

    path = Path(path)
    from cpsnake import regions

    fmt = "ome-zarr" if regions.is_ome_zarr(path) else io._sniff(path)
    try:
        if fmt == "ome-zarr":
            with regions.open_image(path) as img:
                shape, axes, dtype = img.meta["shape"], img.meta["axes"], img.meta["dtype"]
        elif fmt == "tiff":
            head = io.open_tiff(path, expected="an image", fix="export it again", sniffed=True)
            with contextlib.closing(head):
                series = head.series
                shape, axes, dtype = tuple(int(n) for n in series.shape), series.axes, str(series.dtype)
            if head.ignored:  # broken metadata set aside: the pages are read as stored
                warnings.warn(head.ignored, CpsnakeWarning, stacklevel=2)
        elif fmt == "png":
            with open(path, "rb") as fh:
                head = fh.read(33)
            h, w, spp, nbytes = io.png_shape(path, head)
            shape, axes, dtype = (h, w, spp), "YXS", "uint16" if nbytes == 2 else "uint8"
        else:
            from PIL import Image

            with io.pillow_without_limit(), Image.open(path) as im:
                w, h = im.size
                shape, axes, dtype = (h, w, len(im.getbands())), "YXS", "uint8"
    except CpsnakeError:
        raise
    except Exception as exc:  # readers raise many types for a broken header
        raise CpsnakeError(f"{path}: found a {fmt.upper()} whose header cannot be read ({library_text(exc)}); "
                           "expected a complete image; the file is truncated or corrupt: copy or export it again") from None
    if "Y" not in axes or "X" not in axes:
        raise CpsnakeError(f"{path}: found shape {shape} with axes {axes!r}; expected an image with Y and X axes")
    channels = planes = 1
    for a, n in zip(axes, shape):
        if a in "CS":
            channels *= n
        elif a in "ZT" or (a in "QIR" and n > 3):
            planes *= n
        elif a not in "YX":
            channels *= n
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    return {"height": height, "width": width, "channels_in_file": channels, "planes": planes, "dtype": dtype,
            "pixels": height * width * planes}


def one_line_of(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def inspect(samples: list[Sample], *, batch_pixels: int = BATCH_PIXELS, batch_images: int = BATCH_IMAGES,
            max_pixels: int | None = None, block_size: int | None = None) -> list[Sample]:
    """Fill in each sample's header fields and status, then its batch and block size (see the module docstring).

    An image whose header cannot be read, or declares more than ``max_pixels`` samples, is ``failed``
    with its one-line reason and goes into no batch. Returns the samples in name order.
    """
    from cpsnake import limits

    for s in samples:
        try:
            with collected_warnings() as notes:  # a sample's warnings (broken metadata set aside) only if it passes
                head = inspect_header(s.path)
                limits.check_samples(s.path, (head["pixels"], head["channels_in_file"]), limit=max_pixels)
        except CpsnakeError as exc:
            s.status, s.reason = "failed", one_line_of(exc)
            continue
        for note in notes:
            warnings.warn(note, CpsnakeWarning, stacklevel=2)
        for key, value in head.items():
            setattr(s, key, value)
        s.block = _block(s, block_size)
    ok = [s for s in samples if s.status == "ok"]
    by_name = {s.sample: s for s in ok}
    for k, names in enumerate(form_batches([(s.sample, s.pixels) for s in ok], max_pixels=batch_pixels,
                                           max_images=batch_images), start=1):
        for n in names:
            by_name[n].batch = f"b{k:04d}"
    return sorted(samples, key=lambda s: s.sample)


def _block(s: Sample, block_size: int | None) -> int:
    """The block size of a 2-D TIFF or OME-Zarr: ``block_size`` if given, else automatic
    (:func:`cpsnake.blocks.auto_block_size`); 0 for stacks, PNG and JPEG (read whole)."""
    from cpsnake import io
    from cpsnake.blocks import auto_block_size

    from cpsnake.regions import is_ome_zarr

    if block_size == 0 or s.planes != 1 or not (is_ome_zarr(s.path) or io._sniff(Path(s.path)) == "tiff"):
        return 0
    return int(block_size) if block_size is not None else auto_block_size((s.height, s.width))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive whole number")
    return value


@guard("samples")
def main(argv: list[str] | None = None) -> int:
    from cpsnake import limits

    p = argparse.ArgumentParser(prog="cpsnake samples", description=__doc__.splitlines()[0].split(": ", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a folder or a glob pattern of images")
    src.add_argument("--sheet", type=Path, help="a sample sheet (TSV or CSV: sample, path[, channels, diameter, pixel_size])")
    p.add_argument("--out", type=Path, required=True, help="the samples table to write (TSV)")
    p.add_argument("--batch-images", type=_positive, default=BATCH_IMAGES, help=f"most images per batch ({BATCH_IMAGES})")
    p.add_argument("--batch-pixels", type=_positive, default=BATCH_PIXELS,
                   help=f"most pixels per batch, unless one image is larger ({BATCH_PIXELS:,})")
    p.add_argument("--logs", type=Path, default=None, help="folder for one NAME.log per unreadable image")
    p.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="2-D TIFFs segmented in blocks of N px (one workflow job per block, cpsnake.blockjob); 0: "
                        "none; default: images above 4096 x 4096 px in blocks of 2048")
    limits.add_option(p)
    args = p.parse_args(argv)
    found = discover(args.images) if args.images else read_sheet(args.sheet)
    if args.block_size is not None and args.block_size < 0:
        raise CpsnakeError(f"--block-size {args.block_size}: expected 0 (no blocks) or a block side in pixels")
    table = inspect(found, batch_pixels=args.batch_pixels, batch_images=args.batch_images, max_pixels=args.max_pixels,
                    block_size=args.block_size)
    write_table(args.out, table)
    failed = [s for s in table if s.status != "ok"]
    for s in failed:
        print(f"cpsnake samples: error: {s.reason}", file=sys.stderr)
        if args.logs is not None:
            from cpsnake.io import atomic_output

            with atomic_output(args.logs / f"{s.sample}.log") as tmp:
                tmp.write_text(f"cpsnake samples: error: {s.reason}\n")
    batches = len({s.batch for s in table if s.batch})
    print(f"cpsnake samples: {len(table)} images, {len(failed)} unreadable, {batches} batch(es) -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
