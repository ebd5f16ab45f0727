"""Reading input images (io.read_image), calibration (io.read_calibration) and the TIFF writers."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from paths import DATA as TEST_DATA
from PIL import Image

from cpsnake.errors import CpsnakeError
from cpsnake.io.calibration import read_calibration
from cpsnake.io.flows import read_flows, write_flows
from cpsnake.io.inputs import read_image
from cpsnake.io.labels import read_labels, write_labels
from cpsnake.io.tiff import write_tiff

DATA = TEST_DATA / "images"
GREY16 = DATA / "bbbc039_O13_s3_uint16.tif"
RGB = DATA / "dsb2018_0e21d7b3eea8cdbb_rgb.tif"
GREY8 = DATA / "dsb2018_4ff152d76db095f7_uint8.tif"


def _ramp(shape, dtype=np.uint16):
    return (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)


# --- real files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, shape, dtype, axes",
    [
        (GREY16, (1, 520, 696), np.uint16, "YX"),
        (RGB, (3, 256, 320), np.uint8, "YXS"),
        (GREY8, (1, 256, 256), np.uint8, "YX"),
    ],
)
def test_real_images_read_as_cyx(path, shape, dtype, axes):
    data, meta = read_image(path)
    assert data.shape == shape and data.dtype == dtype
    assert meta["axes"] == axes and meta["format"] == "tiff" and meta["dtype"] == np.dtype(dtype).name
    ref = tifffile.imread(path)
    expect = ref[None] if ref.ndim == 2 else np.moveaxis(ref, -1, 0)
    np.testing.assert_array_equal(data, expect)


def test_files_written_by_imagej_keep_calibration_and_channels():
    data, meta = read_image(DATA / "imagej_16bit_calibrated.tif")
    assert data.shape == (1, 30, 40) and data.dtype == np.uint16
    assert meta["pixel_size"] == pytest.approx((0.5, 0.325)) and meta["unit"] == "micron"
    data, meta = read_image(DATA / "imagej_3channel_mm.tif")
    assert data.shape == (3, 30, 40) and meta["axes"] == "CYX"
    assert meta["pixel_size"] == pytest.approx((2.0, 2.0)) and meta["unit"] == "mm"


def test_uint16_keeps_12_bit_values():
    data, _ = read_image(GREY16)
    assert 255 < data.max() < 4096


# --- TIFF layouts -------------------------------------------------------------------------------


def test_multichannel_imagej_tiff_keeps_channel_order(tmp_path):
    a = np.stack([_ramp((20, 30)) + 1000 * c for c in range(4)])
    f = tmp_path / "c4.tif"
    tifffile.imwrite(f, a, imagej=True, metadata={"axes": "CYX"})
    data, meta = read_image(f)
    assert meta["axes"] == "CYX"
    np.testing.assert_array_equal(data, a)


def test_ome_tiff_channels_and_calibration(tmp_path):
    a = np.stack([_ramp((20, 30)) * (c + 1) for c in range(2)])
    f = tmp_path / "a.ome.tif"
    tifffile.imwrite(f, a, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4})
    data, meta = read_image(f)
    np.testing.assert_array_equal(data, a)
    assert meta["pixel_size"] == pytest.approx((0.4, 0.3))
    assert meta["unit"] == "µm"


def test_ome_tiff_with_only_x_size_has_square_pixels(tmp_path):
    f = tmp_path / "x.ome.tif"
    tifffile.imwrite(f, _ramp((20, 30)), ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65})
    with tifffile.TiffFile(f) as tif:
        assert read_calibration(tif) == ((0.65, 0.65), "µm")


def test_imagej_tiff_calibration(tmp_path):
    f = tmp_path / "ij.tif"
    tifffile.imwrite(f, _ramp((20, 30)), imagej=True, metadata={"unit": "micron"}, resolution=(1 / 0.25, 1 / 0.5))
    _, meta = read_image(f)
    assert meta["pixel_size"] == pytest.approx((0.5, 0.25)) and meta["unit"] == "micron"


def test_plain_tiff_without_calibration(tmp_path):
    f = tmp_path / "plain.tif"
    tifffile.imwrite(f, _ramp((20, 30)))
    _, meta = read_image(f)
    assert meta["pixel_size"] is None and meta["unit"] is None


def test_tiff_72_dpi_is_no_calibration(tmp_path):
    f = tmp_path / "dpi.tif"
    tifffile.imwrite(f, _ramp((20, 30)), resolution=(72, 72), resolutionunit="INCH")
    _, meta = read_image(f)
    assert meta["pixel_size"] is None


def test_tiff_centimetre_resolution_becomes_micron(tmp_path):
    f = tmp_path / "cm.tif"
    tifffile.imwrite(f, _ramp((20, 30)), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    _, meta = read_image(f)
    assert meta["pixel_size"] == pytest.approx((0.5, 0.5)) and meta["unit"] == "micron"


def test_write_tiff_calibration_round_trip(tmp_path):
    f = tmp_path / "w.tif"
    write_tiff(f, np.zeros((2, 8, 9), np.float32), axes="CYX", pixel_size=(0.7, 0.35), unit="um")
    data, meta = read_image(f)
    assert data.shape == (2, 8, 9) and data.dtype == np.float32
    assert meta["pixel_size"] == pytest.approx((0.7, 0.35)) and meta["unit"] == "micron"


def test_rgba_tiff_drops_alpha(tmp_path):
    a = np.dstack([_ramp((10, 12), np.uint8) + k for k in range(4)])
    f = tmp_path / "rgba.tif"
    tifffile.imwrite(f, a, photometric="rgb")
    data, meta = read_image(f)
    assert data.shape == (3, 10, 12) and meta["dropped_alpha"]
    np.testing.assert_array_equal(data, np.moveaxis(a[..., :3], -1, 0))


def test_stack_reads_as_zcyx(tmp_path):
    a = _ramp((4, 2, 10, 12), np.uint8)
    f = tmp_path / "z.tif"
    tifffile.imwrite(f, a, imagej=True, metadata={"axes": "ZCYX"})
    data, meta = read_image(f)
    assert data.shape == (4, 2, 10, 12) and meta["axes"] == "ZCYX"
    np.testing.assert_array_equal(data, a)


def test_time_series_reads_as_planes(tmp_path):
    a = _ramp((3, 10, 12), np.uint16)
    f = tmp_path / "t.tif"
    tifffile.imwrite(f, a, imagej=True, metadata={"axes": "TYX", "finterval": 2.5})
    data, meta = read_image(f)
    assert data.shape == (3, 1, 10, 12) and meta["stack_axes"] == "T"
    assert meta["frame_interval"] == 2.5 and meta["z_step"] is None


def test_imagej_hyperstack_tzcyx_keeps_both_stack_axes_and_calibration(tmp_path):
    a = _ramp((2, 3, 2, 10, 12), np.uint16)
    f = tmp_path / "tz.tif"
    tifffile.imwrite(
        f,
        a,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "micron", "finterval": 30.0},
    )
    data, meta = read_image(f)
    assert data.shape == (2, 3, 2, 10, 12) and meta["stack_axes"] == "TZ"
    np.testing.assert_array_equal(data, a)
    assert meta["pixel_size"] == (0.5, 0.5) and meta["z_step"] == 2.0 and meta["frame_interval"] == 30.0


def test_ome_tiff_tzcyx_reads_voxel_depth_and_time_increment(tmp_path):
    a = _ramp((2, 3, 2, 10, 12), np.uint8)
    f = tmp_path / "5d.ome.tif"
    tifffile.imwrite(
        f,
        a,
        ome=True,
        metadata={
            "axes": "TZCYX",
            "PhysicalSizeX": 0.25,
            "PhysicalSizeY": 0.25,
            "PhysicalSizeZ": 1.5,
            "TimeIncrement": 4.0,
        },
    )
    data, meta = read_image(f)
    assert data.shape == (2, 3, 2, 10, 12) and meta["stack_axes"] == "TZ"
    np.testing.assert_array_equal(data, a)
    assert meta["pixel_size"] == (0.25, 0.25) and meta["z_step"] == 1.5 and meta["frame_interval"] == 4.0


def test_zcyx_stack_has_stack_axis_z(tmp_path):
    f = tmp_path / "z.tif"
    tifffile.imwrite(f, _ramp((4, 10, 12), np.uint8), imagej=True, metadata={"axes": "ZYX", "spacing": 0.0})
    data, meta = read_image(f)
    assert data.shape == (4, 1, 10, 12) and meta["stack_axes"] == "Z"
    assert meta["z_step"] is None  # a zero spacing is no calibration


@pytest.mark.parametrize("n, shape", [(2, (2, 10, 12)), (3, (3, 10, 12))])
def test_axis_without_metadata_up_to_3_entries_is_channels(tmp_path, n, shape):
    f = tmp_path / "q.tif"
    tifffile.imwrite(f, _ramp((n, 10, 12)).astype(np.float32), photometric="minisblack")
    data, meta = read_image(f)
    assert data.shape == shape and meta["stack_axes"] == ""


def test_planes_without_axis_metadata_are_refused_with_how_to_name_them(tmp_path):
    f = tmp_path / "q5.tif"
    tifffile.imwrite(f, _ramp((5, 10, 12)).astype(np.float32), photometric="minisblack")
    with pytest.raises(CpsnakeError, match=r"q5\.tif: found 5 planes on an axis without a name .*imagej=True"):
        read_image(f)


def test_singleton_axes_are_dropped(tmp_path):
    f = tmp_path / "s.tif"
    tifffile.imwrite(f, _ramp((1, 1, 2, 10, 12)), imagej=True, metadata={"axes": "TZCYX"})
    data, _ = read_image(f)
    assert data.shape == (2, 10, 12)


def test_two_unnamed_plane_axes_are_an_error(tmp_path):
    f = tmp_path / "4d.tif"
    tifffile.imwrite(f, _ramp((5, 6, 10, 12), np.uint8), photometric="minisblack")
    with pytest.raises(CpsnakeError, match=r"4d\.tif: found 5 planes on an axis without a name"):
        read_image(f)


# --- PNG and JPEG ---------------------------------------------------------------------------------


def test_png_16_bit_grey_keeps_16_bits(tmp_path):
    a = (np.arange(40 * 50).reshape(40, 50) * 31).astype(np.uint16)
    f = tmp_path / "g16.png"
    Image.fromarray(a).save(f)
    data, meta = read_image(f)
    assert data.dtype == np.uint16 and meta["format"] == "png"
    np.testing.assert_array_equal(data[0], a)


def test_png_16_bit_rgb_keeps_16_bits(tmp_path):
    a = (np.arange(20 * 30 * 3).reshape(20, 30, 3) * 97 % 65536).astype(np.uint16)
    f = tmp_path / "rgb16.png"
    f.write_bytes(imagecodecs.png_encode(a))
    data, _ = read_image(f)
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, np.moveaxis(a, -1, 0))


def test_png_rgba_drops_alpha(tmp_path):
    a = _ramp((20, 30, 4), np.uint8)
    f = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(f)
    data, meta = read_image(f)
    assert data.shape == (3, 20, 30) and meta["dropped_alpha"]
    np.testing.assert_array_equal(data, np.moveaxis(a[..., :3], -1, 0))


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_jpeg(tmp_path, mode, channels):
    a = _ramp((24, 32, 3), np.uint8)
    f = tmp_path / "a.jpg"
    Image.fromarray(a).convert(mode).save(f, quality=95)
    data, meta = read_image(f)
    assert data.shape == (channels, 24, 32) and data.dtype == np.uint8 and meta["format"] == "jpeg"


def test_format_comes_from_content_not_extension(tmp_path):
    a = _ramp((20, 30), np.uint8)
    f = tmp_path / "named_tif_but_png.tif"
    Image.fromarray(a).save(f, format="PNG")
    g = tmp_path / "no_extension"
    tifffile.imwrite(g, a)
    for path in (f, g):
        data, _ = read_image(path)
        np.testing.assert_array_equal(data[0], a)


# --- bad input ------------------------------------------------------------------------------------


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def _truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[: int(len(raw) * keep)])
    return dst


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: d / "missing.tif", r"missing\.tif: no such file"),
        (lambda d: _write(d / "empty.tif", b""), r"empty\.tif: found an empty file"),
        (
            lambda d: _write(d / "text.tif", b"hello\n"),
            r"text\.tif: not an image \(found text, not a TIFF.*expected TIFF",
        ),
        (lambda d: _truncate(GREY16, d / "half.tif"), r"half\.tif: found a TIFF whose data cannot be read"),
        (lambda d: _truncate(GREY16, d / "head.tif", 0.00002), r"head\.tif: found a TIFF whose data cannot be read"),
        (lambda d: d, r": is a folder"),
    ],
)
def test_unreadable_files_are_one_clear_error(tmp_path, make, pattern):
    with pytest.raises(CpsnakeError, match=pattern):
        read_image(make(tmp_path))


def test_truncated_compressed_tiff_is_an_error(tmp_path):
    f = tmp_path / "z.tif"
    tifffile.imwrite(f, (np.random.default_rng(0).integers(0, 4000, (64, 80))).astype(np.uint16), compression="zlib")
    g = _truncate(f, tmp_path / "ztrunc.tif", 0.6)
    with pytest.raises(CpsnakeError, match=r"ztrunc\.tif: found a TIFF whose data cannot be"):
        read_image(g)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg_are_errors(tmp_path, fmt):
    f = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(f, format=fmt)
    g = _truncate(f, tmp_path / f"cut.{fmt.lower()}")
    with pytest.raises(CpsnakeError, match=rf"cut\.{fmt.lower()}: found a {fmt} whose data cannot be decoded"):
        read_image(g)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_an_error(tmp_path, bad):
    a = np.ones((10, 12), np.float32)
    a[3, 4] = bad
    a[5, 6] = bad
    f = tmp_path / "nan.tif"
    tifffile.imwrite(f, a)
    with pytest.raises(CpsnakeError, match=r"nan\.tif: found 2 NaN or infinite pixel values; expected finite"):
        read_image(f)


def test_complex_data_is_an_error(tmp_path):
    f = tmp_path / "c.tif"
    tifffile.imwrite(f, np.ones((10, 12), np.complex64))
    with pytest.raises(CpsnakeError, match=r"c\.tif: found pixels of type complex64"):
        read_image(f)


# --- existing writers / readers -------------------------------------------------------------------


def test_flows_round_trip(tmp_path):
    flows = np.random.default_rng(0).normal(size=(3, 8, 9)).astype(np.float32)
    write_flows(tmp_path / "f.tif", flows, pixel_size=(0.5, 0.5), unit="um")
    back, meta = read_flows(tmp_path / "f.tif")
    np.testing.assert_array_equal(back, flows)
    assert meta["pixel_size"] == pytest.approx((0.5, 0.5))


def test_labels_round_trip(tmp_path):
    labels = np.zeros((8, 9), np.int32)
    labels[2:4, 3:6] = 7
    assert write_labels(tmp_path / "l.tif", labels) == np.uint16
    back, meta = read_labels(tmp_path / "l.tif")
    np.testing.assert_array_equal(back, labels)
    assert meta["pixel_size"] is None
