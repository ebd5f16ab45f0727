"""``cpsnake samples``: which images a run holds, what each one is, and how they are batched.

Usage::

    cpsnake samples (--images FOLDER_OR_GLOB | --sheet SAMPLES.tsv) --out samples.tsv
                    [--batch-pixels N] [--batch-images M] [--max-pixels N] [--block-size N] [--logs FOLDER]

Samples come from a folder (every ``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.jpeg`` file and every
OME-Zarr ``.zarr`` folder directly in it, hidden ones skipped), a glob (``data/**/*.tif``: every match but
folders, and OME-Zarr folders) or a sample sheet: a UTF-8 TSV or CSV file (at most 64 MiB) with one row
per image and the columns

* ``sample`` (required): the name the outputs carry (``masks/SAMPLE.tif``, ...); letters, digits,
  ``.``, ``_``, ``-``; unique;
* ``path`` (required): the image file, absolute or relative to the sheet's folder;
* ``channels`` (optional): 0-based channels for the network, e.g. ``0,2`` (empty: the run's ``channels``);
  a channel the image does not have fails that image here, naming the sheet's cell;
* ``diameter`` (optional): typical cell diameter in pixels, or ``auto`` (a U-Net's size model; empty: the
  run's ``diameter``);
* ``pixel_size`` (optional): pixel size in the image's unit, replacing the file's calibration (square
  pixels; empty: the file's own).

Without a sheet, a sample's name is its file name without the extension (``.ome.tif`` counts as one);
two files with one name are an error, whatever their folders.

Each image is *inspected* from its header only (shape, channels, planes, dtype; no pixel is decoded,
so this is cheap for thousands of images and for slides): a file that is missing, not a regular file (a
FIFO, socket or device named like an image is listed, never opened), not an image, or has a header that
cannot be read, fails here with its one-line reason and goes into no batch. Images that
pass are *batched* by :mod:`cpsnake.run.batch` (in sample-name order, at most ``--batch-images`` images,
default 64, and ``--batch-pixels`` pixels, Y x X x planes, default 50,000,000, per batch; an image larger
than that budget is a batch of its own), named ``b0001``, ``b0002``, ... in that order, so the same samples
and settings always give the same batches.

The output table (TSV) has one row per sample: ``sample, path, channels, diameter, pixel_size, status``
(``ok`` or ``failed``), ``reason``, ``height, width, channels_in_file, planes, dtype, pixels, batch, block``.
``block`` > 0 marks a 2-D TIFF that the workflow segments block by block (cores of ``block`` px, one job
per block, :mod:`cpsnake.run.blockjob`): ``--block-size N`` for every 2-D TIFF, 0 for none, by default those
above 4096 x 4096 px in blocks of 2048.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import sys
import warnings
from dataclasses import dataclass, field, fields
from io import StringIO
from pathlib import Path
from typing import Iterable

from cpsnake import bounds
from cpsnake.bounds import check, option, parse_channels
from cpsnake.engine.blocks import auto_block_size, block_grid
from cpsnake.errors import CpsnakeError, CpsnakeWarning, collected_warnings, guard, library_text
from cpsnake.io import inputs, limits
from cpsnake.io.files import read_bytes, regular_file
from cpsnake.io.omezarr import is_ome_zarr
from cpsnake.io.outputs import atomic_output
from cpsnake.io.tables import field_limit, read_cell, writer
from cpsnake.run.batch import BATCH_IMAGES, BATCH_PIXELS, batch_names

__all__ = [
    "IMAGE_SUFFIXES",
    "Sample",
    "sample_name",
    "name_clash",
    "discover",
    "read_sheet",
    "MAX_SHEET_BYTES",
    "write_table",
    "read_table",
    "inspect",
    "check_jobs",
    "main",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
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
    block: int = 0  # > 0: segmented block by block, cores of this many px (cpsnake.run.blockjob)
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def block_count(self) -> int:
        """The number of blocks (one workflow job each) of an image segmented in blocks; 0 for the others."""
        return len(block_grid((self.height, self.width), self.block, 0)) if self.block else 0


COLUMNS = [f.name for f in fields(Sample) if f.name != "extra"]


def sample_name(path: str | os.PathLike) -> str:
    """File name without its extension (``.ome.tif`` / ``.ome.tiff`` / ``.ome.zarr`` count as one extension)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def discover(spec: str) -> list[Sample]:
    """Samples of a folder, a glob pattern or one image file, sorted by name; an error when none, when two
    share a name, or when ``spec`` itself is a FIFO, socket, device or broken link.

    A folder lists each entry named like an image (:data:`IMAGE_SUFFIXES`; hidden ones skipped) and each
    OME-Zarr ``.zarr`` folder; a glob lists each match that is not a folder, and each OME-Zarr folder. An
    entry that is not a regular file (a FIFO, socket or device named ``x.tif``, a broken link) is listed
    too, never opened here: it fails at inspection with its one line, so nothing is dropped silently.
    """

    if os.path.isdir(spec) and not is_ome_zarr(spec):
        try:
            entries = sorted(Path(spec).iterdir())
        except OSError as exc:
            raise CpsnakeError(
                f"images={spec!r}: the folder cannot be listed ({exc.strerror}); expected a "
                "readable folder of images; check its permissions"
            ) from None
        files = [
            p
            for p in entries
            if not p.name.startswith(".")
            and (
                is_ome_zarr(p) and p.suffix.lower() == ".zarr"
                if os.path.isdir(p)
                else p.suffix.lower() in IMAGE_SUFFIXES
            )
        ]
    elif os.path.lexists(spec) and not os.path.isdir(spec):  # one image, named as it is (no glob characters)
        regular_file(spec, "a folder of images, a glob pattern or an image file")
        files = [Path(spec)]
    else:
        files = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if not os.path.isdir(p) or is_ome_zarr(p)]
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


def _shown(text: str, width: int = 40) -> str:
    """A sheet cell for a message: quoted, cut to ``width`` characters."""
    return repr(text if len(text) <= width else text[:width] + "...")


def _channels_cell(text: str, where: str) -> list[int] | None:
    """A sheet's ``channels`` cell (:func:`cpsnake.bounds.parse_channels`): None when empty, else 1 to 3
    distinct 0-based channel numbers, or a CpsnakeError naming the cell."""
    try:
        chans = parse_channels(text)
    except ValueError:
        chans = []
    if chans is None:
        return None
    if not chans or len(chans) > 3 or len(set(chans)) != len(chans) or min(chans) < 0:
        raise CpsnakeError(
            f"{where}: channels {_shown(text.strip().strip('[]'))}, expected 1 to 3 distinct 0-based "
            "channel numbers, e.g. 0,2; fix that cell"
        )
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
        raise CpsnakeError(
            f"{where}: {what} {_shown(text)}, expected a positive number (or an empty cell for none); fix that cell"
        )
    if what == "diameter":  # the bound of --diameter (cpsnake.bounds): it scales the image and the flow following
        check("--diameter", value, shown=f"{where}: diameter {_shown(text)}")
    return value


MAX_SHEET_BYTES = 64 * 2**20  # a sample sheet of about 300,000 rows
SHEET_CELL_CHARS = 131_072  # the csv module's default field size limit, set explicitly (tables.field_limit)
SHEET_COLUMNS = ("sample", "path", "channels", "diameter", "pixel_size")
SHEET = "a sample sheet (UTF-8 text, TSV or CSV: sample, path[, channels, diameter, pixel_size])"
QUOTING = "TSV or CSV cells, each quoted whole or not at all"
_CSV_PROBLEMS = {  # csv.Error text -> (found, expected)
    "field larger than field limit": (
        "a cell longer than {limit:,} characters",
        "cells of at most {limit:,} characters",
    ),
    "unexpected end of data": ('a quote (") that is never closed', QUOTING),
    "expected after": ("text after the closing quote of a cell", QUOTING),
}


def _sheet_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first line, cells) of each non-blank row of a sheet's ``text``; malformed CSV / TSV is a CpsnakeError."""

    reader = csv.reader(StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, line = [], 1
    limit = SHEET_CELL_CHARS
    try:
        with field_limit(limit):
            for cells in reader:
                if cells:
                    rows.append((line, cells))
                line = reader.line_num + 1
    except csv.Error as exc:
        found, expected = next(
            ((f.format(limit=limit), e.format(limit=limit)) for k, (f, e) in _CSV_PROBLEMS.items() if k in str(exc)),
            (f"malformed CSV ({exc})", QUOTING),
        )
        raise CpsnakeError(
            f"{path} line {line}: found {found}; expected {expected}; fix that row, or save the sheet "
            "again from a spreadsheet"
        ) from None
    return rows


def read_sheet(path: str | os.PathLike) -> list[Sample]:
    """Samples of a sample sheet (TSV or CSV, told by its first line), sorted by name.

    Relative paths are relative to the sheet's folder. The sheet is read only if it is a regular file of at
    most :data:`MAX_SHEET_BYTES` bytes of UTF-8 text (a FIFO, device or socket is refused before any open).
    Errors (one line, naming the sheet and the row): not a regular file, too large, not UTF-8 text or
    holding NUL bytes, malformed quoting or a cell over the csv module's field size limit, missing
    ``sample`` / ``path`` columns, unknown or repeated columns, more cells than columns, an empty or malformed
    name, a repeated name, bad ``channels`` / ``diameter`` / ``pixel_size`` values. Each sample's ``extra``
    holds ``where``, its sheet and line, for later messages about its cells.
    """

    path = Path(path)
    data = read_bytes(path, SHEET, limit=MAX_SHEET_BYTES)
    bad = data.find(b"\0")
    try:
        text = data.decode("utf-8-sig") if bad < 0 else ""
    except UnicodeDecodeError as exc:
        bad = exc.start
    if bad >= 0:
        line = data.count(b"\n", 0, bad) + 1
        raise CpsnakeError(
            f"{path} line {line}: found binary data or text that is not UTF-8 "
            f"(byte {bad:,}); expected {SHEET}; save the sheet as UTF-8 text"
        )
    if not text.strip():
        raise CpsnakeError(
            f"{path}: empty sample sheet; expected a header line 'sample<TAB>path' and one row per image"
        )
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    rows = _sheet_rows(path, text, delimiter)
    header = [h.strip() for h in rows[0][1]] if rows and rows[0][0] == 1 else []
    body = rows[1:] if header else rows
    if "sample" not in header or "path" not in header:
        found = ", ".join(_shown(h, 20) for h in header[:8]) or "none on line 1"
        raise CpsnakeError(
            f"{path}: found columns {found}, expected at least 'sample' and 'path' (optional: channels, "
            "diameter, pixel_size)"
        )
    unknown = [h for h in header if h not in SHEET_COLUMNS]
    if unknown:
        raise CpsnakeError(
            f"{path}: unknown column(s) {', '.join(_shown(h, 20) for h in unknown[:8])}, expected only "
            f"{', '.join(SHEET_COLUMNS)}; rename or remove them"
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise CpsnakeError(
            f"{path}: column(s) {', '.join(map(repr, repeated))} appear twice, expected each column "
            "once; remove the copy"
        )
    samples: dict[str, Sample] = {}
    for line, cells in body:
        where = f"{path} line {line}"
        if any(c.strip() for c in cells[len(header) :]):
            raise CpsnakeError(
                f"{where}: found {len(cells)} cells, more than the {len(header)} columns of the header; "
                "expected one cell per column; remove the extra cells or name their column"
            )
        row = {h: c.strip() for h, c in zip(header, cells)}
        name = row.get("sample", "")
        if not NAME_RE.match(name):
            raise CpsnakeError(
                f"{where}: sample name {_shown(name)}, expected letters, digits, '.', '_' or '-' "
                "(it names the output files)"
            )
        if name in samples:
            raise CpsnakeError(f"{where}: sample {_shown(name)} appears twice, expected unique sample names")
        image = row.get("path", "")
        if not image:
            raise CpsnakeError(f"{where}: sample {_shown(name)} has no path, expected the image file")
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        samples[name] = Sample(
            name,
            str(image_path),
            channels=_channels_cell(row.get("channels", ""), where),
            diameter=(
                "auto"
                if row.get("diameter", "") == "auto"
                else _parse_positive(row.get("diameter", ""), where, "diameter")
            ),
            pixel_size=_parse_positive(row.get("pixel_size", ""), where, "pixel_size"),
            extra={"where": where},
        )
    if not samples:
        raise CpsnakeError(f"{path}: no rows, expected one row per image under the header")
    return [samples[n] for n in sorted(samples)]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_table(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    """Write the samples table (TSV, :data:`COLUMNS`) atomically; text cells as :func:`cpsnake.io.tables.writer`
    writes them."""

    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = writer(fh, delimiter="\t")
        w.writerow(COLUMNS)
        for s in samples:
            w.writerow([_cell(getattr(s, c)) for c in COLUMNS])


def read_table(path: str | os.PathLike) -> list[Sample]:
    """Read a table written by :func:`write_table` (a missing or damaged one is a one-line CpsnakeError)."""

    what = "the samples table written by `cpsnake samples`"
    regular_file(path, what)
    try:
        return _rows(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CpsnakeError(
            f"{path}: cannot be read ({type(exc).__name__}: {library_text(exc)}); expected {what}; "
            "delete it and run `cpsnake samples` (or the workflow) again"
        ) from None


def _rows(path) -> list[Sample]:
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh, delimiter="\t"):
            row = {k: read_cell(v) for k, v in raw.items()}

            def num(key, kind):
                return kind(row[key]) if row.get(key, "") != "" else None

            out.append(
                Sample(
                    row["sample"],
                    row["path"],
                    channels=[int(c) for c in row["channels"].split(",")] if row.get("channels") else None,
                    diameter="auto" if row.get("diameter") == "auto" else num("diameter", float),
                    pixel_size=num("pixel_size", float),
                    status=row["status"],
                    reason=row["reason"],
                    height=num("height", int),
                    width=num("width", int),
                    channels_in_file=num("channels_in_file", int),
                    planes=num("planes", int),
                    dtype=row["dtype"],
                    pixels=num("pixels", int),
                    batch=row["batch"],
                    block=num("block", int) or 0,
                )
            )
    return out


# --- inspection: from each file's header only ---------------------------------------------------------


def one_line_of(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def inspect(
    samples: list[Sample],
    *,
    batch_pixels: int = BATCH_PIXELS,
    batch_images: int = BATCH_IMAGES,
    max_pixels: int | None = None,
    block_size: int | None = None,
) -> list[Sample]:
    """Fill in each sample's header fields and status, then its batch and block size (see the module docstring).

    An image whose header cannot be read, declares more than ``max_pixels`` samples, or lacks a channel
    that its sheet row names, is ``failed`` with its one-line reason and goes into no batch. Returns the
    samples in name order.
    """

    for s in samples:
        try:
            with collected_warnings() as notes:  # a sample's warnings (broken metadata set aside) only if it passes
                head = inputs.read_header(s.path, max_pixels=max_pixels)
                limits.check_samples(s.path, (head["pixels"], head["channels_in_file"]), limit=max_pixels)
                _check_channels(s, head["channels_in_file"])
        except CpsnakeError as exc:
            s.status, s.reason = "failed", one_line_of(exc)
            continue
        for note in notes:
            warnings.warn(note, CpsnakeWarning, stacklevel=2)
        for key, value in head.items():
            setattr(s, key, value)
        s.block = _block(s, block_size)
    ok = [s for s in samples if s.status == "ok"]
    names = batch_names([(s.sample, s.pixels) for s in ok], max_pixels=batch_pixels, max_images=batch_images)
    for s in ok:
        s.batch = names[s.sample]
    return sorted(samples, key=lambda s: s.sample)


def _check_channels(s: Sample, n: int) -> None:
    """A CpsnakeError naming the sheet's cell when ``s.channels`` (from a sample sheet) names a channel that the
    image's header does not have (``n`` channels)."""
    missing = [c for c in s.channels or () if c >= n]
    if missing:
        where = s.extra.get("where", f"sample {s.sample!r}")
        raise CpsnakeError(
            f"{where}: channels {_cell(s.channels)} names channel {missing[0]}, but {s.path} has {n} channel(s) "
            f"(0-based 0..{n - 1}); expected channels of that image; fix the channels cell of that row"
        )


def _block(s: Sample, block_size: int | None) -> int:
    """The block size of a 2-D TIFF or OME-Zarr: ``block_size`` if given, else automatic
    (:func:`cpsnake.engine.blocks.auto_block_size`); 0 for stacks, PNG and JPEG (read whole)."""
    if block_size == 0 or s.planes != 1 or inputs.input_format(s.path) not in inputs.REGION_FORMATS:
        return 0
    return int(block_size) if block_size is not None else auto_block_size((s.height, s.width))


def check_jobs(table: list[Sample]) -> int:
    """The workflow jobs the table makes (its batches and the blocks of its images in blocks), or a one-line
    CpsnakeError above :data:`cpsnake.bounds.MAX_JOBS` (the workflow's samples checkpoint writes no table then)."""
    batches = len({s.batch for s in table if s.batch})
    blocks = sum(s.block_count for s in table if s.batch)
    return bounds.check_jobs(batches, blocks, images=len(table))


@guard("samples")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cpsnake samples", description=__doc__.splitlines()[0].split(": ", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a folder or a glob pattern of images")
    src.add_argument(
        "--sheet", type=Path, help="a sample sheet (TSV or CSV: sample, path[, channels, diameter, pixel_size])"
    )
    p.add_argument("--out", type=Path, required=True, help="the samples table to write (TSV)")
    p.add_argument(
        "--batch-images",
        type=option("--batch-images"),
        default=BATCH_IMAGES,
        help=f"most images per batch ({BATCH_IMAGES})",
    )
    p.add_argument(
        "--batch-pixels",
        type=option("--batch-pixels"),
        default=BATCH_PIXELS,
        help=f"most pixels per batch, unless one image is larger ({BATCH_PIXELS:,})",
    )
    p.add_argument("--logs", type=Path, default=None, help="folder for one NAME.log per unreadable image")
    p.add_argument(
        "--block-size",
        type=option("--block-size"),
        default=None,
        metavar="N",
        help="2-D TIFFs segmented in blocks of N px (one workflow job per block, cpsnake.run.blockjob); 0: "
        "none; default: images above 4096 x 4096 px in blocks of 2048",
    )
    limits.add_option(p)
    args = p.parse_args(argv)
    found = discover(args.images) if args.images else read_sheet(args.sheet)
    table = inspect(
        found,
        batch_pixels=args.batch_pixels,
        batch_images=args.batch_images,
        max_pixels=args.max_pixels,
        block_size=args.block_size,
    )
    check_jobs(table)
    write_table(args.out, table)
    failed = [s for s in table if s.status != "ok"]
    for s in failed:
        print(f"cpsnake samples: error: {s.reason}", file=sys.stderr)
        if args.logs is not None:
            with atomic_output(args.logs / f"{s.sample}.log") as tmp:
                tmp.write_text(f"cpsnake samples: error: {s.reason}\n")
    batches = len({s.batch for s in table if s.batch})
    print(
        f"cpsnake samples: {len(table)} images, {len(failed)} unreadable, {batches} batch(es) -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
