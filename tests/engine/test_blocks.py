"""Block-wise segmentation of a large image (:mod:`cpsnake.engine.blocks`, :mod:`cpsnake.engine.follow_block`)."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import ellipses, nuclei_mosaic

from cpsnake.engine import blocks, dynamics
from cpsnake.engine.follow_block import follow_points, step_field
from cpsnake.errors import CpsnakeError


def _follow(dP, cell, niter, origin=(0, 0), full=None):
    full = full or cell.shape
    ys, xs = (a.astype(np.int64) for a in np.nonzero(cell))
    out = np.empty((2, ys.size), np.float32)
    follow_points(step_field(dP, cell, full), ys, xs, out, 0, ys.size, niter, full[0], full[1], *origin)
    return out


@pytest.mark.parametrize("shape, niter", [((64, 80), 200), ((37, 129), 50), ((2, 300), 17)])
def test_compiled_follower_equals_grid_sample_to_the_bit(shape, niter):
    """Random (chaotic) fields: the compiled follower's end points are torch's ``grid_sample`` path's
    (:func:`cpsnake.engine.dynamics.follow_flows`, cellpose's arithmetic) to the bit.

    Catches: the fused multiply-adds of torch's kernel left out (58% of sample points then differ in
    the last bit, and chaos spreads it), another corner order, the step field scaled in float64.
    """
    rng = np.random.default_rng(shape[0])
    dP = rng.normal(0, 3, (2, *shape)).astype(np.float32)
    cell = rng.random(shape) > 0.3
    step = dP * cell
    step /= np.float32(5.0)
    ref = dynamics.follow_flows(step, np.nonzero(cell), niter=niter)
    assert np.array_equal(_follow(dP, cell, niter), ref)


def test_a_crop_ends_where_the_whole_image_does():
    """A crop followed with the whole image's sizes: every pixel whose path stays in the crop (here all: the
    field is zero outside it) ends exactly where it ends in the whole image; followed as an image of its own
    size, many end elsewhere in the last bits (why blocks need this)."""
    rng = np.random.default_rng(5)
    Y, X, (y0, y1, x0, x1) = 120, 150, (17, 101, 9, 133)
    dP = rng.normal(0, 3, (2, Y, X)).astype(np.float32)
    cell = np.zeros((Y, X), bool)
    cell[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > 0.3
    whole = _follow(dP, cell, 200)
    crop = _follow(dP[:, y0:y1, x0:x1], cell[y0:y1, x0:x1], 200, origin=(y0, x0), full=(Y, X))
    assert np.array_equal(crop, whole)
    alone = _follow(dP[:, y0:y1, x0:x1], cell[y0:y1, x0:x1], 200) + np.array([[y0], [x0]], np.float32)
    assert not np.array_equal(alone, whole)


@pytest.mark.parametrize("diameter, augment", [(None, False), (24.0, False), (None, True)])
def test_region_flows_equal_the_whole_images(tiny_model, diameter, augment):
    """Flows of regions (inside, at the corners, the whole) taken from the whole image's tile grid equal
    :func:`cpsnake.engine.infer.predict` on the whole image, with resizing for a diameter and with flip augmentation.

    Catches: a block tiled on its own (other tile positions), tiles blended in another order or with the
    block's own padding, the resize taps of the block instead of the image's, flips by the block's tile index.
    """
    from cpsnake.engine.infer import predict
    from cpsnake.models.registry import load_model

    net = load_model(tiny_model, device="cpu")
    rng = np.random.default_rng(0)
    img = rng.random((2, 300, 420)).astype(np.float32)
    whole = predict(net, img, diameter=diameter, augment=augment)
    read = lambda y0, y1, x0, x1: img[:, y0:y1, x0:x1]  # noqa: E731
    for region in [(0, 300, 0, 420), (40, 177, 250, 420), (0, 1, 0, 5), (299, 300, 419, 420)]:
        got = blocks.region_flows(net, read, img.shape[1:], region, channels=2, diameter=diameter, augment=augment)
        y0, y1, x0, x1 = region
        assert np.array_equal(got, whole[:, y0:y1, x0:x1]), region


def _through_blocks(lab, block, halo, store=None):
    """Known labels through the block machinery: each block 'reconstructs' its read region as the crop of
    the labels (objects cut by the crop become partial objects there), renumbered as a reconstruction would."""
    st = blocks.Assembler(lab.shape, store)
    for b in blocks.block_grid(lab.shape, block, halo):
        y0, y1, x0, x1 = b.read
        st.add(b, dynamics.renumber(lab[y0:y1, x0:x1].copy()))
    return st.finish()


def test_known_labels_reassemble_exactly():
    """(b) Known labels (160 ellipses, many across the 64-px block borders, in pieces where they overlap)
    cut into blocks with a halo above the largest radius come back exactly: same pixels, same ids, each
    object once, none reported cut.

    Catches: an object kept by two blocks or by none, ids offset between blocks, ids not renumbered in
    raster order, cores that do not tile the image (the last short row and column).
    """
    lab = ellipses()
    got, report = _through_blocks(lab, block=64, halo=24)
    assert report["cut"] == 0 and report["conflict_pixels"] == 0 and report["objects"] == lab.max()
    assert np.array_equal(got, lab)
    crossing = {int(v) for b in range(64, 340, 64) for v in np.unique(lab[:, b - 1 : b + 1] if b < 340 else 0) if v}
    assert len(crossing) > 20


def test_known_labels_reassemble_exactly_in_a_zarr_array_on_disk(tmp_path):
    """The label image built in a Zarr array (chunks that do not line up with the blocks, a renumbering band
    smaller than the image) instead of memory: the same labels and report as in memory."""
    import zarr

    lab = ellipses()
    store = zarr.create_array(str(tmp_path / "l.zarr"), shape=lab.shape, chunks=(50, 70), dtype="int32", fill_value=0)
    band, blocks.Assembler.BAND = blocks.Assembler.BAND, 33
    try:
        got, report = _through_blocks(lab, block=64, halo=24, store=store)
    finally:
        blocks.Assembler.BAND = band
    assert got is store and report == _through_blocks(lab, block=64, halo=24)[1]
    assert np.array_equal(store[:], lab)


def test_too_small_halo_is_reported_with_the_fix():
    lab = ellipses(n=40, r=(15, 30))
    _, report = _through_blocks(lab, block=64, halo=6)
    report.update(halo=6)
    assert report["cut"] > 0
    advice = blocks.halo_advice(report)
    assert "--block-halo" in advice and "halo 6 px" in advice
    assert blocks.halo_advice({"cut": 0, "halo": 6}) is None


def test_grid_cores_tile_the_image_and_small_blocks_are_refused(tiny_model):
    from cpsnake.models.registry import load_model

    grid = blocks.block_grid((1000, 700), 256, 40)
    cover = np.zeros((1000, 700), int)
    for b in grid:
        y0, y1, x0, x1 = b.core
        cover[y0:y1, x0:x1] += 1
        assert b.read == (max(0, y0 - 40), min(1000, y1 + 40), max(0, x0 - 40), min(700, x1 + 40))
    assert (cover == 1).all() and len(grid) == 4 * 3
    net = load_model(tiny_model, device="cpu")
    with pytest.raises(CpsnakeError, match="at least 2 tiles"):
        blocks.segment_blocks(net, lambda *r: None, (1000, 1000), channels=1, block=300, halo=32)


def test_blockwise_segment_equals_the_whole_image(tmp_path):
    """(a) `cpsnake segment --block-size 512` on a 1024 x 1024 mosaic of real nuclei with the bundled model
    (4 blocks, about 900 nuclei, 19 of them across the block borders): the same labels as `--block-size 0`, pixel for
    pixel
    and id for id (so every object matched at IoU 1 and none split at a border), and the same ROIs, table
    and overlay; the report is in the provenance.

    Catches: anything that makes a block's flows or masks differ from the whole image's (tile grid, blend
    order, the follower's arithmetic, the flow check's diffusion length, max_size_fraction of the block).
    """
    import json
    import zipfile

    import pandas as pd
    import tifffile

    from cpsnake.cli import main

    img = tmp_path / "mosaic.tif"
    tifffile.imwrite(img, nuclei_mosaic())
    for n in (0, 512):
        assert main(["segment", str(img), "--out", str(tmp_path / f"b{n}"), "--block-size", str(n)]) == 0
    whole = tifffile.imread(tmp_path / "b0" / "masks" / "mosaic.tif")
    got = tifffile.imread(tmp_path / "b512" / "masks" / "mosaic.tif")
    across = (set(whole[511].tolist()) & set(whole[512].tolist())) | (
        set(whole[:, 511].tolist()) & set(whole[:, 512].tolist())
    )
    assert whole.max() > 500 and len(across - {0}) >= 15
    assert np.array_equal(got, whole)
    # the other files, written window by window from the labels on disk (cpsnake.export.blockout), are the whole
    # image's too: the same ROIs, overlay and table (less the flow columns, which need the whole image's flows)
    with (
        zipfile.ZipFile(tmp_path / "b0" / "rois" / "mosaic.zip") as a,
        zipfile.ZipFile(tmp_path / "b512" / "rois" / "mosaic.zip") as b,
    ):
        assert a.namelist() == b.namelist() and all(a.read(n) == b.read(n) for n in a.namelist())
    assert (tmp_path / "b0" / "overlays" / "mosaic.png").read_bytes() == (
        tmp_path / "b512" / "overlays" / "mosaic.png"
    ).read_bytes()
    t0 = pd.read_csv(tmp_path / "b0" / "measurements" / "mosaic.csv", dtype=str)
    t1 = pd.read_csv(tmp_path / "b512" / "measurements" / "mosaic.csv", dtype=str)
    assert list(t0.columns) == list(t1.columns) + ["flow_error", "cellprob"] and t0[t1.columns].equals(t1)
    prov = json.loads((tmp_path / "b512" / "provenance" / "mosaic.json").read_text())
    assert prov["normalization"]["blocks"]["blocks"] == 4 and prov["normalization"]["blocks"]["cut"] == 0
    assert prov["parameters"]["block_size"] == 512 and prov["parameters"]["read"] == "regions"


@pytest.mark.slow
def test_hundreds_of_nuclei_across_block_borders_keep_the_whole_images_labels():
    """(a) at scale: a 2560 x 2560 mosaic of real nuclei in 25 blocks of 512 px (halo 96), 5,836 nuclei of
    which 203 cross a block border, segmented block by block with the bundled model: the labels are the whole
    image's, pixel for pixel and id for id (so every object matched at IoU 1 and none split at a border), and
    no object is reported cut. `benchmarks/check_block_seams.py` runs the same check on 4096 x 4096 px.

    Catches: what the 1024 x 1024 test catches, where it happens only at some of hundreds of seams (ambiguous
    paths that a block follows differently, ownership of objects whose centre sits on a core's edge)."""
    from paths import ROOT

    from cpsnake.models.registry import load_model
    from cpsnake.run.segment import segment_image

    img = nuclei_mosaic(2560)[np.newaxis]
    net = load_model(ROOT / "resources" / "models" / "nuclei_small.pt", device="cpu")
    whole = segment_image(net, img)[0]
    got, _, record, _ = segment_image(net, img, block=512, halo=96)
    crossing = set()
    for b in range(512, 2560, 512):
        crossing |= set(whole[b - 1][whole[b - 1] == whole[b]].tolist())
        crossing |= set(whole[:, b - 1][whole[:, b - 1] == whole[:, b]].tolist())
    crossing.discard(0)
    assert len(crossing) >= 200 and whole.max() > 4000
    assert record["blocks"]["blocks"] == 25 and record["blocks"]["cut"] == 0
    assert np.array_equal(got, whole)


def test_block_size_below_two_tiles_is_one_clear_line(tmp_path, capsys):
    import tifffile

    from cpsnake.cli import main

    img = tmp_path / "m.tif"
    tifffile.imwrite(img, nuclei_mosaic(600))
    # 480 px passes the bound of every network (cpsnake.bounds: 2 U-Net tiles, 448 px), not Cellpose-SAM's 512
    assert main(["segment", str(img), "--out", str(tmp_path / "o"), "--block-size", "480"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert any("block size 480" in line and "--block-size" in line and "m.tif" in line for line in err)
    assert not (tmp_path / "o" / "masks" / "m.tif").exists()
