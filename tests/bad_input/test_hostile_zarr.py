"""Hostile OME-Zarr folders and region reads: no hang, no escape, no budget raised by a declared
chunk, no silent NaN, no noise after an error line, no raw library text.

One test per class of problem, parametrized over its members, each running the real command in a capped
child process (``hostile.cpsnake``: a hang fails as ``rc == "timeout"``):

1. ``test_nothing_in_a_zarr_folder_hangs`` -- a FIFO, socket or character device as a chunk, as
   ``zarr.json`` / ``.zattrs`` / ``.zarray`` / ``.zgroup`` (group or array), or where a folder of chunks
   should be.
2. ``test_zarr_paths_stay_inside`` -- ``datasets[].path`` of ``../other.zarr/0``, absolute, climbing out
   through ``0/../..``; a dataset folder, a chunk or the group's metadata that is a symbolic link out of the
   folder. (``test_links_inside_the_folder_are_followed``: a link that stays inside is read.)
3. ``test_declared_chunks_count_against_the_budget`` -- 256 x 256 arrays declaring 72000 x 72000 chunks
   (Zarr v3 and v2, a zstd stream that expands to 5 GB), a 72000 x 72000 shard, chunks over
   ``--max-pixels``, a tiled TIFF declaring 65520 x 65520 tiles read by region.
4. ``test_nan_is_refused_by_region_reads`` -- NaN / infinity in an OME-Zarr (segment with ``--low-high`` and
   in blocks; normalize with percentiles) and in a tiled float TIFF read by region.
5. ``test_no_traceback_or_noise_after_a_corrupt_chunk`` -- a garbage tile of a tiled TIFF, a garbage
   chunk of a Zarr v3 / v2 image: the error line and nothing after it.
6. ``test_zarr_library_errors_are_one_line`` -- a datasets path that is a number, unknown codecs, object
   and string data types, zarr.json that is not JSON, axes that do not match the shape, malformed axes
   and scales, chunk shapes of 0: found / expected / fix, never zarr's text alone.

Plus ``test_provenance_hash_of_a_folder_never_follows_links_or_opens_fifos``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hostile import RSS_LIMIT_MB, assert_no_outputs, assert_one_error_line, cpsnake, fifo, unix_socket

RNG = np.random.default_rng(0)
SIDE = 72000  # a declared chunk side: 72000**2 = 5,184,000,000 samples


# --- builders --------------------------------------------------------------------------------------


def ome_zarr(path: Path, data: np.ndarray, *, fmt: int = 3, chunks=None, **create) -> Path:
    """A 2-D (Y, X) OME-Zarr image (NGFF 0.5 on Zarr v3, NGFF 0.4 on Zarr v2) with one level ``0``."""
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    a = g.create_array("0", shape=data.shape, chunks=chunks or data.shape, dtype=data.dtype, **create)
    a[:] = data
    ms = [
        {
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}],
        }
    ]
    if fmt == 3:
        g.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    else:
        ms[0]["version"] = "0.4"
        g.attrs["multiscales"] = ms
    return path


def grey(shape=(128, 128)) -> np.ndarray:
    return RNG.integers(100, 4000, shape).astype(np.uint16)


def metadata(path: Path, name: str) -> dict:
    return json.loads((path / name).read_text())


def set_metadata(path: Path, name: str, doc: dict) -> None:
    (path / name).write_text(json.dumps(doc))


def datasets_path(path: Path, value) -> None:
    """Set multiscales[0].datasets[0].path of a v3 (zarr.json) or v2 (.zattrs) image."""
    if (path / "zarr.json").exists():
        doc = metadata(path, "zarr.json")
        doc["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"] = value
        set_metadata(path, "zarr.json", doc)
    else:
        doc = metadata(path, ".zattrs")
        doc["multiscales"][0]["datasets"][0]["path"] = value
        set_metadata(path, ".zattrs", doc)


def replace(entry: Path, kind: str) -> Path:
    """Replace the file or folder ``entry`` by a FIFO, a socket or a character device (/dev/zero's numbers)."""
    if entry.is_dir():
        shutil.rmtree(entry)
    else:
        entry.unlink()
    if kind == "fifo":
        return fifo(entry.parent, entry.name)
    if kind == "socket":
        return unix_socket(entry.parent, entry.name)
    try:
        os.mknod(entry, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except OSError as exc:  # no CAP_MKNOD: the device member cannot be built here
        pytest.skip(f"mknod: {exc.strerror}")
    return entry


def zstd_zeros(n: int) -> bytes:
    """A zstd frame of ``n`` zero bytes without a declared content size (RLE blocks: 4 bytes per 128 KiB), so
    a decoder grows its output as it goes: about 160 KB on disk for 5 GB."""
    block = 1 << 17
    out = [struct.pack("<I", 0xFD2FB528), bytes([0x00, 0x38])]  # no content size; window 2**17 (exponent 7)
    while n > 0:
        size = min(block, n)
        n -= size
        out.append(
            struct.pack("<I", 1 | (1 << 1) | (size << 3))[:3]
            if n == 0
            else struct.pack("<I", (1 << 1) | (size << 3))[:3]
        )
        out.append(b"\0")
    return b"".join(out)


def chunk_bomb(path: Path, fmt: int) -> Path:
    """A 256 x 256 uint8 image whose one chunk is declared 72000 x 72000 and holds 5 GB of zeros (zstd)."""
    ome_zarr(path, np.zeros((256, 256), np.uint8), fmt=fmt)
    if fmt == 3:
        doc = metadata(path, "0/zarr.json")
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [SIDE, SIDE]
        doc["codecs"] = [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]
        set_metadata(path, "0/zarr.json", doc)
        key = path / "0" / "c" / "0" / "0"
    else:
        doc = metadata(path, "0/.zarray")
        doc["chunks"], doc["compressor"], doc["filters"] = [SIDE, SIDE], {"id": "zstd", "level": 0}, None
        set_metadata(path, "0/.zarray", doc)
        key = path / "0" / "0.0"
    for old in (path / "0").rglob("*"):
        if old.is_file() and old.name not in ("zarr.json", ".zarray", ".zattrs"):
            old.unlink()
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(zstd_zeros(SIDE * SIDE))
    return path


def segment_outputs(out: Path, name: str) -> list[Path]:
    return [
        out / "masks" / f"{name}.tif",
        out / "masks" / f"{name}.zarr",
        out / "rois" / f"{name}.zip",
        out / "measurements" / f"{name}.csv",
        out / "overlays" / f"{name}.png",
        out / "provenance" / f"{name}.json",
    ]


def segment(d: Path, image: Path, model: Path, *more) -> tuple[list, list[Path]]:
    """``cpsnake segment IMAGE --out d/o --model MODEL ...`` and the outputs it must not leave."""
    from cpsnake.run.samples import sample_name

    return (["segment", image, "--out", d / "o", "--model", model, *more], segment_outputs(d / "o", sample_name(image)))


def normalize(d: Path, image: Path, *more) -> tuple[list, list[Path]]:
    """``cpsnake normalize IMAGE d/n.tif ...`` and the outputs it must not leave: the same region reader as
    ``segment`` (an OME-Zarr is always read through it), without torch and the model (about 1 s instead of 5 s),
    so most members run it and one member of each class runs ``segment``."""
    return ["normalize", image, d / "n.tif", *more], [d / "n.tif", d / "n.json"]


def run_one(args: list, outputs: list[Path], entry, pattern: str | None = None, *, timeout: float = 90):
    """Run the command; one error line naming ``entry``, exit 1, nothing under a final name."""
    run = cpsnake(*args, timeout=timeout)
    assert run.rc != "timeout", args
    line = assert_one_error_line(run, args[0], entry, pattern=pattern)
    assert_no_outputs(*outputs)
    return run, line


def samples_run(d: Path, image: Path, entry, pattern: str | None = None) -> str:
    """``cpsnake samples --images DIR --out t.tsv``: exit 0, one error line naming ``entry``, the image failed."""
    import csv

    run = cpsnake("samples", "--images", image.parent, "--out", d / "t.tsv", timeout=60)
    assert run.rc == 0, run.stderr[-2000:]
    errors = [x for x in run.stderr.splitlines() if x.startswith("cpsnake samples: error: ")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert str(entry) in errors[0], (entry, errors[0])
    if pattern:
        import re

        assert re.search(pattern, errors[0]), (pattern, errors[0])
    with open(d / "t.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["status"] for r in rows] == ["failed"], rows
    return errors[0]


# --- 1. nothing hangs ------------------------------------------------------------------------------

# (Zarr format, the entry replaced, its kind, whether `cpsnake samples` (header only) reads it)
HANGS = {
    "fifo as v3 chunk": (3, "0/c/0/0", "fifo", False),
    "fifo as v3 array zarr.json": (3, "0/zarr.json", "fifo", True),
    "fifo as v3 group zarr.json": (3, "zarr.json", "fifo", True),
    "fifo as v2 chunk": (2, "0/0.0", "fifo", False),
    "fifo as v2 .zarray": (2, "0/.zarray", "fifo", True),
    "fifo as v2 array .zattrs": (2, "0/.zattrs", "fifo", True),
    "fifo as v2 group .zattrs": (2, ".zattrs", "fifo", True),
    "fifo as v2 .zgroup": (2, ".zgroup", "fifo", True),
    "fifo as the folder of v3 chunks": (3, "0/c", "fifo", False),
    "socket as v3 chunk": (3, "0/c/0/0", "socket", False),
    "character device as v3 chunk": (3, "0/c/0/0", "device", False),
    "character device as v3 array zarr.json": (3, "0/zarr.json", "device", True),
}


@pytest.mark.parametrize("member", list(HANGS))
def test_nothing_in_a_zarr_folder_hangs(tmp_path, tiny_model, member):
    fmt, key, kind, header = HANGS[member]
    image = ome_zarr(tmp_path / "in" / "img.zarr", grey(), fmt=fmt)
    entry = replace(image / key, kind)
    what = {"fifo": r"is a FIFO \(named pipe\)", "socket": "is a socket", "device": "is a character device"}[kind]
    if key == "0/c":
        what = "is not a folder; expected the folder that holds 0"
    whole = member == "fifo as v3 chunk"  # one member through `cpsnake segment`, the others `normalize`
    args, outputs = segment(tmp_path, image, tiny_model) if whole else normalize(tmp_path, image)
    run_one(args, outputs, entry, what)
    if header:
        samples_run(tmp_path, image, entry, what)


# --- 2. paths stay inside --------------------------------------------------------------------------


def _escape(d: Path, how: str) -> tuple[Path, Path, str]:
    """An image ``in/img.zarr`` and, beside it, ``in/other.zarr`` (another image's array, not itself a Zarr
    group, so `cpsnake samples` lists one image) that ``how`` reaches."""
    import re

    other = ome_zarr(d / "in" / "other.zarr", grey(), fmt=3)
    (other / "zarr.json").rename(d / "outside.json")
    image = ome_zarr(d / "in" / "img.zarr", grey(), fmt=2 if how == "v2 .." else 3)
    datasets = re.escape("multiscales[0].datasets[0].path")
    outside = "a path that leads outside the OME-Zarr folder .*expected its files inside the folder"
    if how in ("..", "v2 .."):
        datasets_path(image, "../other.zarr/0")
        return image, image, datasets + r" '\.\./other\.zarr/0': it climbs out of the folder with '\.\.'; expected"
    if how == "absolute":
        datasets_path(image, str(other / "0"))
        return image, image, datasets + " '/.*: an absolute path; expected"  # a long path is cut short: '/tmp/...'...
    if how == "climb":
        datasets_path(image, "0/../../other.zarr/0")
        return image, image, datasets + " .*: it climbs out of the folder"
    if how == "dataset link":
        shutil.rmtree(image / "0")
        (image / "0").symlink_to(other / "0")
        return image, image, datasets + " '0': it leads outside the folder .*through a symbolic link"
    if how == "chunk link":
        chunk = image / "0" / "c" / "0" / "0"
        chunk.unlink()
        chunk.symlink_to(other / "0" / "c" / "0" / "0")
        return image, chunk, outside
    if how == "metadata link":
        (image / "zarr.json").rename(d / "img-zarr.json")
        (image / "zarr.json").symlink_to(d / "img-zarr.json")
        return image, image / "zarr.json", outside
    raise AssertionError(how)


ESCAPES = ["..", "absolute", "climb", "v2 ..", "dataset link", "chunk link", "metadata link"]


@pytest.mark.parametrize("member", ESCAPES)
def test_zarr_paths_stay_inside(tmp_path, tiny_model, member):
    image, entry, pattern = _escape(tmp_path, member)
    whole = member in ("..", "chunk link")  # through `cpsnake segment`; the others `normalize` (same reader)
    args, outputs = segment(tmp_path, image, tiny_model) if whole else normalize(tmp_path, image)
    run_one(args, outputs, entry, pattern)
    if member != "chunk link":  # found from the metadata: `cpsnake samples` refuses it too
        samples_run(tmp_path, image, entry, pattern)


def test_links_inside_the_folder_are_followed(tmp_path, capsys):
    """A chunk that is a symbolic link to another file of the same folder is read (cpsnake normalize)."""
    from hostile import in_process

    data = grey((64, 64))
    image = ome_zarr(tmp_path / "img.zarr", data, chunks=(32, 32))
    chunk = image / "0" / "c" / "1" / "1"
    (image / "spare").mkdir()
    chunk.rename(image / "spare" / "1-1")
    chunk.symlink_to(Path("..", "..", "..", "spare", "1-1"))
    run = in_process(capsys, "normalize", image, tmp_path / "n.tif", "--percentiles", "0", "100")
    assert run.rc == 0, run.stderr
    from cpsnake.io.inputs import open_regions

    with open_regions(image) as img:
        assert np.array_equal(img.read(0, 64, 0, 64)[0], data)


# --- 3. declared chunks count against the budget ---------------------------------------------------


def _tiff_tiles(d: Path) -> Path:
    """A 256 x 256 tiled TIFF whose TileWidth and TileLength tags are patched to 65520."""
    f = d / "in" / "tiles.tif"
    f.parent.mkdir()
    tifffile.imwrite(f, np.zeros((256, 256), np.uint8), tile=(256, 256), compression="zlib")
    raw = bytearray(f.read_bytes())
    with tifffile.TiffFile(f) as tif:
        for name in ("TileWidth", "TileLength"):
            tag = tif.pages[0].tags[name]
            assert tag.dtype in (3, 4)  # SHORT or LONG, stored in the entry itself
            raw[tag.valueoffset : tag.valueoffset + (2 if tag.dtype == 3 else 4)] = (
                struct.pack("<H", 65520) if tag.dtype == 3 else struct.pack("<I", 65520)
            )
    f.write_bytes(bytes(raw))
    return f


def _shard(d: Path) -> Path:
    image = ome_zarr(d / "in" / "shard.zarr", np.zeros((256, 256), np.uint8), chunks=(128, 128), shards=(256, 256))
    doc = metadata(image, "0/zarr.json")
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [SIDE, SIDE]
    doc["codecs"][0]["configuration"]["chunk_shape"] = [1000, 1000]
    set_metadata(image, "0/zarr.json", doc)
    return image


CHUNKS = {  # builder, extra options, the pattern of the line
    "v3 chunk 72000 x 72000": (
        lambda d: chunk_bomb(d / "in" / "bomb.zarr", 3),
        [],
        r"storage chunks of 72000 x 72000 = 5,184,000,000 samples .*--max-pixels N",
    ),
    "v2 chunk 72000 x 72000": (
        lambda d: chunk_bomb(d / "in" / "bomb.zarr", 2),
        [],
        r"storage chunks of 72000 x 72000 = 5,184,000,000 samples",
    ),
    "v3 shard 72000 x 72000": (_shard, [], r"storage chunks of 72000 x 72000 = 5,184,000,000 samples"),
    "chunks over --max-pixels": (
        lambda d: ome_zarr(d / "in" / "big.zarr", grey((64, 64)), chunks=(4096, 4096)),
        ["--max-pixels", "1000000"],
        r"4096 x 4096 = 16,777,216 samples .*1,000,000",
    ),
    "tiff tiles 65520 x 65520 by region": (
        _tiff_tiles,
        ["--block-size", "512"],
        r"storage chunks of 65520 x 65520 = 4,292,870,400 samples",
    ),
}


@pytest.mark.parametrize("member", list(CHUNKS))
def test_declared_chunks_count_against_the_budget(tmp_path, tiny_model, member):
    build, more, pattern = CHUNKS[member]
    image = build(tmp_path)
    assert sum(f.stat().st_size for f in [image, *image.rglob("*")] if f.is_file()) < 2**20  # tiny on disk
    args, outputs = segment(tmp_path, image, tiny_model, *more)
    run, _ = run_one(args, outputs, image, pattern)
    # segment holds torch and the model (about 0.9 GB) before it reads: a decoded chunk would add 4 GB
    assert run.rss_mb < RSS_LIMIT_MB + 512, run.rss_mb
    if image.is_dir():  # read whole (normalize) and by header (samples): the same line, far under 1 GB
        run, _ = run_one(["normalize", image, tmp_path / "n.tif", *more], [tmp_path / "n.tif"], image, pattern)
        assert run.rss_mb < RSS_LIMIT_MB / 2, run.rss_mb
        if not more:
            samples_run(tmp_path, image, image, pattern)


# --- 4. NaN and infinity -------------------------------------------------------------------------------


def _nan_zarr(d: Path, value=np.nan, fmt: int = 3) -> Path:
    data = RNG.random((300, 300)).astype(np.float32)
    data[250, 7] = value
    return ome_zarr(d / "in" / "nan.zarr", data, fmt=fmt, chunks=(128, 128))


def _nan_tiff(d: Path) -> Path:
    data = RNG.random((600, 700)).astype(np.float32)
    data[555, 3] = np.nan
    (d / "in").mkdir()
    f = d / "in" / "nan.tif"
    tifffile.imwrite(f, data, tile=(128, 128))
    return f


NANS = {  # builder, command ("segment" or "normalize"), options, the rows of the line
    "ome-zarr nan --low-high": (_nan_zarr, "segment", ["--low-high", "0", "1"], "rows 0-300, columns 0-300"),
    "ome-zarr nan percentiles": (_nan_zarr, "normalize", [], "rows 0-300, columns 0-300"),
    "ome-zarr v2 +inf": (lambda d: _nan_zarr(d, np.inf, 2), "normalize", [], "rows 0-300, columns 0-300"),
    "ome-zarr -inf in blocks": (
        lambda d: _nan_zarr(d, -np.inf),
        "segment",
        ["--block-size", "512"],
        r"rows \d+-\d+, columns 0-300",
    ),
    "tiled tiff nan by region --low-high": (
        _nan_tiff,
        "segment",
        ["--block-size", "512", "--low-high", "0", "1"],
        r"rows \d+-\d+, columns 0-700",
    ),
}


@pytest.mark.parametrize("member", list(NANS))
def test_nan_is_refused_by_region_reads(tmp_path, tiny_model, member):
    build, step, more, where = NANS[member]
    image = build(tmp_path)
    if step == "segment":
        args, outputs = segment(tmp_path, image, tiny_model, *more)
    else:
        args, outputs = [step, image, tmp_path / "n.tif", *more], [tmp_path / "n.tif", tmp_path / "n.json"]
    run_one(args, outputs, image, r"found 1 NaN or infinite pixel values in " + where + ".*Remove NaNs")


# --- 5. no noise after the line ------------------------------------------------------------------------


def _bad_tile(d: Path) -> Path:
    (d / "in").mkdir()
    f = d / "in" / "bad.tif"
    tifffile.imwrite(f, grey((1024, 1024)), tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(f) as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    raw = bytearray(f.read_bytes())
    raw[offset : offset + count] = b"\xff" * count
    f.write_bytes(bytes(raw))
    return f


def _bad_chunk(d: Path, fmt: int) -> Path:
    image = ome_zarr(d / "in" / "bad.zarr", grey((1024, 1024)), fmt=fmt, chunks=(128, 128))
    chunk = image / "0" / ("c/2/3" if fmt == 3 else "2.3")
    chunk.write_bytes(b"\xff" * chunk.stat().st_size)
    return image


NOISE = {
    "tiled tiff, one garbage tile": _bad_tile,
    "zarr v3, one garbage chunk": lambda d: _bad_chunk(d, 3),
    "zarr v2, one garbage chunk": lambda d: _bad_chunk(d, 2),
}


@pytest.mark.parametrize("member", list(NOISE))
def test_no_traceback_or_noise_after_a_corrupt_chunk(tmp_path, tiny_model, member):
    image = NOISE[member](tmp_path)
    args, outputs = segment(tmp_path, image, tiny_model, "--block-size", "512")
    run, line = run_one(
        args,
        outputs,
        image,
        r"found a chunk that cannot be decoded in rows \d+-\d+, columns .*"
        r"truncated or corrupt",
    )
    lines = run.stderr.splitlines()
    assert lines == [line, "cpsnake segment: 1 of 1 images failed"], run.stderr[-3000:]


# --- 6. zarr's errors are one complete line ----------------------------------------------------------


def _v3_array(image: Path, **change) -> Path:
    doc = metadata(image, "0/zarr.json")
    doc.update(change)
    set_metadata(image, "0/zarr.json", doc)
    return image


def _v2_array(image: Path, **change) -> Path:
    doc = metadata(image, "0/.zarray")
    doc.update(change)
    set_metadata(image, "0/.zarray", doc)
    return image


def _multiscale(image: Path, **change) -> Path:
    doc = metadata(image, "zarr.json")
    doc["attributes"]["ome"]["multiscales"][0].update(change)
    set_metadata(image, "zarr.json", doc)
    return image


def _v3(d):
    return ome_zarr(d / "in" / "img.zarr", grey(), fmt=3)


def _v2(d):
    return ome_zarr(d / "in" / "img.zarr", grey(), fmt=2)


def _text(image: Path, name: str, text: str) -> Path:
    (image / name).write_text(text)
    return image


LIBRARY = {  # builder -> (the entry the line names, the pattern of the line)
    "datasets path a number": (
        lambda d: (datasets_path(_v3(d), 0), d / "in" / "img.zarr")[1],
        r"datasets\[0\]\.path as a number; expected a relative path",
    ),
    "datasets not a list": (lambda d: _multiscale(_v3(d), datasets={"path": "0"}), r"found 0 pyramid level\(s\)"),
    "unknown v3 codec": (
        lambda d: _v3_array(_v3(d), codecs=[{"name": "bytes"}, {"name": "no-such-codec"}]),
        r"missing or unreadable \(.*\); expected the Zarr array .*write it again",
    ),
    "unknown v2 compressor": (
        lambda d: _v2_array(_v2(d), compressor={"id": "no-such-codec"}),
        r"missing or unreadable \(.*\); expected the Zarr array .*write it again",
    ),
    "object dtype v2": (lambda d: _v2_array(_v2(d), dtype="|O"), r"(unreadable|type object).*expected"),
    "string dtype v3": (
        lambda d: _v3_array(_v3(d), data_type="string", fill_value=""),
        r"(unreadable|pixels of type).*expected .*write",
    ),
    "array zarr.json not JSON": (
        lambda d: _text(_v3(d), "0/zarr.json", "{not json"),
        r"missing or unreadable.*expected the Zarr array",
    ),
    "group zarr.json not JSON": (
        lambda d: _text(_v3(d), "zarr.json", "{not json"),
        r"metadata that is not JSON .*expected OME-Zarr metadata; write",
    ),
    "group zarr.json a list": (lambda d: _text(_v3(d), "zarr.json", "[1, 2]"), r"found list metadata, expected"),
    "axes do not match the shape": (
        lambda d: _multiscale(_v3(d), axes=[{"name": n} for n in "cyx"]),
        r"found 3 axes in the metadata for an array of 2 dimensions; expected",
    ),
    "axis name a number": (
        lambda d: _multiscale(_v3(d), axes=[{"name": 5}, {"name": "x"}]),
        r"axes or coordinateTransformations that cannot be read .*expected NGFF",
    ),
    "axes a number": (
        lambda d: _multiscale(_v3(d), axes=5),
        r"axes or coordinateTransformations that cannot be read .*expected NGFF",
    ),
    "scale of strings": (
        lambda d: _multiscale(_v3(d), coordinateTransformations=[{"type": "scale", "scale": ["a", "b"]}]),
        r"cannot be read .*scale: a list of numbers",
    ),
    "chunk shape 0": (
        lambda d: _v3_array(_v3(d), chunk_grid={"name": "regular", "configuration": {"chunk_shape": [0, 128]}}),
        r"chunks of 0 x 128 for axes 'YX'; expected at least 1",
    ),
    "negative shape": (lambda d: _v3_array(_v3(d), shape=[-5, 128]), r"missing or unreadable.*expected"),
}


@pytest.mark.parametrize("member", list(LIBRARY))
def test_zarr_library_errors_are_one_line(tmp_path, tiny_model, member):
    build, pattern = LIBRARY[member]
    image = build(tmp_path)
    entry = image if not member.startswith("group zarr.json") else image / "zarr.json"
    line = samples_run(tmp_path, image, entry, pattern)
    assert "expected" in line and ("again" in line or "convert" in line), line
    assert "PosixPath" not in line and "unsupported operand" not in line, line
    if member == "datasets path a number":  # the same line from segment
        args, outputs = segment(tmp_path, image, tiny_model)
        run_one(args, outputs, entry, pattern)


# --- provenance --------------------------------------------------------------------------------------


def test_provenance_hash_of_a_folder_never_follows_links_or_opens_fifos(tmp_path):
    """The hash of an OME-Zarr folder holding a FIFO and a link to a file outside it: computed at once, and
    the same whatever the outside file holds (the link is hashed as a link, never followed)."""
    image = ome_zarr(tmp_path / "img.zarr", grey())
    (image / "1").mkdir()
    fifo(image / "1", "pipe")
    outside = tmp_path / "secret.txt"
    outside.write_text("one")
    (image / "1" / "link").symlink_to(outside)
    code = "import sys; from cpsnake.run.provenance import folder_sha256; print(folder_sha256(sys.argv[1]))"

    def digest() -> str:
        r = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    first = digest()
    outside.write_text("two")
    assert digest() == first
    (image / "1" / "link").unlink()
    (image / "1" / "link").symlink_to(tmp_path / "elsewhere")
    assert digest() != first  # the link's target is part of the hash
