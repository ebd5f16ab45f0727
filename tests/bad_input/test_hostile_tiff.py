"""Hostile and broken TIFF / PNG / JPEG files read whole or by header.

One test per class of problem, parametrized over its members:

1. ``test_broken_metadata_is_set_aside`` -- a TIFF whose ImageJ, OME or tifffile metadata are broken (not
   well-formed, claiming planes the file does not hold, naming files outside its folder or a FIFO, unknown
   axes) but whose one page is readable: every entry point (``cpsnake normalize``, ``read_image``,
   ``inputs.open_regions``, ``inputs.read_header``) reads the page's pixels with one warning naming the
   metadata; ``test_broken_metadata_segments_from_its_pixels`` runs ``cpsnake segment`` whole and by region;
   ``test_garbage_calibration_is_one_warning``: a unit, Z step or frame interval that is garbage is set aside
   with one warning.
2. ``test_broken_metadata_over_several_pages_is_one_line`` -- the same metadata over several pages, whose order
   only the metadata could tell: one error line saying the metadata, not the data, are broken, and the fix.
3. ``test_tile_bombs_are_refused_from_the_header`` -- a 256 x 256 TIFF declaring 72000 x 72000 tiles, as an image,
   labels, flows and a normalized image: one line, peak memory under 1 GB.
4. ``test_no_file_bytes_in_messages`` -- files whose first bytes (or metadata, or ROI entries, or CSV header) are
   a secret: the secret appears in no message, table or log.
5. ``test_non_finite_values_are_refused_by_every_whole_reader`` -- NaN and infinities in images of every float
   type, stacks, OME-TIFF, normalized images, flows, labels and ROI coordinates; and in size models
   (``test_size_models_hold_finite_numbers``).
6. ``test_fuzzed_files_raise_only_cpsnake_errors`` -- 432 seeded mutants (bits flipped, runs overwritten, cut
   short, TIFF tags, types, counts and values replaced) of tiny valid files of every kind, read by every reader in a
   child process with a data-segment
   cap: each read returns or raises CpsnakeError, nothing else.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hostile import (
    RSS_LIMIT_MB,
    assert_no_outputs,
    assert_one_error_line,
    cpsnake,
    fifo,
    in_process,
    new_paths,
    normalized_image,
    oval_roi,
    polygon_roi,
    roi_zip,
    small_image,
    write_tif,
)

from cpsnake.errors import CpsnakeError, CpsnakeWarning
from cpsnake.io import inputs
from cpsnake.io.flows import write_flows
from cpsnake.io.inputs import read_image
from cpsnake.io.labels import write_labels
from cpsnake.run import samples

PAGE = np.random.default_rng(25).integers(100, 4000, (64, 64)).astype(np.uint16)
IMAGEJ = "ImageJ=1.53t\n{}\n"


def _described(path: Path, description: str, data: np.ndarray = PAGE) -> Path:
    """``data`` (one page, or one page per first-axis entry) with ``description`` as its only ImageDescription."""
    tifffile.imwrite(path, data, description=description, metadata=None, photometric="minisblack")
    return path


def _ome_xml(d: Path, shape=(64, 64), axes="YX") -> str:
    """The OME-XML tifffile writes for an image of ``shape``."""
    f = write_tif(d / "_model.ome.tif", np.zeros(shape, np.uint16), ome=True, metadata={"axes": axes})
    with tifffile.TiffFile(f) as tif:
        xml = tif.pages.first.description
    f.unlink()
    return xml


def _ome(change):
    def build(d: Path, data: np.ndarray = PAGE) -> Path:
        xml = _ome_xml(d, data.shape, "YX" if data.ndim == 2 else "CYX")
        return _described(d / "bad.ome.tif", change(d, xml), data)

    return build


def _ome_file_name(name: str):
    def change(d: Path, xml: str) -> str:
        return xml.replace('PlaneCount="1"/>', f'PlaneCount="1"><UUID FileName="{name}">urn:uuid:0</UUID></TiffData>')

    return change


def _other_image(d: Path) -> None:
    (d.parent / "other").mkdir(exist_ok=True)
    write_tif(d.parent / "other" / "o.ome.tif", np.zeros((64, 64), np.uint16), ome=True)


def _ome_outside(d: Path, xml: str) -> str:
    _other_image(d)
    return _ome_file_name("../other/o.ome.tif")(d, xml)


def _ome_absolute(d: Path, xml: str) -> str:
    _other_image(d)
    return _ome_file_name(str(d.parent / "other" / "o.ome.tif"))(d, xml)


def _ome_fifo(d: Path, xml: str) -> str:
    fifo(d, "pipe.ome.tif")
    return _ome_file_name("pipe.ome.tif")(d, xml)


def _imagej(text: str):
    return lambda d, data=PAGE: _described(d / "bad.tif", IMAGEJ.format(text), data)


def _shaped(text: str):
    return lambda d, data=PAGE: _described(d / "bad.tif", text, data)


BROKEN = {  # member: (builder, the metadata's name in the warning)
    "imagej 5 channels x 4 slices on one page": (_imagej("images=20\nchannels=5\nslices=4\nhyperstack=true"), "ImageJ"),
    "imagej images=1e9": (_imagej("images=1000000000\nslices=1000000000"), "ImageJ"),
    "imagej channels not a number": (_imagej("images=5\nchannels=x"), "ImageJ"),
    "imagej negative frames": (_imagej("images=3\nframes=-3"), "ImageJ"),
    "imagej unknown order": (_imagej("images=4\nchannels=2\nslices=2\norder=qqq"), "ImageJ"),
    "ome-xml not well-formed": (_ome(lambda d, x: x.replace("<Pixels", "<<ixels", 1)), "OME-XML"),
    "ome 5 channels on one page": (_ome(lambda d, x: x.replace('SizeC="1"', 'SizeC="5"', 1)), "OME-XML"),
    "ome unknown dimension order": (
        _ome(lambda d, x: x.replace('DimensionOrder="XYCZT"', 'DimensionOrder="QQQQQ"')),
        "OME-XML",
    ),
    "ome size x beyond the page": (_ome(lambda d, x: x.replace('SizeX="64"', 'SizeX="99"', 1)), "OME-XML"),
    "ome names a file outside its folder": (_ome(_ome_outside), "OME-XML"),
    "ome names a file by absolute path": (_ome(_ome_absolute), "OME-XML"),
    "ome names a FIFO beside it": (_ome(_ome_fifo), "OME-XML"),
    "shaped description not JSON": (_shaped('{"shape": [64, 64'), "tifffile shape"),
    "shaped shape not numbers": (_shaped('{"shape": "nonsense"}'), "tifffile shape"),
    "shaped axes do not match the shape": (_shaped('{"shape": [64, 64], "axes": "YXZ"}'), "tifffile shape"),
    "shaped axes without Y and X": (_shaped('{"shape": [64, 64], "axes": "ZQ"}'), "tifffile shape"),
    "shaped unknown axes": (_shaped('{"shape": [64, 64], "axes": "!@"}'), "tifffile shape"),
    "shaped declares 1e12 x 64 x 64": (_shaped('{"shape": [1000000, 1000000, 64, 64]}'), "tifffile shape"),
    "shaped declares 20 planes on one page": (_shaped('{"shape": [5, 4, 64, 64]}'), "tifffile shape"),
}


def _one_warning(caught, path: Path, name: str) -> str:
    notes = [str(w.message) for w in caught if issubclass(w.category, CpsnakeWarning)]
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"{path}: found {name} metadata that "), notes[0]
    assert "read the pixels as the file stores them" in notes[0] and "Image > Properties" in notes[0], notes[0]
    return notes[0]


@pytest.mark.parametrize("member", list(BROKEN))
def test_broken_metadata_is_set_aside(tmp_path, member):
    build, name = BROKEN[member]
    d = tmp_path / "in"
    d.mkdir()
    bad = build(d)
    good = write_tif(tmp_path / "good.tif", PAGE)
    run = cpsnake("normalize", bad, tmp_path / "bad_n.tif", timeout=60)  # a child: the FIFO must not block it
    assert run.rc == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cpsnake normalize: warning: {bad}: found {name} metadata"), lines
    assert "truncated or corrupt" not in run.stderr
    assert cpsnake("normalize", good, tmp_path / "good_n.tif").rc == 0
    assert np.array_equal(tifffile.imread(tmp_path / "bad_n.tif"), tifffile.imread(tmp_path / "good_n.tif"))

    # every other entry point that reads a TIFF's header or pixels, in-process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, meta = read_image(bad)
    _one_warning(caught, bad, name)
    assert np.array_equal(data, PAGE[None]) and meta["axes"] == "YX" and meta["stack_axes"] == ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with inputs.open_regions(bad) as img:
            assert np.array_equal(img.read(0, 64, 0, 64), PAGE[None]) and img.stack_axes == ""
    _one_warning(caught, bad, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head = inputs.read_header(bad)
    _one_warning(caught, bad, name)
    assert head == {"height": 64, "width": 64, "channels_in_file": 1, "planes": 1, "dtype": "uint16", "pixels": 4096}


@pytest.mark.parametrize("blocks", ["0", "512"])
def test_broken_metadata_segments_from_its_pixels(tmp_path, tiny_model, blocks):
    """The issue's file (ImageJ: 5 channels x 4 slices on one page) is segmented again, whole and by region."""
    bad = _imagej("images=20\nchannels=5\nslices=4\nhyperstack=true")(tmp_path)
    run = cpsnake(
        "segment",
        bad,
        "--out",
        tmp_path / "o",
        "--model",
        tiny_model,
        "--block-size",
        blocks,
        "--diameter",
        "17",
        timeout=300,
    )
    assert run.rc == 0, run.stderr
    notes = [x for x in run.stderr.splitlines() if x.startswith("cpsnake segment: warning: ")]
    assert len(notes) == 1 and "found ImageJ metadata that do not match the file's pages" in notes[0], run.stderr
    assert "error" not in run.stderr
    assert tifffile.imread(tmp_path / "o" / "masks" / "bad.tif").shape == (64, 64)


STACK = np.random.default_rng(3).integers(100, 4000, (3, 32, 32)).astype(np.uint16)


def _ij_meta(axes: str, **meta):
    return lambda d: write_tif(
        d / "cal.tif",
        STACK if len(axes) == 3 else PAGE,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": axes, **meta},
    )


def _ome_meta(old: str, new: str, axes: str = "ZYX"):
    def build(d):
        xml = _ome_xml(d, STACK.shape, axes).replace(old, new, 1)
        assert new in xml
        return _described(d / "cal.ome.tif", xml, STACK)

    return build


GARBAGE_CALIBRATION = {  # the pixels read as stored; the unusable value set aside with one warning
    "imagej unit with control characters": (_ij_meta("YX", unit="\x01\x02"), "a length unit that is not a short name"),
    "imagej unit of 200 characters": (_ij_meta("YX", unit="u" * 200), "a length unit that is not a short name"),
    "imagej spacing a word": (_ij_meta("ZYX", spacing="garbage"), "a Z step (voxel depth) that is not a finite"),
    "imagej spacing -1": (_ij_meta("ZYX", spacing=-1.0), "a Z step (voxel depth) that is not a finite"),
    "imagej finterval NaN": (_ij_meta("TYX", finterval=float("nan")), "a frame interval that is not a finite"),
    "imagej tunit with control characters": (
        _ij_meta("TYX", finterval=2.0, tunit="\x07"),
        "a frame interval that is not a finite positive number of a named unit",
    ),
    "ome PhysicalSizeZ a word": (_ome_meta("<Pixels ", '<Pixels PhysicalSizeZ="deep" '), "a Z step (voxel depth)"),
    "ome PhysicalSizeXUnit of 200 characters": (
        _ome_meta("<Pixels ", f'<Pixels PhysicalSizeX="0.5" PhysicalSizeXUnit="{"u" * 200}" '),
        "a length unit that is not a short name in the OME metadata",
    ),
}


@pytest.mark.parametrize("member", list(GARBAGE_CALIBRATION))
def test_garbage_calibration_is_one_warning(tmp_path, capsys, member):
    build, phrase = GARBAGE_CALIBRATION[member]
    bad = build(tmp_path)
    run = in_process(capsys, "normalize", bad, tmp_path / "n.tif")
    assert run.rc == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cpsnake normalize: warning: {bad}: found {phrase}"), lines
    assert "(Image > Properties" in lines[0] and "u" * 33 not in lines[0] and "\x01" not in lines[0]
    assert tifffile.imread(tmp_path / "n.tif").shape[-2:] == tifffile.imread(bad).shape[-2:]


# --- 2. metadata over several pages -------------------------------------------------------------------

PAGES = np.stack([PAGE, PAGE[::-1], PAGE[:, ::-1]])
SEVERAL = {
    "imagej 5 channels x 4 slices on 3 pages": _imagej("images=20\nchannels=5\nslices=4\nhyperstack=true"),
    "imagej channels not a number on 3 pages": _imagej("images=3\nchannels=x"),
    "ome 5 channels on 3 pages": _ome(lambda d, x: x.replace('SizeC="3"', 'SizeC="5"', 1)),
    "ome not well-formed on 3 pages": _ome(lambda d, x: x.replace("<Pixels", "<<ixels", 1)),
    "shaped 7 planes on 3 pages": _shaped('{"shape": [7, 64, 64]}'),
}
LAYOUT = (
    r"over 3 pages of 64 x 64 whose order \(channels, slices, frames\) only the metadata can tell; .*the "
    r"metadata, not the pixel data, are broken: open the file in Fiji, .*Image > Properties .*File > Save As > Tiff"
)


@pytest.mark.parametrize("member", list(SEVERAL))
def test_broken_metadata_over_several_pages_is_one_line(tmp_path, capsys, member):
    bad = SEVERAL[member](tmp_path, PAGES)
    out = tmp_path / "n.tif"
    assert_one_error_line(in_process(capsys, "normalize", bad, out), "normalize", bad, pattern=LAYOUT)
    assert_no_outputs(out, tmp_path / "n.json")
    with pytest.raises(CpsnakeError, match=LAYOUT):
        inputs.open_regions(bad)
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text(f"sample\tpath\nbad\t{bad}\n")
    run = in_process(capsys, "samples", "--sheet", sheet, "--out", tmp_path / "t.tsv")
    assert run.rc == 0 and "warning" not in run.stderr
    (line,) = [x for x in run.stderr.splitlines() if ": error: " in x]
    assert str(bad) in line and "the metadata, not the pixel data, are broken" in line
    assert samples.read_table(tmp_path / "t.tsv")[0].status == "failed"


# --- 3. tile bombs ------------------------------------------------------------------------------------


def _tile_bomb(path: Path, data: np.ndarray, **kwargs) -> Path:
    """``data`` (Y, X last) in one zlib tile of 256 x 256 whose header then declares tiles of 72000 x 72000."""
    import struct

    write_tif(path, data, tile=(256, 256), compression="zlib", **kwargs)
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        at = [tags[t].valueoffset for t in (322, 323)]  # TileWidth, TileLength
        assert all(tags[t].dtype == 4 for t in (322, 323))  # LONG: room for 72000
    raw = bytearray(path.read_bytes())
    for offset in at:
        struct.pack_into("<I", raw, offset, 72000)
    path.write_bytes(bytes(raw))
    return path


def _b_image(d, m):
    f = _tile_bomb(d / "bomb.tif", np.zeros((256, 256), np.uint8))
    return ["normalize", f, d / "out.tif"], f


def _b_labels(d, m):
    f = _tile_bomb(d / "labels.tif", np.ones((256, 256), np.uint16))
    return ["measure", f, small_image(d, shape=(256, 256)), d / "m.csv"], f


def _b_flows(d, m):
    f = _tile_bomb(d / "flows.tif", np.zeros((3, 256, 256), np.float32), photometric="minisblack")
    return ["reconstruct", f, d / "labels.tif"], f


def _b_normalized(d, m):
    f = _tile_bomb(d / "norm.tif", np.zeros((1, 256, 256), np.float32), photometric="minisblack")
    return ["infer", f, d / "flows.tif", "--model", m], f


TILE_BOMBS = {"image": _b_image, "labels": _b_labels, "flows": _b_flows, "normalized image": _b_normalized}


@pytest.mark.parametrize("member", list(TILE_BOMBS))
def test_tile_bombs_are_refused_from_the_header(tmp_path, tiny_model, member):
    args, bad = TILE_BOMBS[member](tmp_path, tiny_model)
    outputs = new_paths(args)
    run = cpsnake(*args)
    assert run.rss_mb < RSS_LIMIT_MB, (run.rss_mb, run.stderr[-2000:])
    assert_one_error_line(
        run,
        args[0],
        bad,
        pattern=r"found TIFF tiles of 72000 x 72000 = 5,184,000,000 samples "
        r"\(image [\dx ]+\), each decoded whole; expected TIFF tiles of 1 to [\d,]+ samples; write "
        r"the image again with smaller chunks or tiles .*--max-pixels N",
    )
    assert_no_outputs(*outputs)


# --- 4. no file bytes in messages ---------------------------------------------------------------------

SECRET = "Zq7x-TOPSECRET-hunter2"
SECRET_PARTS = ("Zq7x", "TOPSECRET", "hunter2")  # its first 4 bytes too: tifffile quotes a TIFF header's 4 bytes


def _s_text_image(d, m):
    f = d / "SECRET.tif"
    f.write_text(SECRET + "\n")
    return ["normalize", f, d / "o.tif"], f


def _s_sheet_row(d, m):  # the issue's case: a sample sheet row pointing at a file that is not an image
    f = d / "shadow"
    f.write_text(SECRET + ":19000:0:99999:7:::\n")
    (d / "sheet.tsv").write_text(f"sample\tpath\nleak\t{f}\n")
    return ["samples", "--sheet", d / "sheet.tsv", "--out", d / "t.tsv", "--logs", d / "logs"], f


def _s_labels(d, m):
    f = d / "labels.tif"
    f.write_text(SECRET)
    return ["measure", f, small_image(d), d / "m.csv"], f


def _s_flows(d, m):
    f = d / "flows.tif"
    f.write_text(SECRET)
    return ["reconstruct", f, d / "labels.tif"], f


def _s_tiff_header(d, m):  # a TIFF signature followed by the secret: tifffile's own messages
    f = d / "head.tif"
    f.write_bytes(b"II*\x00" + SECRET.encode() * 4)
    return ["normalize", f, d / "o.tif"], f


def _s_png_header(d, m):
    f = d / "head.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + SECRET.encode() * 4)
    return ["normalize", f, d / "o.tif"], f


def _s_jpeg_header(d, m):
    f = d / "head.jpg"
    f.write_bytes(b"\xff\xd8\xff" + SECRET.encode() * 4)
    return ["normalize", f, d / "o.tif"], f


def _s_imagej_unit(d, m):  # a "unit" that is the secret: calibration set aside without quoting it
    f = write_tif(d / "unit.tif", PAGE, imagej=True, resolution=(2.0, 2.0), metadata={"unit": SECRET * 3})
    return ["normalize", f, d / "o.tif"], f


def _s_ome_size(d, m):
    xml = _ome_xml(d).replace("<Pixels ", f'<Pixels PhysicalSizeX="{SECRET}" ', 1)
    f = _described(d / "size.ome.tif", xml)
    return ["normalize", f, d / "o.tif"], f


def _s_ome_file_name(d, m):
    f = _ome(_ome_file_name(f"../{SECRET}/x.ome.tif"))(d)
    return ["normalize", f, d / "o.tif"], f


def _s_imagej_channels(d, m):
    f = _imagej(f"images=3\nchannels={SECRET}")(d, PAGES)
    return ["normalize", f, d / "o.tif"], f


def _s_roi_entry(d, m):
    f = roi_zip(d / "RoiSet.zip", {"0001.roi": oval_roi(2, 2, 10, 10), "0002.roi": SECRET.encode()})
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f


def _s_roi_header(d, m):
    f = roi_zip(d / "RoiSet.zip", {"0001.roi": b"Iout" + SECRET.encode() * 3})
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f


def _s_index_csv(d, m):
    for sub in ("pred", "true"):
        (d / sub).mkdir()
        write_tif(d / sub / "a.tif", np.ones((16, 16), np.uint16))
    f = d / "index.csv"
    f.write_text(f"root:{SECRET}:19000:0\n")
    return ["evaluate", d / "pred", d / "true", "--index", f, "--group-by", "plate", "--out", d / "t.csv"], f


def _s_weights(d, m):
    f = d / "weights.pt"
    f.write_text(SECRET * 4)
    return ["infer", normalized_image(d), d / "flows.tif", "--model", f], f


SECRETS = {
    "text named .tif": _s_text_image,
    "sample sheet row": _s_sheet_row,
    "text as labels": _s_labels,
    "text as flows": _s_flows,
    "TIFF signature then text": _s_tiff_header,
    "PNG signature then text": _s_png_header,
    "JPEG signature then text": _s_jpeg_header,
    "ImageJ unit": _s_imagej_unit,
    "OME PhysicalSizeX": _s_ome_size,
    "OME FileName": _s_ome_file_name,
    "ImageJ channels": _s_imagej_channels,
    "ROI zip entry": _s_roi_entry,
    "ROI header": _s_roi_header,
    "evaluate index header": _s_index_csv,
    "weights file": _s_weights,
}


@pytest.mark.parametrize("member", list(SECRETS))
def test_no_file_bytes_in_messages(tmp_path, capsys, tiny_model, member):
    args, bad = SECRETS[member](tmp_path, tiny_model)
    run = in_process(capsys, *args)
    assert str(bad) in run.stderr  # the file is named ...
    for part in SECRET_PARTS:  # ... its bytes are not, here or in any file the command wrote
        assert part not in run.stderr, run.stderr
        for f in tmp_path.rglob("*"):
            if f.is_file() and f.suffix in ("", ".tsv", ".csv", ".log", ".json") and f.name != bad.name:
                assert part not in f.read_text(errors="replace"), f
    if args[0] == "samples":
        (row,) = samples.read_table(tmp_path / "t.tsv")
        assert row.status == "failed" and "not an image (found text, not a TIFF, PNG or JPEG)" in row.reason
        assert (tmp_path / "logs" / "leak.log").read_text().startswith(f"cpsnake samples: error: {bad}: not an image")


# --- 5. NaN and infinite values -------------------------------------------------------------------------


def _nan_image(value, dtype, **kwargs):
    def build(d, m):
        a = np.ones((32, 32), dtype) if "shape" not in kwargs else np.ones(kwargs.pop("shape"), dtype)
        a.flat[-5] = value
        f = write_tif(d / "img.tif", a, **kwargs)
        return ["normalize", f, d / "o.tif"], f

    return build


def _nan_normalized(d, m):
    a = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    a[0, 3, 4] = np.nan
    f = write_tif(d / "norm.tif", a, imagej=True, metadata={"axes": "CYX"})
    return ["infer", f, d / "flows.tif", "--model", m], f


def _nan_flows(d, m):
    a = np.zeros((3, 32, 32), np.float32)
    a[2, 5, 5] = np.inf
    f = d / "flows.tif"
    write_flows(f, a)
    return ["reconstruct", f, d / "labels.tif"], f


def _nan_labels(d, m):
    a = np.zeros((32, 32), np.float32)
    a[4:9, 4:9] = 1
    a[20, 20] = np.nan
    return ["measure", write_tif(d / "labels.tif", a), small_image(d, shape=(32, 32)), d / "m.csv"], d / "labels.tif"


def _nan_roi(d, m):
    f = roi_zip(d / "rois.zip", {"0001.roi": polygon_roi([[2, 2], [20, 2], [np.inf, 20], [2, 20]])})
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f


NON_FINITE = {
    "float32 NaN": _nan_image(np.nan, np.float32),
    "float64 +inf": _nan_image(np.inf, np.float64),
    "float16 -inf": _nan_image(-np.inf, np.float16),
    "float32 RGB NaN": _nan_image(np.nan, np.float32, shape=(32, 32, 3), photometric="rgb"),
    "ImageJ Z stack, NaN in the last plane": _nan_image(
        np.nan, np.float32, shape=(4, 32, 32), imagej=True, metadata={"axes": "ZYX"}
    ),
    "OME-TIFF channels -inf": _nan_image(-np.inf, np.float32, shape=(2, 32, 32), ome=True, metadata={"axes": "CYX"}),
    "tiled float32 NaN": _nan_image(np.nan, np.float32, tile=(16, 16), compression="zlib"),
    "normalized image NaN": _nan_normalized,
    "flows +inf": _nan_flows,
    "labels NaN": _nan_labels,
    "ROI coordinate inf": _nan_roi,
}


@pytest.mark.parametrize("member", list(NON_FINITE))
def test_non_finite_values_are_refused_by_every_whole_reader(tmp_path, capsys, tiny_model, member):
    args, bad = NON_FINITE[member](tmp_path, tiny_model)
    outputs = new_paths(args)
    run = in_process(capsys, *args)
    assert_one_error_line(run, args[0], bad, pattern=r"NaN or infinite")
    assert_no_outputs(*outputs)


SIZE_MODELS = {  # cellpose's size_<model>.npy: a dict saved as a 0-d object array
    "A NaN": ({"A": np.array([np.nan, 1.0]), "smean": np.zeros(2), "ymean": 0.5, "diam_mean": 17.0}, "NaN or infinite"),
    "smean inf": (
        {"A": np.ones(2), "smean": np.array([0.0, np.inf]), "ymean": 0.5, "diam_mean": 17.0},
        "NaN or infinite",
    ),
    "diam_mean inf": ({"A": np.ones(2), "smean": np.zeros(2), "ymean": 0.5, "diam_mean": np.inf}, "NaN or infinite"),
    "ymean a word": ({"A": np.ones(2), "smean": np.zeros(2), "ymean": "Zq7x", "diam_mean": 17.0}, "not numbers"),
    "keys of two types": ({"A": 1, 3: 4, "Zq7x": 5}, r"found a dict of 3 keys, expected a dict with A"),
}


@pytest.mark.parametrize("member", list(SIZE_MODELS))
def test_size_models_hold_finite_numbers(tmp_path, member):
    from cpsnake.engine import size

    obj, pattern = SIZE_MODELS[member]
    f = tmp_path / "size_m.npy"
    np.save(f, np.array(obj, dtype=object), allow_pickle=True)
    with pytest.raises(CpsnakeError, match=pattern) as caught:
        size.read_size_model(f)
    assert str(f) in str(caught.value) and "Zq7x" not in str(caught.value)


# --- 6. fuzzed files ---------------------------------------------------------------------------------

FUZZ_SEED = 25
MUTANTS_PER_FILE = 36
FUZZ_DATA_LIMIT = 3 * 2**30  # a mutant that declares a huge size must fail on the header check, not allocate
FUZZ_CHILD = r"""
import json, logging, resource, sys, warnings
limit, folder = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
from pathlib import Path
from cpsnake.steps import infer
from cpsnake.io import flows, inputs, labels
from cpsnake.errors import CpsnakeError

def region(p):
    with inputs.open_regions(p) as img:
        img.read(0, img.shape[1], 0, img.shape[2])

READERS = {"read_image": inputs.read_image, "read_labels": labels.read_labels, "read_flows": flows.read_flows,
           "read_normalized": infer.read_normalized, "read_header": inputs.read_header, "region": region}
TIFF_ONLY = ("read_labels", "read_flows", "read_normalized", "region")
for p in sorted(Path(folder).iterdir()):
    for name, read in READERS.items():
        if name in TIFF_ONLY and not p.name.startswith("tif"):
            continue
        print(json.dumps({"file": p.name, "reader": name, "start": True}), flush=True)
        try:
            read(p)
            kind = "ok"
        except CpsnakeError:
            kind = "CpsnakeError"
        except BaseException as exc:
            kind = f"{type(exc).__name__}: {exc}"[:300]
        print(json.dumps({"file": p.name, "reader": name, "kind": kind}), flush=True)
"""


def _seeds(d: Path) -> dict[str, bytes]:
    """Tiny valid files of every kind the readers take (names starting with ``tif`` are TIFFs)."""
    from PIL import Image

    rng = np.random.default_rng(FUZZ_SEED)
    grey = rng.integers(0, 4000, (24, 20)).astype(np.uint16)
    rgb = rng.integers(0, 255, (24, 20, 3)).astype(np.uint8)
    made = {
        "tif_grey": lambda f: write_tif(f, grey),
        "tif_rgb": lambda f: write_tif(f, rgb, photometric="rgb"),
        "tif_channels": lambda f: write_tif(f, np.stack([grey] * 3), imagej=True, metadata={"axes": "CYX"}),
        "tif_hyperstack": lambda f: write_tif(f, np.stack([[grey] * 2] * 3), imagej=True, metadata={"axes": "ZCYX"}),
        "tif_ome": lambda f: write_tif(
            f, np.stack([grey] * 2), ome=True, metadata={"axes": "CYX"}, resolution=(2.0, 2.0)
        ),
        "tif_tiled": lambda f: write_tif(f, np.tile(grey, (2, 2)), tile=(16, 16), compression="zlib"),
        "tif_labels": lambda f: write_labels(f, (grey > 2000).astype(np.uint16)),
        "tif_flows": lambda f: write_flows(f, rng.standard_normal((3, 24, 20)).astype(np.float32), network_scale=1.0),
        "tif_normalized": lambda f: write_tif(
            f, rng.random((1, 24, 20), dtype=np.float32), imagej=True, metadata={"axes": "CYX"}
        ),
        "png8": lambda f: Image.fromarray(rgb).save(f, format="PNG"),
        "png16": lambda f: Image.fromarray(grey).save(f, format="PNG"),
        "jpeg": lambda f: Image.fromarray(rgb).save(f, format="JPEG"),
    }
    out = {}
    for name, write in made.items():
        f = d / f"{name}.img"
        write(f)
        out[name] = f.read_bytes()
        f.unlink()
    return out


def _ifd_entries(raw: bytes) -> list[int]:
    """Offsets of the 12-byte IFD entries of a little-endian classic TIFF (what tifffile writes for the seeds)."""
    import struct

    out: list[int] = []
    offset = struct.unpack_from("<I", raw, 4)[0]
    while offset and offset + 2 <= len(raw) and len(out) < 400:
        n = struct.unpack_from("<H", raw, offset)[0]
        out += [offset + 2 + 12 * i for i in range(n) if offset + 14 + 12 * i <= len(raw)]
        nxt = offset + 2 + 12 * n
        offset = struct.unpack_from("<I", raw, nxt)[0] if nxt + 4 <= len(raw) else 0
    return out


TAG_VALUES = (0, 1, 2, 3, 7, 255, 65535, 72000, 2**31 - 1, 2**32 - 1)
TAGS = (256, 257, 258, 259, 262, 270, 273, 277, 278, 279, 284, 322, 323, 324, 325, 338, 339, 530)


def _mutate(raw: bytes, rnd: random.Random) -> bytes:
    """One seeded mutation: bits flipped, a run overwritten (0x00, 0xFF or random), the file cut short, or (TIFF)
    an IFD entry's tag, type, count or value replaced (sizes, offsets, codecs); byte mutations aim half the time
    at the first 512 bytes, where headers, IFDs and descriptions start."""
    import struct

    b = bytearray(raw)
    span = min(len(b), 512) if rnd.random() < 0.5 else len(b)
    entries = _ifd_entries(raw) if raw[:4] == b"II*\x00" else []
    kind = rnd.choice(["flip", "run", "cut"] + ["entry"] * (3 if entries else 0))
    if kind == "flip":
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(span)
            b[i] ^= 1 << rnd.randrange(8)
    elif kind == "run":
        i = rnd.randrange(span)
        n = rnd.choice([1, 2, 4, 8])
        fill = rnd.choice([b"\x00", b"\xff", None])
        b[i : i + n] = bytes(rnd.randrange(256) for _ in range(n)) if fill is None else fill * n
    elif kind == "cut":
        b = b[: rnd.randrange(1, len(b))]
    else:
        for _ in range(rnd.randint(1, 3)):
            e = rnd.choice(entries)
            field = rnd.choice(["tag", "type", "count", "value", "value"])
            if field == "tag":
                struct.pack_into("<H", b, e, rnd.choice(TAGS))
            elif field == "type":
                struct.pack_into("<H", b, e + 2, rnd.choice([1, 2, 3, 4, 5, 7, 11, 12, 16, 17, 99]))
            else:
                struct.pack_into("<I", b, e + (4 if field == "count" else 8), rnd.choice(TAG_VALUES))
    return bytes(b)


def test_fuzzed_files_raise_only_cpsnake_errors(tmp_path):
    rnd = random.Random(FUZZ_SEED)
    folder = tmp_path / "mutants"
    folder.mkdir()
    for name, raw in _seeds(tmp_path).items():
        for k in range(MUTANTS_PER_FILE):
            (folder / f"{name}_{k:02d}").write_bytes(_mutate(raw, rnd))
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ_CHILD, str(FUZZ_DATA_LIMIT), str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 0, (events[-1:], proc.stderr[-2000:])  # a crash names the read that was running
    results = [e for e in events if "kind" in e]
    assert len(results) >= 12 * MUTANTS_PER_FILE * 2
    bad = [e for e in results if e["kind"] not in ("ok", "CpsnakeError")]
    assert not bad, bad[:20]
    refused = sum(e["kind"] == "CpsnakeError" for e in results)
    assert len(results) // 4 < refused < len(results)  # the mutants reach the readers' error paths, and not only them
