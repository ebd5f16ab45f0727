"""Large images read region by region (:mod:`cpsnake.io.regions`) and normalized from one streaming pass."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from synthetic import write_ome_zarr

from cpsnake.engine.normalize import normalize, select_channels
from cpsnake.engine.streamnorm import stream_values
from cpsnake.errors import CpsnakeError
from cpsnake.io import regions
from cpsnake.io.inputs import open_regions, read_image
from cpsnake.io.labels import read_labels
from cpsnake.io.omezarr import is_ome_zarr

RNG = np.random.default_rng(0)

TIFFS = {  # name: (array as stored, tifffile.imwrite options)
    "grey_contiguous": (RNG.integers(0, 60000, (1500, 1200)).astype(np.uint16), {}),
    "rgb_interleaved": (RNG.integers(0, 255, (700, 900, 3)).astype(np.uint8), {"photometric": "rgb"}),
    "rgba_tiled_zlib": (
        RNG.integers(0, 255, (700, 900, 4)).astype(np.uint8),
        {"photometric": "rgb", "extrasamples": ["unassalpha"], "tile": (128, 128), "compression": "zlib"},
    ),
    "cyx_imagej": (
        RNG.integers(0, 4000, (2, 600, 800)).astype(np.uint16),
        {"imagej": True, "metadata": {"axes": "CYX"}},
    ),
    "big_endian": (RNG.integers(0, 4000, (2, 600, 800)).astype(">u2"), {"byteorder": ">"}),
    "float_strips_above_224_cubed": (
        RNG.random((3000, 4000)).astype(np.float32),
        {"compression": "zlib", "rowsperstrip": 37},
    ),
    "bigtiff_tiled_lzw": (
        RNG.integers(0, 255, (4000, 3500)).astype(np.uint8),
        {"bigtiff": True, "tile": (256, 256), "compression": "lzw"},
    ),
    "int32_wide": (RNG.integers(-(2**30), 2**30, (500, 700)).astype(np.int32), {"tile": (64, 64)}),
}


@pytest.mark.parametrize("name", list(TIFFS))
def test_tiff_regions_and_streamed_values_equal_the_whole_image(tmp_path, name):
    """Every layout (contiguous, interleaved RGB, alpha dropped, planar channels, big-endian, strips, tiles,
    BigTIFF, codecs): any region equals the whole-image reader's pixels, and the normalization record of one
    streaming pass equals :func:`cpsnake.engine.normalize.normalize`'s on the whole image, to the bit (the subsample
    above 224**3 px and float64 arithmetic for wide values included), and so does every normalized region.

    Catches: a band's subsample grid not continuing the previous band's (rows ``first = -y0 % step``), a
    min/max over one band only, the alpha sample kept, byte order not swapped, Y/X offsets swapped.
    """
    from cpsnake.engine.normalize import scale

    data, opts = TIFFS[name]
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, data, **opts)
    whole, meta = read_image(path)
    with open_regions(path) as img:
        assert img.shape == whole.shape and img.meta["dropped_alpha"] == meta["dropped_alpha"]
        for y0, y1, x0, x1 in [
            (0, whole.shape[1], 0, whole.shape[2]),
            (13, 301, 77, 555),
            (whole.shape[1] - 5, whole.shape[1], 0, 9),
        ]:
            assert np.array_equal(img.read(y0, y1, x0, x1), whole[:, y0:y1, x0:x1])
        for kw in ({}, {"percentiles": (0.5, 99.8), "invert": True}, {"low_high": (10, 200)}):
            record = stream_values(regions.bands(img), img.shape, img.dtype, **kw)
            ref, ref_record = normalize(whole, **kw)
            assert record == ref_record
            # bands of 97 rows: the grid goes on
            assert stream_values(regions.bands(img, 97), img.shape, img.dtype, **kw) == ref_record
            assert np.array_equal(scale(img.read(13, 301, 77, 555), record), ref[:, 13:301, 77:555])
            if name == "float_strips_above_224_cubed" and not kw:
                assert record["per_channel"][0]["sample_step"] == [13, 17]  # cellpose's subsample, not every pixel


def test_streamed_values_with_channels_and_a_constant_channel(tmp_path):
    data = RNG.integers(0, 4000, (3, 400, 500)).astype(np.uint16)
    data[1] = 7
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    with open_regions(path) as img:
        for channels in ([2, 1], [1, 0, 2], None):
            ref = normalize(select_channels(data, channels))[1]
            assert stream_values(regions.bands(img), img.shape, img.dtype, channels) == ref
        record = stream_values(regions.bands(img), img.shape, img.dtype, [1, 0])
        assert "constant" in record["per_channel"][0]["status"]
        with pytest.raises(CpsnakeError, match="channel 3 does not exist"):
            stream_values(regions.bands(img), img.shape, img.dtype, [3])


def test_pyramidal_ome_tiff_is_read_at_full_resolution(tmp_path):
    data = RNG.integers(0, 60000, (1024, 1536)).astype(np.uint16)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        opts = {"tile": (256, 256), "compression": "zlib"}
        tw.write(data, subifds=2, metadata={"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}, **opts)
        tw.write(data[::2, ::2], subfiletype=1, **opts)
        tw.write(data[::4, ::4], subfiletype=1, **opts)
    with open_regions(path) as img:
        assert img.shape == (1, 1024, 1536) and img.meta["levels"] == 3 and img.chunks == (256, 256)
        assert img.meta["pixel_size"] == (0.25, 0.25)
        assert np.array_equal(img.read(100, 900, 300, 1400)[0], data[100:900, 300:1400])
    with open_regions(path, level=1) as img:
        assert img.shape == (1, 512, 768)
    with pytest.raises(CpsnakeError, match="3 pyramid level.*level 5"):
        open_regions(path, level=5)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_regions_values_and_calibration(tmp_path, version):
    data = RNG.integers(0, 4000, (2, 900, 1100)).astype(np.uint16)
    path = tmp_path / f"img{version}.zarr"
    write_ome_zarr(path, data, version)
    assert is_ome_zarr(path)
    with open_regions(path) as img:
        assert img.shape == (2, 900, 1100) and img.chunks == (256, 256) and img.meta["format"] == "ome-zarr"
        assert img.meta["levels"] > 1 and img.meta["pixel_size"] == (0.5, 0.5) and img.meta["unit"] == "micron"
        assert np.array_equal(img.read(10, 300, 20, 700), data[:, 10:300, 20:700])
        assert stream_values(regions.bands(img), img.shape, img.dtype) == normalize(data)[1]


def test_corrupt_chunk_is_one_line_naming_the_rows(tmp_path):
    data = RNG.integers(0, 60000, (1024, 1024)).astype(np.uint16)
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = bytes(RNG.integers(0, 256, count, dtype=np.uint8))
    path.write_bytes(bytes(raw))
    with open_regions(path) as img:
        with pytest.raises(CpsnakeError) as exc:
            stream_values(regions.bands(img), img.shape, img.dtype)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and "cannot be decoded" in msg and "export it again" in msg


def test_truncated_uncompressed_tiff_is_one_line(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, RNG.integers(0, 255, (800, 900)).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:-5000])
    with open_regions(path) as img, pytest.raises(CpsnakeError, match="shorter than its header.*truncated"):
        stream_values(regions.bands(img), img.shape, img.dtype)


def test_ome_zarr_without_multiscales_or_level_is_one_line(tmp_path):
    import zarr

    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(100, 100), dtype="uint8")
    with pytest.raises(CpsnakeError, match="not a Zarr group|without OME-NGFF multiscales"):
        open_regions(plain)
    group = tmp_path / "group.zarr"
    g = zarr.open_group(str(group), mode="w")
    g.create_array("0", shape=(100, 100), dtype="uint8")
    with pytest.raises(CpsnakeError, match="without OME-NGFF multiscales metadata.*bioformats2raw"):
        open_regions(group)
    broken = tmp_path / "broken.zarr"
    write_ome_zarr(broken, RNG.integers(0, 255, (1, 300, 300)).astype(np.uint8), "0.4")
    shutil.rmtree(broken / "s0")
    with pytest.raises(CpsnakeError, match="level 0 .*'s0'.* missing or unreadable.*incomplete"):
        open_regions(broken)
    doc = json.loads((broken / ".zattrs").read_text())
    doc["multiscales"][0]["datasets"] = []
    (broken / ".zattrs").write_text(json.dumps(doc))
    with pytest.raises(CpsnakeError, match="found 0 pyramid level"):
        open_regions(broken)
    with pytest.raises(CpsnakeError, match="not a Zarr group"):
        open_regions(tmp_path)


def test_nan_in_a_streamed_float_image_is_one_line(tmp_path):
    data = RNG.random((600, 700)).astype(np.float32)
    data[555, 3] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, tile=(128, 128))
    with open_regions(path) as img, pytest.raises(CpsnakeError, match="1 NaN or infinite.*Remove NaNs"):
        stream_values(regions.bands(img), img.shape, img.dtype)


def test_segment_reads_an_ome_zarr_block_by_block_with_the_whole_images_labels(tmp_path):
    """`cpsnake segment` on an OME-Zarr of the demo image, in blocks read from the Zarr chunks (never the
    whole image), gives the labels of the same image as a TIFF segmented whole; the calibration comes from
    the multiscales metadata and the provenance says how it was read.

    Catches: normalization values from a block instead of the whole image, a region offset, the labels
    built in the Zarr store not numbered as the whole image's.
    """
    from paths import ROOT

    from cpsnake.cli import main

    src = sorted((ROOT / "resources/demo/images").glob("bbbc039_*.tif"))[0]
    img = read_image(src)[0]
    write_ome_zarr(tmp_path / "demo.zarr", img, "0.5", chunks=(1, 100, 128), scale=(1.0, 0.65, 0.65))
    tifffile.imwrite(tmp_path / "demo.tif", img[0])
    assert (
        main(
            ["segment", str(tmp_path / "demo.zarr"), "--out", str(tmp_path / "z"), "--block-size", "512", "--ome-zarr"]
        )
        == 0
    )
    assert main(["segment", str(tmp_path / "demo.tif"), "--out", str(tmp_path / "w"), "--block-size", "0"]) == 0
    got, meta = read_labels(tmp_path / "z" / "masks" / "demo.tif")
    whole = read_labels(tmp_path / "w" / "masks" / "demo.tif")[0]
    assert whole.max() > 30 and np.array_equal(got, whole)
    import zarr

    assert np.array_equal(
        zarr.open_array(str(tmp_path / "z" / "masks" / "demo.zarr" / "labels" / "cells" / "0"))[:], got
    )
    assert meta["pixel_size"] == pytest.approx((0.65, 0.65))
    prov = json.loads((tmp_path / "z" / "provenance" / "demo.json").read_text())
    assert prov["parameters"]["read"] == "regions" and prov["normalization"]["blocks"]["blocks"] == 4


def test_block_options_that_need_the_whole_image_are_one_line(tmp_path, capsys):
    from cpsnake.cli import main

    path = tmp_path / "t.tif"
    tifffile.imwrite(path, RNG.integers(0, 255, (600, 600)).astype(np.uint8), tile=(128, 128))
    assert main(["segment", str(path), "--out", str(tmp_path / "o"), "--block-size", "512", "--tile-norm", "200"]) == 1
    err = capsys.readouterr().err
    assert "--tile-norm 200 with an image read block by block" in err and str(path) in err
    assert not (tmp_path / "o" / "masks" / "t.tif").exists()


def test_label_zarr_is_read_by_ome_zarr_py_and_validates_as_ngff_05(tmp_path):
    """`cpsnake.io.ngff.write_label_zarr` from a Zarr array on disk: ome-zarr-py's reader finds a Label +
    Multiscales node whose levels are the labels taken every 2**k-th pixel, the groups validate against the
    NGFF 0.5 models (ome-zarr-models: ``Labels``, ``ImageLabel``), and the scale carries the pixel size.

    Catches: levels averaged or shifted, a missing ``image-label``, the labels list not naming the image,
    metadata outside ``"ome"`` (NGFF 0.5), the pixel size of level 0 used for every level.
    """
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models import open_ome_zarr

    from cpsnake.io.ngff import write_label_zarr

    lab = RNG.integers(0, 70000, (2500, 1300)).astype(np.int32)
    src = zarr.create_array(str(tmp_path / "src.zarr"), shape=lab.shape, chunks=(700, 700), dtype="int32")
    src[:] = lab
    out = tmp_path / "m.zarr"
    assert write_label_zarr(out, src, pixel_size=(0.5, 0.25), unit="micron") == 3
    node = [
        n for n in Reader(parse_url(str(out / "labels" / "cells")))() if "Label" in [type(s).__name__ for s in n.specs]
    ][0]
    for k, level in enumerate(node.data):
        assert np.array_equal(np.asarray(level), lab[:: 2**k, :: 2**k])
    assert type(open_ome_zarr(zarr.open_group(str(out / "labels"), mode="r"))).__name__ == "Labels"
    assert type(open_ome_zarr(zarr.open_group(str(out / "labels" / "cells"), mode="r"))).__name__ == "ImageLabel"
    ms = json.loads((out / "labels" / "cells" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [2.0, 1.0]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert not list(tmp_path.glob(".m.zarr*"))  # the temporary folder was renamed


def test_ome_zarr_is_an_input_like_any_image(tmp_path):
    """Every step reads a 2-D OME-Zarr folder whole through :func:`cpsnake.io.inputs.read_image` (size checked from
    its metadata first); `cpsnake samples` finds ``.zarr`` folders, names them without ``.ome.zarr`` and
    reads their header; an OME-Zarr stack is refused with one line."""
    from cpsnake.run import samples

    data = RNG.integers(0, 4000, (2, 300, 400)).astype(np.uint16)
    write_ome_zarr(tmp_path / "a.ome.zarr", data, "0.5")
    tifffile.imwrite(tmp_path / "b.tif", data[0])
    img, meta = read_image(tmp_path / "a.ome.zarr")
    assert np.array_equal(img, data) and meta["format"] == "ome-zarr" and meta["stack_axes"] == ""
    with pytest.raises(CpsnakeError, match="more than the limit"):
        read_image(tmp_path / "a.ome.zarr", max_pixels=1000)
    found = samples.inspect(samples.discover(str(tmp_path)))
    assert [(s.sample, s.height, s.width, s.channels_in_file, s.block) for s in found] == [
        ("a", 300, 400, 2, 0),
        ("b", 300, 400, 1, 0),
    ]
    assert [s.block for s in samples.inspect(samples.discover(str(tmp_path)), block_size=512)] == [512, 512]
    from cpsnake.run.provenance import folder_sha256

    before = folder_sha256(tmp_path / "a.ome.zarr")  # provenance: a folder's files, paths and contents
    chunk = sorted(p for p in (tmp_path / "a.ome.zarr").rglob("*") if p.is_file() and p.parent.name == "0")[-1]
    chunk.write_bytes(chunk.read_bytes() + b"x")
    assert folder_sha256(tmp_path / "a.ome.zarr") != before
    import zarr

    stack = tmp_path / "s.zarr"
    g = zarr.open_group(str(stack), mode="w", zarr_format=2)
    g.create_array("0", shape=(3, 64, 64), dtype="uint8")
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": t} for n, t in (("z", "space"), ("y", "space"), ("x", "space"))],
            "datasets": [{"path": "0"}],
        }
    ]
    with pytest.raises(CpsnakeError, match="found an OME-Zarr stack .*expected a 2-D OME-Zarr image"):
        read_image(stack)
