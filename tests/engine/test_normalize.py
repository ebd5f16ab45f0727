"""Normalization: parity with cellpose.transforms.normalize_img (4.2.1.1), channel choice, tiles, CLI, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from paths import DATA as TEST_DATA
from reference import cellpose

from cpsnake import __version__
from cpsnake.cli import main as cli_main
from cpsnake.engine.normalize import normalize, select_channels, tile_starts, upsample_bilinear
from cpsnake.errors import CpsnakeError
from cpsnake.io.inputs import read_image

DATA = TEST_DATA / "images"
REAL = {
    "grey16": DATA / "bbbc039_O13_s3_uint16.tif",
    "rgb": DATA / "dsb2018_0e21d7b3eea8cdbb_rgb.tif",
    "grey8": DATA / "dsb2018_4ff152d76db095f7_uint8.tif",
}


def reference(img: np.ndarray, **kwargs) -> np.ndarray:
    """cellpose's normalize_img on (C, Y, X), back in (C, Y, X)."""
    from cellpose.transforms import normalize_img

    return normalize_img(np.moveaxis(img, 0, -1).copy(), axis=-1, **kwargs).transpose(2, 0, 1)


def noisy(shape, dtype, seed=0, scale=1000.0):
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, scale / 4, size=shape)
    if np.dtype(dtype).kind in "ui":
        x = np.clip(x, np.iinfo(dtype).min, np.iinfo(dtype).max)
    return x.astype(dtype)


# --- parity with cellpose --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL))
def test_default_equals_cellpose_on_real_images(name):
    img, _ = read_image(REAL[name])
    out, record = normalize(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out, reference(img))
    assert record["mode"] == "percentile" and all(e["status"] == "scaled" for e in record["per_channel"])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64])
def test_default_equals_cellpose_for_each_dtype(dtype):
    img = noisy((2, 60, 70), dtype, scale=100.0 if dtype in (np.uint8, np.float16) else 5000.0)
    np.testing.assert_array_equal(normalize(img)[0], reference(img))


def test_large_image_uses_cellpose_subsample_and_still_equals_it():
    img = noisy((1, 3400, 3400), np.uint8, scale=200.0)  # 11.6 Mpx > 224**3
    out, record = normalize(img)
    assert record["per_channel"][0]["sample_step"] == [3400 // 224, 3400 // 224]
    np.testing.assert_array_equal(out, reference(img))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (dict(percentiles=(5.0, 95.0)), dict(percentile=(5.0, 95.0))),
        (dict(percentiles=(0.0, 100.0)), dict(percentile=(0.0, 100.0))),
        (dict(invert=True), dict(invert=True)),
        (dict(low_high=(10, 900)), dict(lowhigh=(10, 900))),
        (
            dict(low_high=[(10, 900), (0, 50), (3, 4)], invert=True),
            dict(lowhigh=[(10, 900), (0, 50), (3, 4)], invert=True),
        ),
    ],
)
def test_options_equal_cellpose(ours, theirs):
    img = noisy((3, 50, 64), np.uint16)
    np.testing.assert_array_equal(normalize(img, **ours)[0], reference(img, **theirs))


def test_percentiles_map_to_zero_and_one():
    img = noisy((1, 80, 90), np.float32)
    out, record = normalize(img, percentiles=(2.0, 97.0))
    assert np.percentile(out, 2.0) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(out, 97.0) == pytest.approx(1.0, abs=1e-6)
    entry = record["per_channel"][0]
    assert entry["low"] == pytest.approx(np.percentile(img, 2.0), rel=1e-6)
    assert out.min() < 0 and out.max() > 1  # not clipped


def test_invert_is_one_minus_scaled():
    img = noisy((2, 40, 50), np.uint16)
    np.testing.assert_array_equal(normalize(img, invert=True)[0], 1 - normalize(img)[0])


# --- flat channels and constant images -------------------------------------------------------------


@pytest.mark.parametrize("invert", [False, True])
def test_constant_channel_in_good_image_is_zero_and_recorded(invert):
    img = noisy((3, 40, 50), np.uint8, scale=100.0)
    img[1] = 17
    out, record = normalize(img, invert=invert)
    np.testing.assert_array_equal(out, reference(img, invert=invert))  # cellpose also leaves it at 0
    assert not out[1].any()
    assert record["per_channel"][1]["status"].startswith("constant (17)")
    assert record["per_channel"][0]["status"] == "scaled"


def test_channel_with_equal_percentiles_is_zero():
    img = noisy((2, 50, 50), np.uint16)
    img[1] = 0
    img[1, :2, :3] = 500  # 6 pixels: 1st and 99th percentile both 0
    out, record = normalize(img)
    np.testing.assert_array_equal(out, reference(img))
    assert not out[1].any() and "within 0.001" in record["per_channel"][1]["status"]


@pytest.mark.parametrize("value", [0, 7, 65535])
def test_constant_image_is_an_error(value):
    img = np.full((1, 30, 40), value, np.uint16)
    with pytest.raises(CpsnakeError, match=rf"found a constant image \(every pixel is {value}\)"):
        normalize(img)


def test_image_whose_every_channel_is_flat_is_an_error():
    img = np.zeros((1, 50, 50), np.uint8)
    img[0, :2, :3] = 200
    with pytest.raises(CpsnakeError, match=r"no channel with a spread.*--percentiles \(e\.g\. 0 100\)"):
        normalize(img)
    assert normalize(img, percentiles=(0, 100))[0].max() == 1.0  # the fix the message names works


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(percentiles=(99, 1)), r"percentiles 99 1, expected 0 <= low < high <= 100"),
        (dict(percentiles=(-1, 99)), r"expected 0 <= low < high"),
        (dict(low_high=(5, 5)), r"expected finite LO < HI"),
        (dict(low_high=[(0, 1), (0, 1), (0, 1)]), r"expected finite LO < HI"),
        (dict(tile_size=-3), r"tile size -3"),
    ],
)
def test_bad_options_are_errors(kwargs, pattern):
    with pytest.raises(CpsnakeError, match=pattern):
        normalize(noisy((2, 20, 20), np.uint8), **kwargs)


@pytest.mark.parametrize("shape", [(4, 2, 50, 60), (60, 1, 700, 300)], ids=["small", "subsampled"])
def test_whole_stack_equals_cellpose_norm3d(shape):
    """Percentiles over all planes (cellpose's norm3D); above 224**3 voxels on cellpose's 3-D subsample
    (every Z // 50-th plane, Y // 224-th row, X // 224-th column)."""
    from cpsnake.stacks.stack import normalize_stack

    transforms = cellpose("cellpose.transforms")
    stack = noisy(shape, np.uint16)
    ours, record = normalize_stack(stack, per_plane=False)
    ref = transforms.normalize_img(stack.transpose(0, 2, 3, 1), norm3D=True).transpose(0, 3, 1, 2)
    assert record["scope"] == "stack"
    np.testing.assert_array_equal(ours, ref)
    if shape[0] == 60:
        assert record["per_channel"][0]["sample_step"] == [1, 3, 1]


def test_stack_plane_by_plane_equals_cellpose_per_slice():
    from cpsnake.stacks.stack import normalize_stack

    transforms = cellpose("cellpose.transforms")
    stack = noisy((3, 2, 40, 30), np.uint8)
    stack[1] //= 4  # planes differ in range
    ours, record = normalize_stack(stack, per_plane=True)
    ref = transforms.normalize_img(stack.transpose(0, 2, 3, 1), norm3D=False).transpose(0, 3, 1, 2)
    assert len(record["planes"]) == 3
    np.testing.assert_array_equal(ours, ref)


def test_tile_norm_of_a_whole_stack_is_refused():
    with pytest.raises(CpsnakeError, match="--tile-norm 64 with a whole-stack normalization"):
        normalize(noisy((1, 3, 80, 80), np.uint8), tile_size=64)


# --- channel selection ------------------------------------------------------------------------------


def test_select_channels_keeps_the_given_order():
    img = np.stack([np.full((4, 5), c, np.uint8) for c in range(5)])
    np.testing.assert_array_equal(select_channels(img, [3, 0, 4])[:, 0, 0], [3, 0, 4])
    assert select_channels(img[:3]) is not None and select_channels(img[:3]).shape == (3, 4, 5)


@pytest.mark.parametrize(
    "channels, pattern",
    [
        (None, r"found 5 channels, expected at most 3; choose which go in with --channels"),
        ([0, 1, 2, 3], r"names 4 channels, expected 1 to 3"),
        ([5], r"channel 5 does not exist; the image has 5 channel\(s\), 0-based 0\.\.4"),
        ([-1], r"channel -1 does not exist"),
        ([1, 1], r"repeats a channel"),
    ],
)
def test_select_channels_errors(channels, pattern):
    with pytest.raises(CpsnakeError, match=pattern):
        select_channels(np.zeros((5, 4, 5), np.uint8), channels)


# --- tile-wise normalization -------------------------------------------------------------------------


def test_tile_starts_follow_the_overlap_rule():
    starts, size = tile_starts(520, 100)
    assert size == 100 and len(starts) == int(np.ceil(1.2 * 520 / 100)) and starts[0] == 0 and starts[-1] == 420
    assert tile_starts(80, 100)[0].tolist() == [0] and tile_starts(80, 100)[1] == 80


def test_upsample_bilinear_equals_opencv_inter_linear():
    import cv2  # installed with cellpose; the reference for the interpolation rule

    grid = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    ref = cv2.resize(grid, (333, 250), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(upsample_bilinear(grid, (250, 333)), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("name, invert", [("grey16", False), ("rgb", False), ("grey16", True)])
def test_tile_norm_equals_cellpose_on_one_row_of_tiles_without_smoothing(name, invert):
    # With a single row of tiles, cellpose's smoothing (along the z and Y axes of its tile grid) does
    # nothing, so its tile_norm_blocksize is our tile norm without smoothing: same tiles, percentiles,
    # flat-tile filling and interpolation.
    img, _ = read_image(REAL[name])
    img = img[:, :90, :]
    out, record = normalize(img, tile_size=100, tile_smooth=0.0, invert=invert)
    ref = reference(img, tile_norm_blocksize=100, invert=invert)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert len(record["per_channel"][0]["tile_starts_x"]) == int(np.ceil(1.2 * img.shape[2] / 100))


def test_tile_norm_equals_cellpose_when_statistics_vary_only_along_x():
    # Tile rows identical (the image repeats every 50 rows; every 100-row tile holds two periods), so
    # cellpose's Y smoothing leaves the grid as it is.
    band = noisy((1, 50, 600), np.uint16) * np.linspace(1, 6, 600).astype(np.uint16)
    img = np.tile(band, (1, 8, 1))
    out, _ = normalize(img, tile_size=100, tile_smooth=0.0)
    np.testing.assert_allclose(out, reference(img, tile_norm_blocksize=100), rtol=1e-5, atol=1e-5)


def test_tile_norm_fills_flat_tiles_from_the_nearest_good_tile_like_cellpose():
    img = noisy((1, 90, 600), np.uint16)
    img[:, :, 300:] = 3  # right half constant: its tiles are flat
    out, record = normalize(img, tile_size=100, tile_smooth=0.0)
    assert record["per_channel"][0]["tiles_filled"] >= 3
    np.testing.assert_allclose(out, reference(img, tile_norm_blocksize=100), rtol=1e-5, atol=1e-5)


def _varying_along(axis: str) -> np.ndarray:
    """(1, Y, X) uint16 whose tile statistics change along ``axis`` only (Y or X) for 100 px tiles.

    The image repeats every 50 px along the other axis, so every 100 px tile window holds each phase
    exactly twice: tiles differ only along ``axis``, where a gain rises from 1 to 6.
    """
    band = noisy((600, 50), np.uint16).astype(np.float64) * np.linspace(1, 6, 600)[:, None]
    img = np.tile(band.astype(np.uint16), (1, 8))  # (600, 400): statistics vary along Y
    return (img if axis == "Y" else np.ascontiguousarray(img.T))[None]


@pytest.mark.parametrize("axis", ["Y", "X"])
def test_smoothed_tile_norm_equals_cellpose_along_each_axis(axis):
    """The smoothed tile norm (what ``--tile-norm`` users get) against cellpose's own ``normalize99_tile``.

    cellpose smooths its tile grid along Y only (``norm3D=False``: once). Our grid is smoothed along Y
    and X; on an image whose tile statistics vary along one axis only, smoothing along the other axis
    does nothing, so ours equals cellpose's on the image (axis Y) or on its transpose (axis X). Bugs this
    catches: smoothing one axis only, the wrong sigma, smoothing before the flat-tile fill, no smoothing
    (then the difference is 0.17); the old test compared with the same scipy calls the product makes.
    """
    normalize99_tile = cellpose("cellpose.transforms").normalize99_tile
    img = _varying_along(axis)
    ours, record = normalize(img, tile_size=100)  # tile_smooth=1.0, the default
    assert record["tile_smooth"] == 1.0
    if axis == "Y":
        ref = normalize99_tile(img[0].astype(np.float32), blocksize=100, norm3D=False)
    else:
        ref = normalize99_tile(np.ascontiguousarray(img[0].T, np.float32), blocksize=100, norm3D=False).T
    np.testing.assert_allclose(ours[0], ref, rtol=0, atol=2e-6)
    unsmoothed, _ = normalize(img, tile_size=100, tile_smooth=0.0)
    assert np.abs(unsmoothed[0] - ref).max() > 0.05  # smoothing matters on this image


def test_tile_norm_evens_out_a_brightness_gradient():
    img = noisy((1, 300, 1200), np.float32) * np.linspace(1, 20, 1200, dtype=np.float32)
    glob = normalize(img)[0][0]
    tile = normalize(img, tile_size=100)[0][0]
    left, right = slice(0, 200), slice(1000, 1200)
    # whole-image scaling leaves the dim side dim; tile scaling brings both sides to the same range
    assert np.percentile(glob[:, right], 99) > 5 * np.percentile(glob[:, left], 99)
    assert np.percentile(tile[:, right], 99) == pytest.approx(np.percentile(tile[:, left], 99), rel=0.25)


def test_tile_larger_than_image_equals_whole_image_scaling():
    img = noisy((2, 60, 80), np.uint16)
    np.testing.assert_allclose(normalize(img, tile_size=500)[0], normalize(img)[0], rtol=1e-6, atol=1e-6)


def test_tile_norm_constant_channel_stays_zero():
    img = noisy((2, 60, 80), np.uint16)
    img[0] = 9
    out, record = normalize(img, tile_size=30)
    assert not out[0].any() and record["per_channel"][0]["status"].startswith("constant")


# --- command line -------------------------------------------------------------------------------------


def _calibrated_input(tmp_path: Path) -> tuple[Path, np.ndarray]:
    img = noisy((4, 40, 50), np.uint16)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, img, imagej=True, metadata={"axes": "CYX", "unit": "micron"}, resolution=(1 / 0.3, 1 / 0.6))
    return path, img


def test_cli_writes_float32_cyx_with_calibration_and_record(tmp_path):
    src, img = _calibrated_input(tmp_path)
    out = tmp_path / "out" / "norm.tif"
    assert cli_main(["normalize", str(src), str(out), "--channels", "3,1", "--percentiles", "2", "98"]) == 0
    data, meta = read_image(out)
    assert data.dtype == np.float32 and data.shape == (2, 40, 50) and meta["axes"] == "CYX"
    assert meta["pixel_size"] == pytest.approx((0.6, 0.3)) and meta["unit"] == "micron"
    np.testing.assert_array_equal(data, reference(img[[3, 1]], percentile=(2.0, 98.0)))
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["cpsnake_version"] == __version__ and rec["channels"] == [3, 1]
    assert rec["source"] == {
        "path": str(src),
        "format": "tiff",
        "shape": [4, 40, 50],
        "dtype": "uint16",
        "axes": "CYX",
        "dropped_alpha": False,
    }
    assert rec["percentiles"] == [2.0, 98.0] and rec["invert"] is False and rec["tile_size"] == 0
    assert rec["pixel_size"] == pytest.approx([0.6, 0.3]) and rec["unit"] == "micron"
    assert [e["channel"] for e in rec["per_channel"]] == [3, 1]
    assert rec["per_channel"][0]["low"] == pytest.approx(float(np.percentile(img[3].astype(np.float32), 2.0)))
    assert sorted(p.name for p in out.parent.iterdir()) == ["norm.json", "norm.tif"]


def test_cli_low_high_invert_and_tile_options(tmp_path):
    src = REAL["grey8"]
    out = tmp_path / "n.tif"
    assert cli_main(["normalize", str(src), str(out), "--low-high", "0", "255", "--invert"]) == 0
    img, _ = read_image(src)
    np.testing.assert_array_equal(read_image(out)[0], reference(img, lowhigh=(0, 255), invert=True))
    assert cli_main(["normalize", str(src), str(out), "--tile-norm", "64"]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["mode"] == "tile" and rec["tile_size"] == 64 and len(rec["per_channel"][0]["low"]) == 5


def _stack(d: Path) -> Path:
    tifffile.imwrite(d / "stack.tif", noisy((3, 20, 20), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    return d / "stack.tif"


@pytest.mark.parametrize("norm3d", [False, True])
def test_cli_normalizes_a_stack_per_plane_or_as_a_whole(tmp_path, norm3d):
    src = _stack(tmp_path)
    out = tmp_path / "n.tif"
    assert cli_main(["normalize", str(src), str(out), *(["--norm3d"] if norm3d else [])]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    with tifffile.TiffFile(out) as tif:
        data, axes = tif.asarray(), tif.series[0].axes
    assert data.shape == (3, 20, 20) and axes == "ZYX" and doc["output"]["axes"] == "ZCYX"
    assert doc["scope"] == ("stack" if norm3d else "plane") and ("planes" in doc) != norm3d
    raw = tifffile.imread(src).astype(np.float32)
    if norm3d:  # one low/high for all planes
        lo, hi = np.percentile(raw, [1, 99])
        np.testing.assert_allclose(data, (raw - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
    else:
        for z in range(3):
            lo, hi = np.percentile(raw[z], [1, 99])
            np.testing.assert_allclose(data[z], (raw[z] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def _tif(d: Path, name: str, array: np.ndarray, **kw) -> Path:
    tifffile.imwrite(d / name, array, **kw)
    return d / name


def _raw(d: Path, name: str, raw: bytes) -> Path:
    (d / name).write_bytes(raw)
    return d / name


BAD_INPUTS = {
    "truncated": (
        lambda d: _raw(d, "cut.tif", REAL["grey16"].read_bytes()[:150_000]),
        "cut.tif: found a TIFF whose data cannot be read",
    ),
    "text named .tif": (
        lambda d: _raw(d, "notes.tif", b"plate 3, well B2\n"),
        "notes.tif: not an image (found text, not a TIFF",
    ),
    "no extension text": (lambda d: _raw(d, "README", b"# hello\n"), "README: not an image"),
    "empty": (lambda d: _raw(d, "empty.png", b""), "empty.png: found an empty file (0 bytes)"),
    "missing": (lambda d: d / "nothere.tif", "nothere.tif: no such file"),
    "all zero": (
        lambda d: _tif(d, "zero.tif", np.zeros((30, 40), np.uint16)),
        "zero.tif: found a constant image (every pixel is 0)",
    ),
    "constant rgb": (
        lambda d: _tif(d, "grey.tif", np.full((30, 40, 3), 128, np.uint8)),
        "grey.tif: found a constant image (every pixel is 128)",
    ),
    "nan": (
        lambda d: _tif(d, "nan.tif", np.where(np.eye(30, 40) > 0, np.nan, 1.0).astype(np.float32)),
        "nan.tif: found 30 NaN or infinite pixel values",
    ),
    "5-D": (
        lambda d: _tif(d, "five.ome.tif", noisy((2, 2, 2, 20, 20), np.uint8), ome=True, metadata={"axes": "TZCYX"}),
        "five.ome.tif: found a time series of Z stacks (axes 'TZCYX', shape (2, 2, 2, 20, 20)); "
        "expected a 2-D image, a Z "
        "stack or a time series of 2-D frames",
    ),
    "4 channels": (
        lambda d: _tif(d, "c4.tif", noisy((4, 20, 20), np.uint8), imagej=True, metadata={"axes": "CYX"}),
        "c4.tif: found 4 channels, expected at most 3; choose which go in with --channels",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_bad_input_is_one_line_and_no_output(tmp_path, capsys, case):
    make, expected = BAD_INPUTS[case]
    src = make(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = cli_main(["normalize", str(src), str(out_dir / "OUT.tif")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("cpsnake normalize: error: ")
    assert expected in err and str(tmp_path) in err
    assert list(out_dir.iterdir()) == []  # neither OUT.tif nor OUT.json, nor a temporary file


def test_cli_bad_channel_option(tmp_path, capsys):
    out = tmp_path / "o.tif"
    assert cli_main(["normalize", str(REAL["rgb"]), str(out), "--channels", "0,3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "channel 3 does not exist; the image has 3 channel(s)" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_cli_wrong_output_suffix(tmp_path, capsys):
    assert cli_main(["normalize", str(REAL["grey8"]), str(tmp_path / "o.png")]) == 1
    assert "expected .tif or .tiff" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_console_exit_code_and_single_stderr_line(tmp_path):
    src = _raw(tmp_path, "bad.tif", b"not a tiff at all")
    out = tmp_path / "OUT.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "cpsnake", "normalize", str(src), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "bad.tif: not an image" in proc.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()
