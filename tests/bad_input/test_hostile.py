"""Hostile and broken input: no crash, no hang, no memory blow-up, no silent garbage, complete messages.

One test per class of problem, parametrized over its members:

1. ``test_bombs_are_refused_before_allocation`` -- files that declare far more than they hold, or whose
   compressed data expand far beyond their header (TIFF, PNG, JPEG, a TIFF tile holding a PNG, flows,
   labels, normalized images, weights, a --diameter, ROIs): refused (or, for ROIs, clipped) with a peak
   resident memory under 1 GB, measured in a fresh helper process.
2. ``test_nothing_hangs`` -- FIFOs, devices and sockets given as any input, and a 100000 x 2 image.
3. ``test_no_tracebacks`` -- zip entries that are encrypted, compressed with a method Python lacks, or
   corrupt; label ids of several billion in every step that reads labels.
4. ``test_no_silent_garbage`` -- bad pixel sizes, NaN/Inf weights, two inputs with one output name, NaN
   ROI coordinates, complex data, values beyond float32's exact range.
5. ``test_every_error_line_is_complete`` -- each message names the file (the zip and the entry for
   ROIs), what was found, what was expected and the fix; warnings do not leak before the error.
6. ``test_valid_unusual_files_keep_working`` -- BigTIFF, float16, int8, 7 channels without axes, a
   newline in a file name.

Bomb files are built here, tiny on disk, with the tools of ``tests/hostile.py``. Commands that could hang
or allocate run in a child process with a timeout and a data-segment limit (``RLIMIT_DATA``, 4 GiB) so that a
regression fails the test instead of swapping the machine; the others run in-process.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hostile import (  # noqa: F401  (zero_stream is a fixture)
    BOMB_SIDE,
    GREY16,
    RSS_LIMIT_MB,
    assert_no_outputs,
    assert_one_error_line,
    cpsnake,
    fifo,
    in_process,
    new_paths,
    normalized_image,
    oval_roi,
    png_bytes,
    polygon_roi,
    roi_zip,
    save_state,
    small_image,
    tiff_bytes,
    tiny_state,
    unix_socket,
    write_tif,
    zero_stream,
)
from paths import ROOT
from PIL import Image

from cpsnake.io import limits

# --- 1. bombs ---------------------------------------------------------------------------------------


def _tiff_deflate(d, z, m):
    f = d / "bomb.tif"
    f.write_bytes(tiff_bytes(2 * BOMB_SIDE + 1, BOMB_SIDE, z, bits=8, compression=8))
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif", d / "out.json"]


def _png_deflate(d, z, m):
    f = d / "bomb.png"
    f.write_bytes(png_bytes(BOMB_SIDE, BOMB_SIDE, z))
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif", d / "out.json"]


def _tiff_png_tile(d, z, m):  # a 256 x 256 TIFF whose one tile is a PNG of 48000 x 24000 (1.15 GB decoded)
    f = write_tif(d / "tile.tif", np.zeros((256, 256), np.uint8), compression="png", tile=(256, 256))
    with tifffile.TiffFile(f) as tif:
        tags = tif.pages[0].tags
        at_offsets, at_counts = tags[324].valueoffset, tags[325].valueoffset  # TileOffsets, TileByteCounts
    raw = bytearray(f.read_bytes())
    tile = png_bytes(2 * BOMB_SIDE, BOMB_SIDE, z, depth=8)
    struct.pack_into("<I", raw, at_offsets, len(raw))
    struct.pack_into("<I", raw, at_counts, len(tile))
    f.write_bytes(bytes(raw) + tile)
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif", d / "out.json"]


def _tiff_png_tile_by_region(d, z, m):  # the same tile, read region by region (segment in blocks)
    _, f, _ = _tiff_png_tile(d, z, m)
    return (
        ["segment", f, "--out", d / "o", "--block-size", "512", "--model", m],
        f,
        [d / "o" / "masks" / "tile.tif", d / "o" / "provenance" / "tile.json"],
    )


def _jpeg_header(d, z, m):
    f = d / "bomb.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(f, format="JPEG")
    raw = bytearray(f.read_bytes())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # height, width
    f.write_bytes(bytes(raw))
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif", d / "out.json"]


def _tiff_declared(d, z, m):  # 100000 x 100000 uint16 declared, 64 bytes present
    f = d / "declared.tif"
    f.write_bytes(tiff_bytes(100_000, 100_000, bytes(64)))
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif", d / "out.json"]


def _flows_declared(d, z, m):  # float32 flows of 90000 x 30000 declared (as many samples as 3 x 30000 x 30000)
    f = d / "flows.tif"
    f.write_bytes(tiff_bytes(30_000, 90_000, bytes(64), bits=32, sample_format=3))
    return ["reconstruct", f, d / "labels.tif"], f, [d / "labels.tif"]


def _labels_declared(d, z, m):
    f = d / "labels.tif"
    f.write_bytes(tiff_bytes(100_000, 100_000, bytes(64)))
    return ["measure", f, small_image(d), d / "m.csv"], f, [d / "m.csv"]


def _normalized_declared(d, z, m):
    f = d / "norm.tif"
    f.write_bytes(tiff_bytes(60_000, 60_000, bytes(64), bits=32, sample_format=3))
    return ["infer", f, d / "flows.tif", "--model", m], f, [d / "flows.tif"]


def _weights_expanded(d, z, m):  # patch kernel (20000, 3, 8, 8) over a one-element storage: a 20000-wide ViT
    import torch

    state = tiny_state(m)
    state["encoder.patch_embed.proj.weight"] = torch.zeros(1).expand(20000, 3, 8, 8)
    f = save_state(state, d / "expanded.pt")
    return ["infer", normalized_image(d), d / "flows.tif", "--model", f], f, [d / "flows.tif"]


def _weights_architecture(d, z, m):  # real tensors (15 MB) whose shapes describe an 8000-wide ViT (3e9 parameters)
    import torch

    state = tiny_state(m)
    state["encoder.patch_embed.proj.weight"] = torch.zeros(8000, 3, 8, 8)
    f = save_state(state, d / "wide.pt")
    return ["infer", normalized_image(d), d / "flows.tif", "--model", f], f, [d / "flows.tif"]


def _diameter_option(d, z, m):  # --diameter 1 would resize a 64 x 64 image to 1920 x 1920, over --max-pixels 10^6
    f = normalized_image(d)  # (a diameter under 1 px is refused by its bound first, cpsnake.bounds)
    return (
        ["infer", f, d / "flows.tif", "--model", m, "--diameter", "1", "--max-pixels", "1000000"],
        "diameter 1",
        [d / "flows.tif"],
    )


def _roi_bbox(d, z, m):  # ROIs 65000 px across on a 64 x 64 image: clipped to it, not refused
    triangle = polygon_roi([[0, 0], [65000, 0], [0, 65000]], "0001")  # covers the whole image
    oval = oval_roi(0, 0, 65534, 65534)  # the image lies in a corner of its box, outside the oval
    f = roi_zip(d / "rois.zip", {"0001.roi": triangle, "0002.roi": oval})
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f, []


BOMBS = {
    "tiff deflate 1.1 GB": (_tiff_deflate, r"samples, more than the limit of 100,000,000 samples.*--max-pixels N"),
    "png deflate 1.1 GB": (_png_deflate, r"samples, more than the limit.*--max-pixels N"),
    "tiff tile holding a 1.1 GB png": (_tiff_png_tile, r"compressed data that expand beyond the size the TIFF header"),
    "the same tile read by region": (
        _tiff_png_tile_by_region,
        r"compressed data in rows 0-256, columns 0-256 that "
        r"expand beyond the size the header declares",
    ),
    "jpeg header 30000 x 30000": (_jpeg_header, r"30000 x 30000 x 3 = 2,700,000,000 samples.*--max-pixels N"),
    "tiff declared 100000 x 100000": (_tiff_declared, r"100000 x 100000 = 10,000,000,000 samples"),
    "flows declared": (_flows_declared, r"flows file of .* samples, more than the limit of 400,000,000 samples"),
    "labels declared": (_labels_declared, r"label image of 100000 x 100000"),
    "normalized declared": (_normalized_declared, r"normalized image of 60000 x 60000"),
    "weights stride-0 view": (_weights_expanded, r"encoder.patch_embed.proj.weight.*expanded \(stride-0\) view"),
    "weights describing a huge network": (_weights_architecture, r"describe a network of [\d,]+ parameters, more than"),
    "--diameter resizing to 1920 x 1920": (_diameter_option, r"would have 1920x1920 pixels .*more than the limit"),
    "roi bounding box 1000x the image": (_roi_bbox, None),
}


@pytest.mark.parametrize("member", list(BOMBS))
def test_bombs_are_refused_before_allocation(tmp_path, zero_stream, tiny_model, member):  # noqa: F811 (zero_stream: the fixture imported above)
    build, pattern = BOMBS[member]
    args, bad, outputs = build(tmp_path, zero_stream, tiny_model)
    assert not isinstance(bad, Path) or bad.stat().st_size < 16 * 2**20  # tiny on disk
    run = cpsnake(*args)
    # `segment` holds torch and the model (about 0.9 GB) before it reads, and a region read may decode up to
    # limits.DECODE_MARGIN before the budget stops it: still far below the 1.15 GB a decoded bomb would add
    limit = RSS_LIMIT_MB + (limits.DECODE_MARGIN / 2**20 if args[0] == "segment" else 0)
    assert run.rss_mb < limit, (run.rss_mb, run.stderr[-2000:])
    if pattern is None:  # the ROIs: clipped to the image and painted (or skipped with a warning), exit 0
        assert run.rc == 0, run.stderr
        labels = tifffile.imread(tmp_path / "labels.tif")
        assert labels.shape == (64, 64) and (labels == 1).all()  # the triangle, clipped; the oval paints nothing
        assert "cpsnake rois: warning: " in run.stderr and "'0002.roi'" in run.stderr
        return
    assert_one_error_line(run, args[0], bad, pattern=pattern)
    assert_no_outputs(*outputs)


def test_the_limit_is_set_by_option_environment_and_config(tmp_path, capsys, monkeypatch):
    """--max-pixels, CPSNAKE_MAX_PIXELS and the config key max_pixels set one limit, documented once."""
    import yaml

    from cpsnake.io import limits

    repo = ROOT
    schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["max_pixels"]["default"] == limits.DEFAULT_MAX_PIXELS
    assert yaml.safe_load((repo / "config.yaml").read_text())["max_pixels"] == limits.DEFAULT_MAX_PIXELS
    img = small_image(tmp_path, shape=(100, 100))  # 10,000 samples
    out = tmp_path / "out.tif"
    assert_one_error_line(
        in_process(capsys, "normalize", img, out, "--max-pixels", "9999"),
        "normalize",
        img,
        pattern=r"100 x 100 = 10,000 samples, more than the limit of 9,999 samples",
    )
    monkeypatch.setenv("CPSNAKE_MAX_PIXELS", "9999")
    assert_one_error_line(in_process(capsys, "normalize", img, out), "normalize", img, pattern="limit of 9,999")
    assert in_process(capsys, "normalize", img, out, "--max-pixels", "10000").rc == 0  # the option wins
    monkeypatch.setenv("CPSNAKE_MAX_PIXELS", "lots")
    assert_one_error_line(
        in_process(capsys, "normalize", img, tmp_path / "o2.tif"),
        "normalize",
        "CPSNAKE_MAX_PIXELS",
        pattern=r"found 'lots', expected a positive whole number",
    )


# --- 2. nothing hangs -------------------------------------------------------------------------------


def _h_image(d, m):
    f = fifo(d, "pipe.tif")
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif"]


def _h_dev_zero(d, m):
    return ["normalize", "/dev/zero", d / "out.tif"], "/dev/zero", [d / "out.tif"]


def _h_socket(d, m):
    f = unix_socket(d, "sock.tif")
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif"]


def _h_labels(d, m):
    f = fifo(d, "labels.tif")
    return ["measure", f, small_image(d), d / "m.csv"], f, [d / "m.csv"]


def _h_flows(d, m):
    f = fifo(d, "flows.tif")
    return ["reconstruct", f, d / "labels.tif"], f, [d / "labels.tif"]


def _h_normalized(d, m):
    f = fifo(d, "norm.tif")
    return ["infer", f, d / "flows.tif", "--model", m], f, [d / "flows.tif"]


def _h_weights(d, m):
    f = fifo(d, "weights.pt")
    return ["infer", normalized_image(d), d / "flows.tif", "--model", f], f, [d / "flows.tif"]


def _h_roi_zip(d, m):
    f = fifo(d, "RoiSet.zip")
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f, [d / "labels.tif"]


def _h_like(d, m):
    f = fifo(d, "like.tif")
    z = roi_zip(d / "rois.zip", {"0001.roi": oval_roi(2, 2, 10, 10)})
    return ["rois", "--import", z, "--like", f, d / "labels.tif"], f, [d / "labels.tif"]


def _h_overlay_image(d, m):
    f = fifo(d, "img.png")
    lab = write_tif(d / "labels.tif", np.ones((64, 64), np.uint16))
    return ["overlay", f, lab, d / "o.png"], f, [d / "o.png"]


def _h_index(d, m):
    for sub in ("pred", "true"):
        (d / sub).mkdir()
        write_tif(d / sub / "a.tif", np.ones((16, 16), np.uint16))
    f = fifo(d, "index.csv")
    return ["evaluate", d / "pred", d / "true", "--index", f, "--out", d / "t.csv"], f, [d / "t.csv"]


def _mini_run(d, name="a", labels=None):
    """A results folder of one segmented image ``name`` (samples table, manifests, mask); returns it."""
    from cpsnake.run import batch, samples
    from cpsnake.run.layout import Paths

    res = d / "results"
    samples.write_table(res / "samples.tsv", [samples.Sample(name, str(d / "img.tif"), batch="b0001", pixels=256)])
    paths = Paths(res, "b0001")
    paths.masks(name).parent.mkdir(parents=True)
    write_tif(paths.masks(name), np.ones((16, 16), np.uint16) if labels is None else labels)
    for step in batch.STEPS:
        batch.write_manifest(paths.manifest(step), [batch.Outcome(name, "ok")])
    return res


def _aggregate_args(res, d):
    return [
        "aggregate",
        "--samples",
        res / "samples.tsv",
        "--results",
        res,
        "--out-measurements",
        d / "all.csv",
        "--out-summary",
        d / "summary.csv",
        "--out-failed",
        d / "failed.csv",
    ]


def _h_measurements(d, m):
    res = _mini_run(d)
    (res / "measurements").mkdir()
    f = fifo(res / "measurements", "a.csv")
    return _aggregate_args(res, d), f, [d / "all.csv", d / "summary.csv", d / "failed.csv"]


def _h_provenance(d, m):
    res = _mini_run(d)
    f = fifo(d, "model.pt")
    args = [
        "provenance",
        d / "p.json",
        "--model",
        f,
        "--model-name",
        "x",
        "--samples",
        res / "samples.tsv",
        "--results",
        res,
    ]
    return args, f, [d / "p.json"]


def _h_train_list(d, m):
    f = fifo(d, "pairs.csv")
    return ["train", f, "--out", d / "run", "--steps", "1"], f, [d / "run" / "model.pt"]


def _h_thin_image(d, m):  # 100000 x 2: no cell fits; the network would tile 470 tiles of padding
    f = write_tif(d / "thin.tif", np.arange(200_000, dtype=np.uint16).reshape(100_000, 2))
    return ["normalize", f, d / "out.tif"], f, [d / "out.tif", d / "out.json"]


def _h_thin_normalized(d, m):
    f = write_tif(
        d / "thin.tif",
        np.random.default_rng(0).random((1, 100_000, 2), dtype=np.float32),
        imagej=True,
        metadata={"axes": "CYX"},
    )
    return ["infer", f, d / "flows.tif", "--model", m], f, [d / "flows.tif"]


HANGS = {
    "fifo as image": (_h_image, r"is a FIFO \(named pipe\), not a regular file"),
    "/dev/zero as image": (_h_dev_zero, r"is a character device"),
    "socket as image": (_h_socket, r"is a socket"),
    "fifo as labels": (_h_labels, r"FIFO"),
    "fifo as flows": (_h_flows, r"FIFO"),
    "fifo as normalized image": (_h_normalized, r"FIFO"),
    "fifo as weights": (_h_weights, r"FIFO"),
    "fifo as roi set": (_h_roi_zip, r"FIFO"),
    "fifo as --like image": (_h_like, r"FIFO"),
    "fifo as overlay image": (_h_overlay_image, r"FIFO"),
    "fifo as evaluate index": (_h_index, r"FIFO"),
    "fifo as measurements csv": (_h_measurements, r"FIFO"),
    "fifo as provenance model": (_h_provenance, r"FIFO"),
    "fifo as training list": (_h_train_list, r"FIFO"),
    "100000 x 2 image": (_h_thin_image, r"100000 x 2 pixels .*expected at least 8 pixels"),
    "100000 x 2 normalized image": (_h_thin_normalized, r"100000 x 2 pixels .*expected at least 8 pixels"),
}


@pytest.mark.parametrize("member", list(HANGS))
def test_nothing_hangs(tmp_path, tiny_model, member):
    build, pattern = HANGS[member]
    args, bad, outputs = build(tmp_path, tiny_model)
    run = cpsnake(*args, timeout=90)  # a hang is reported as rc "timeout", not waited for
    assert run.rc != "timeout", member
    assert_one_error_line(run, args[0], bad, pattern=pattern)
    assert_no_outputs(*outputs)


# --- 3. no tracebacks ------------------------------------------------------------------------------


def _zip_with_flags(d: Path, *, flag: int = 0, method: int | None = None, corrupt: bool = False) -> Path:
    """A one-entry ROI zip (deflated) whose entry is marked encrypted, uses another method, or is corrupt."""
    f = d / "RoiSet.zip"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0001.roi", oval_roi(2, 2, 10, 10))
    raw = bytearray(f.read_bytes())
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    if flag:
        raw[local + 6] |= flag
        raw[central + 8] |= flag
    if method is not None:
        raw[local + 8 : local + 10] = struct.pack("<H", method)
        raw[central + 10 : central + 12] = struct.pack("<H", method)
    if corrupt:
        start = local + 30 + len("0001.roi")
        raw[start : start + 8] = b"\xff" * 8
    f.write_bytes(bytes(raw))
    return f


def _t_encrypted(d):
    f = _zip_with_flags(d, flag=1)
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f, "0001.roi", r"is encrypted"


def _t_deflate64(d):
    f = _zip_with_flags(d, method=9)
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f, "0001.roi", r"compression method 9"


def _t_corrupt_deflate(d):
    f = _zip_with_flags(d, corrupt=True)
    return ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"], f, "0001.roi", r"cannot be read"


BIG_ID = 4_000_000_000


def _sparse_labels(d: Path) -> Path:
    a = np.zeros((64, 64), np.uint32)
    a[5:20, 5:20] = BIG_ID
    a[30:40, 30:45] = 7
    return write_tif(d / "sparse.tif", a)


def _t_sparse_measure(d):
    return ["measure", _sparse_labels(d), small_image(d), d / "m.csv"], None, None, None


def _t_sparse_aggregate(d):
    import tifffile

    res = _mini_run(d, "m", labels=tifffile.imread(_sparse_labels(d)))
    (res / "measurements").mkdir()
    (res / "measurements" / "m.csv").write_text("label,image,Area\n")
    return _aggregate_args(res, d), None, None, None


def _t_sparse_rois(d):
    return ["rois", _sparse_labels(d), d / "rois.zip"], None, None, None


def _t_sparse_overlay(d):
    return ["overlay", small_image(d), _sparse_labels(d), d / "o.png"], None, None, None


def _t_sparse_evaluate(d):
    for sub in ("pred", "true"):
        (d / sub).mkdir()
        _sparse_labels(d).rename(d / sub / "a.tif")
    return ["evaluate", d / "pred", d / "true", "--out", d / "t.csv"], None, None, None


def _t_many_objects_evaluate(d):  # 1,048,576 one-pixel objects in each image: no (n_true x n_pred) table
    ids = np.arange(1, 1024 * 1024 + 1, dtype=np.uint32).reshape(1024, 1024)
    for sub in ("pred", "true"):
        (d / sub).mkdir()
        write_tif(d / sub / "a.tif", ids, compression="zlib", predictor=True)
    return ["evaluate", d / "pred", d / "true", "--out", d / "t.csv"], None, None, None


def _t_non_ascii_unit(d):  # found by fuzzing: a damaged ImageJ unit could not be written back (UnicodeEncodeError)
    f = write_tif(
        d / "unit.tif",
        tifffile.imread(GREY16)[:64, :64],
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"unit": "micron"},
    )
    raw = f.read_bytes()
    f.write_bytes(raw.replace(b"unit=micron", b"unit=m\xcbcron"))
    return ["normalize", f, d / "out.tif"], None, None, None


TRACEBACKS = {
    "encrypted zip entry": _t_encrypted,
    "zip method deflate64": _t_deflate64,
    "corrupt deflate data": _t_corrupt_deflate,
    "label id 4e9 in measure": _t_sparse_measure,
    "label id 4e9 in aggregate": _t_sparse_aggregate,
    "label id 4e9 in rois": _t_sparse_rois,
    "label id 4e9 in overlay": _t_sparse_overlay,
    "label id 4e9 in evaluate": _t_sparse_evaluate,
    "1,048,576 objects in evaluate": _t_many_objects_evaluate,
    "non-ASCII unit in an ImageJ TIFF": _t_non_ascii_unit,
}


@pytest.mark.parametrize("member", list(TRACEBACKS))
def test_no_tracebacks(tmp_path, member):
    args, bad, entry, pattern = TRACEBACKS[member](tmp_path)
    run = cpsnake(*args)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if bad is not None:
        assert_one_error_line(run, args[0], bad, entry, pattern=pattern)
        assert_no_outputs(tmp_path / "labels.tif")
        return
    # sparse ids: a correct result, in the memory of a small image
    assert run.rc == 0, run.stderr
    assert run.rss_mb < RSS_LIMIT_MB
    if args[0] == "measure":
        import pandas as pd

        table = pd.read_csv(tmp_path / "m.csv")
        assert table["label"].tolist() == [7, BIG_ID] and table["area_px"].tolist() == [150, 225]
    if args[0] == "aggregate":
        summary = (tmp_path / "summary.csv").read_text().splitlines()[1]
        assert summary.startswith("m,2,")
    if args[0] == "rois":
        assert sorted(zipfile.ZipFile(tmp_path / "rois.zip").namelist()) == ["0000000007.roi", "4000000000.roi"]
    if args[0] == "evaluate":
        import pandas as pd

        pooled = pd.read_csv(tmp_path / "t.csv").set_index("image").loc["pooled"]
        assert pooled["n_true"] in (2, 1024 * 1024) and pooled["ap@0.5"] == 1.0 and pooled["ap@0.9"] == 1.0


def test_sparse_matching_equals_the_full_assignment():
    """evaluate's sparse matching (used for the members above) counts what cellpose's full assignment counts."""
    from cpsnake.training import evaluate

    rng = np.random.default_rng(1)
    for trial in range(200):
        true = rng.integers(0, 6, (12, 12))
        pred = true.copy() if trial % 3 == 0 else rng.integers(0, 7, (12, 12))
        pred[rng.random((12, 12)) < 0.2] = 0
        iou, _, _ = evaluate.iou_matrix(true, pred)
        pairs = evaluate.overlap_pairs(true, pred)
        for th in (0.1, 0.3, 0.5, 0.75, 0.9):
            assert evaluate.matched(*pairs, th) == evaluate.match_counts(iou, th), (trial, th)


def test_guard_keeps_the_traceback_of_a_bug(capsys):
    from cpsnake.errors import CpsnakeError, guard

    @guard("demo")
    def buggy(argv=None):
        raise ValueError("a bug in cpsnake")

    @guard("demo")
    def bad_input(argv=None):
        raise CpsnakeError("x.tif: found y; expected z; do w")

    with pytest.raises(ValueError, match="a bug in cpsnake"):
        buggy([])
    assert bad_input([]) == 1
    assert capsys.readouterr().err == "cpsnake demo: error: x.tif: found y; expected z; do w\n"


# --- 4. no silent garbage ---------------------------------------------------------------------------


def _ome_tiff(d: Path, size_x: str, size_y: str | None = None) -> Path:
    """A 64 x 64 uint16 OME-TIFF whose OME-XML stores the given PhysicalSizeX / PhysicalSizeY text."""
    y = size_x if size_y is None else size_y
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="64" SizeY="64" '
        f'SizeC="1" SizeZ="1" SizeT="1" PhysicalSizeX="{size_x}" PhysicalSizeY="{y}">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="1"/><TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>'
    )
    f = d / "cal.ome.tif"
    data = np.random.default_rng(0).integers(100, 4000, (64, 64)).astype(np.uint16)
    tifffile.imwrite(f, data, description=xml, metadata=None)
    return f


def _imagej_resolution_zero(d: Path) -> Path:
    f = d / "cal.tif"
    write_tif(
        f,
        np.random.default_rng(0).integers(100, 4000, (64, 64)).astype(np.uint16),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"unit": "micron"},
    )
    with tifffile.TiffFile(f, mode="r+") as tif:
        tif.pages[0].tags["XResolution"].overwrite((0, 1))
    return f


def _measure_calibrated(d, image):
    lab = np.zeros((64, 64), np.uint16)
    lab[10:20, 10:30] = 1
    return ["measure", write_tif(d / "labels.tif", lab), image, d / "m.csv"]


def _g_pixel_size(maker, shown):
    def build(d, m):
        image = maker(d)
        return _measure_calibrated(d, image), image, shown

    return build


def _g_nan_weights(d, m, value=math.nan):
    state = tiny_state(m)
    state["encoder.blocks.1.mlp.lin2.weight"][3, 4] = value
    f = save_state(state, d / "bad.pt")
    return (
        ["infer", normalized_image(d), d / "flows.tif", "--model", f],
        f,
        r"'encoder.blocks.1.mlp.lin2.weight' holds NaN",
    )


def _g_duplicate_names(d, m):
    (d / "sub").mkdir()
    a, b = small_image(d, "a.tif"), small_image(d / "sub", "a.tif")
    return ["segment", a, b, "--out", d / "out", "--model", m], (a, b), r"both map to the output name 'a'"


def _g_nan_roi(d, m):
    f = roi_zip(d / "rois.zip", {"0001.roi": polygon_roi([[2, 2], [20, 2], [np.nan, 20], [2, 20]])})
    return (
        ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"],
        (f, "0001.roi"),
        r"NaN or infinite coordinates",
    )


def _g_complex_flows(d, m):
    f = write_tif(d / "flows.tif", np.ones((3, 16, 16), np.complex64), photometric="minisblack")
    return ["reconstruct", f, d / "labels.tif"], f, r"pixels of type complex64"


def _g_complex_image(d, m):
    f = write_tif(d / "c.tif", np.ones((16, 16), np.complex128))
    return ["normalize", f, d / "out.tif"], f, r"pixels of type complex128"


GARBAGE = {
    "pixel size inf (OME)": _g_pixel_size(lambda d: _ome_tiff(d, "1e999"), "'1e999' x '1e999'"),
    "pixel size 0 (OME)": _g_pixel_size(lambda d: _ome_tiff(d, "0"), "'0' x '0'"),
    "pixel size negative (OME)": _g_pixel_size(lambda d: _ome_tiff(d, "0.5", "-0.5"), "'-0.5' x '0.5'"),
    "pixel size NaN (OME)": _g_pixel_size(lambda d: _ome_tiff(d, "NaN"), "'NaN' x 'NaN'"),
    "pixel size 1/0 (ImageJ resolution 0)": _g_pixel_size(_imagej_resolution_zero, "0.5 x inf micron"),
    "NaN in weights": _g_nan_weights,
    "Inf in weights": lambda d, m: _g_nan_weights(d, m, math.inf),
    "two inputs, one output name": _g_duplicate_names,
    "NaN ROI coordinate": _g_nan_roi,
    "complex flows": _g_complex_flows,
    "complex image": _g_complex_image,
}


@pytest.mark.parametrize("member", list(GARBAGE))
def test_no_silent_garbage(tmp_path, capsys, tiny_model, member):
    args, bad, expect = GARBAGE[member](tmp_path, tiny_model)
    outputs = new_paths(args)
    run = in_process(capsys, *args)
    if member.startswith("pixel size"):  # uncalibrated with one warning: a correct table in pixels
        assert run.rc == 0, run.stderr
        lines = run.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cpsnake measure: warning: ") and str(bad) in lines[0], lines
        assert expect in lines[0] and "treated as uncalibrated" in lines[0]
        import pandas as pd

        row = pd.read_csv(tmp_path / "m.csv").iloc[0]
        assert row["Area"] == row["area_px"] == 200 and math.isfinite(row["Perim."])
        run = in_process(capsys, "normalize", bad, tmp_path / "n.tif")  # recorded in the normalize JSON
        assert run.rc == 0 and expect in json.loads((tmp_path / "n.json").read_text())["calibration_problem"]
        return
    names = bad if isinstance(bad, tuple) else (bad,)
    assert_one_error_line(run, args[0], *names, pattern=expect)
    assert_no_outputs(*outputs)  # for segment: not even the --out folder


@pytest.mark.parametrize(
    "dtype, base", [(np.uint32, 2**30), (np.int64, -(2**40)), (np.uint64, 2**40), (np.float64, 3e8)]
)
def test_no_silent_garbage_beyond_float32(tmp_path, capsys, dtype, base):
    """Values beyond float32's exact range (+-2**24) are normalized in float64, and OUT.json says so."""
    rng = np.random.default_rng(0)
    img = (base + rng.integers(0, 1000, (64, 64))).astype(dtype)  # steps of 1 that float32 would merge
    f = write_tif(tmp_path / "wide.tif", img)
    run = in_process(capsys, "normalize", f, tmp_path / "n.tif")
    assert run.rc == 0 and run.stderr == ""
    x = img.astype(np.float64)
    lo, hi = np.percentile(x, [1, 99])
    expected = ((x - lo) / (hi - lo)).astype(np.float32)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "n.tif"), expected, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "n.json").read_text())["arithmetic"] == "float64"


# --- 5. every error line is complete ----------------------------------------------------------------


def _c_symlink_loop(d, m):
    a, b = d / "a.tif", d / "b.tif"
    a.symlink_to(b)
    b.symlink_to(a)
    return (
        ["normalize", a, d / "out.tif"],
        (a,),
        r"loop of symbolic links; expected an image .*; point the link at the real file",
    )


def _c_weights_folder(d, m):
    (d / "model").mkdir()
    return (
        ["infer", normalized_image(d), d / "flows.tif", "--model", d / "model"],
        (d / "model",),
        r"is a folder, expected a weights file or a model name; pass the weights file inside it",
    )


def _c_non_roi_entry(d, m):
    f = roi_zip(d / "RoiSet.zip", {"0001.roi": oval_roi(2, 2, 10, 10), "notes.txt": b"hello"})
    return (
        ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"],
        (f, "notes.txt"),
        r"not 'Iout'; expected only ImageJ \.roi entries; remove that entry",
    )


def _square_roi() -> bytearray:
    from roifile import ImagejRoi

    return bytearray(ImagejRoi.frompoints(np.array([[2, 2], [20, 2], [20, 20], [2, 20]], np.int32)).tobytes())


def _c_corrupt_roi_header(d, m):  # n_coordinates (bytes 16-17) far beyond the data
    raw = _square_roi()
    raw[16:18] = struct.pack(">H", 60000)
    f = roi_zip(d / "RoiSet.zip", {"0001.roi": bytes(raw)})
    return (
        ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"],
        (f, "0001.roi"),
        r"corrupt ImageJ ROI header .*; expected a valid \.roi; re-save the ROI set",
    )


def _c_unknown_roi_type(d, m):  # type byte (6) 99: not an ImageJ ROI type
    raw = _square_roi()
    raw[6] = 99
    f = roi_zip(d / "RoiSet.zip", {"0001.roi": bytes(raw)})
    return (
        ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"],
        (f, "0001.roi"),
        r"unknown ROI type .*; expected an ImageJ area ROI; the entry is corrupt: re-save",
    )


def _c_line_roi(d, m):
    from roifile import ROI_TYPE, ImagejRoi

    roi = ImagejRoi(roitype=ROI_TYPE.LINE, x1=1.0, y1=1.0, x2=10.0, y2=12.0, name="0003")
    f = roi_zip(d / "RoiSet.zip", {"0003.roi": roi.tobytes()})
    return (
        ["rois", "--import", f, "--like", small_image(d), d / "labels.tif"],
        (f, "0003.roi"),
        r"type line, not an area; expected .*; convert lines and points to areas",
    )


def _labels_case(values, dtype, pattern):
    def build(d, m):
        a = np.zeros((16, 16), dtype)
        a[2:6, 2:6] = values
        f = write_tif(d / "labels.tif", a)
        return ["measure", f, small_image(d, shape=(16, 16)), d / "m.csv"], (f,), pattern

    return build


def _c_nan_flows(d, m):
    a = np.zeros((3, 16, 16), np.float32)
    a[2, 3, 3] = np.nan
    f = write_tif(d / "flows.tif", a, imagej=True, metadata={"axes": "CYX"})
    return (
        ["reconstruct", f, d / "labels.tif"],
        (f,),
        r"1 NaN or infinite flow values, expected finite flows; pass the FLOWS",
    )


def _c_non_tiff_flows(d, m):
    f = d / "flows.tif"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(f, format="PNG")
    return ["reconstruct", f, d / "labels.tif"], (f,), r"not a TIFF .*; expected a flows TIFF .*; pass the FLOWS\.tif"


def _c_warnings_then_error(d, m):  # tifffile warns about the bad tag; only the error line must show
    f = write_tif(d / "w.tif", np.ones((16, 16), np.complex64), extratags=[(65000, "s", 0, "x" * 10, True)])
    raw = bytearray(f.read_bytes())
    i = raw.index(struct.pack("<HH", 65000, 2))
    raw[i + 2 : i + 4] = struct.pack("<H", 99)  # an unknown tag type: tifffile logs a warning
    f.write_bytes(bytes(raw))
    return ["normalize", f, d / "out.tif"], (f,), r"complex64"


COMPLETE = {
    "symlink loop": _c_symlink_loop,
    "folder as weights": _c_weights_folder,
    "non-ROI zip entry": _c_non_roi_entry,
    "corrupt ROI header": _c_corrupt_roi_header,
    "unknown ROI type": _c_unknown_roi_type,
    "line ROI": _c_line_roi,
    "fractional float labels": _labels_case(
        1.5, np.float32, r"fractional or negative values; expected .*Image > Type > 16-bit"
    ),
    "negative labels": _labels_case(-3, np.int16, r"negative labels \(smallest -3\); expected .*Image > Type > 16-bit"),
    "bool labels": _labels_case(True, bool, r"binary \(bool\) mask, expected labels .*Count Masks"),
    "NaN flows": _c_nan_flows,
    "non-TIFF flows": _c_non_tiff_flows,
    "warnings before an error": _c_warnings_then_error,
}


@pytest.mark.parametrize("member", list(COMPLETE))
def test_every_error_line_is_complete(tmp_path, capsys, tiny_model, member):
    args, names, pattern = COMPLETE[member](tmp_path, tiny_model)
    outputs = new_paths(args)
    run = in_process(capsys, *args)
    line = assert_one_error_line(run, args[0], *names, pattern=pattern)
    assert "expected" in line  # found ..., expected ..., fix
    assert_no_outputs(*outputs)


# --- 6. valid but unusual files keep working --------------------------------------------------------


def _u(d, name, array, **kw):
    return write_tif(d / name, array, **kw)


UNUSUAL = {
    "bigtiff": lambda d: _u(d, "big.tif", tifffile.imread(GREY16), bigtiff=True),
    "float16": lambda d: _u(d, "half.tif", (tifffile.imread(GREY16) / 7).astype(np.float16)),
    "int8": lambda d: _u(d, "int8.tif", (tifffile.imread(GREY16) // 64 - 32).astype(np.int8)),
    "newline in the name": lambda d: _u(d, "two\nlines.tif", tifffile.imread(GREY16)),
    "7 channels without axes": lambda d: _u(d, "seven.tif", np.stack([tifffile.imread(GREY16)] * 7)),
}


@pytest.mark.parametrize("member", list(UNUSUAL))
def test_valid_unusual_files_keep_working(tmp_path, capsys, member):
    src = UNUSUAL[member](tmp_path)
    run = in_process(capsys, "normalize", src, tmp_path / "out.tif")
    if member == "7 channels without axes":  # 7 planes of unknown meaning: refused with how to name the axes
        assert_one_error_line(run, "normalize", src, pattern=r"found 7 planes on an axis without a name.*axes named")
        return
    assert run.rc == 0 and run.stderr == "", run.stderr
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape[-2:] == (520, 696) and np.isfinite(out).all()
