"""Block-wise segmentation as separate jobs (:mod:`cpsnake.run.blockjob`): values, one file per block, assembly."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from paths import ROOT

from cpsnake.engine.blocks import segment_blocks
from cpsnake.engine.normalize import scale
from cpsnake.engine.streamnorm import stream_values
from cpsnake.errors import CpsnakeError
from cpsnake.io import regions
from cpsnake.io.inputs import open_regions, read_image
from cpsnake.io.labels import read_labels
from cpsnake.models.registry import load_model
from cpsnake.run import blockjob

DEMO = sorted((ROOT / "resources" / "demo" / "images").glob("bbbc039_*.tif"))[0]


@pytest.fixture(scope="module")
def net():
    return load_model(ROOT / "resources" / "models" / "nuclei_small.pt", device="cpu")


def test_block_files_and_their_assembly_equal_the_one_process_run(tmp_path, net):
    """Values streamed to a file, each block's pass 1 in a call of its own (as separate jobs run them),
    then their assembly: the labels equal :func:`cpsnake.engine.blocks.segment_blocks` in one process; block files of
    another halo or block size are refused with one line; a block job's error reaches the assembly."""
    src = tmp_path / "demo.tif"
    tifffile.imwrite(src, read_image(DEMO)[0][0], tile=(128, 128), compression="zlib")
    doc = blockjob.values_file(src, tmp_path / "v.json")
    shape = tuple(doc["source"]["shape"])
    files = []
    for k in range(len(blockjob.grid_of(*shape, 512))):
        files.append(tmp_path / "b" / f"{k}.npz")
        blockjob.block_file(net, src, doc, files[-1], k, block=512, halo=64)
    got = tmp_path / "masks.tif"
    report = blockjob.assemble_file(files, got, shape=shape, block=512)
    with open_regions(src) as img:
        record = stream_values(regions.bands(img), img.shape, img.dtype)
        ref, ref_report = segment_blocks(
            net, lambda *r: scale(img.read(*r), record), shape, channels=1, block=512, halo=64
        )
    assert report["objects"] == ref_report["objects"] > 30 and len(files) == 4
    assert np.array_equal(read_labels(got)[0], ref)
    blockjob.block_file(net, src, doc, tmp_path / "other" / "1.npz", 1, block=512, halo=80)
    with pytest.raises(CpsnakeError, match="different grids or halos"):
        blockjob.assemble_file(
            [files[0], tmp_path / "other" / "1.npz", *files[2:]], tmp_path / "x.tif", shape=shape, block=512
        )
    with pytest.raises(CpsnakeError, match="in 512 px blocks, expected .* in 1024 px blocks"):
        blockjob.assemble_file(files, tmp_path / "x.tif", shape=shape, block=1024)
    blockjob._failed_block(files[2], f"{src}: found a chunk that cannot be decoded")
    with pytest.raises(CpsnakeError, match="cannot be decoded"):
        blockjob.assemble_file(files, tmp_path / "x.tif", shape=shape, block=512)
    assert not (tmp_path / "x.tif").exists()


def test_a_too_small_halo_is_reported_by_the_assembly(tmp_path, net):
    """Blocks with a 4 px halo cut the nuclei at their borders: the assembly warns with the fix."""
    import warnings

    src = tmp_path / "demo.tif"
    tifffile.imwrite(src, read_image(DEMO)[0][0])
    doc = blockjob.values_file(src, tmp_path / "v.json")
    shape = tuple(doc["source"]["shape"])
    files = [tmp_path / f"{k}.npz" for k in range(4)]
    for k, f in enumerate(files):
        blockjob.block_file(net, src, doc, f, k, block=512, halo=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = blockjob.assemble_file(files, tmp_path / "m.tif", shape=shape, block=512)
    assert report["cut"] > 0 and any("config blocks.halo" in str(w.message) for w in seen)


def test_options_that_need_the_whole_image_are_refused(tmp_path, net):
    src = tmp_path / "demo.tif"
    tifffile.imwrite(src, read_image(DEMO)[0][0])
    with pytest.raises(CpsnakeError, match="--tile-norm 100 with an image segmented block by block"):
        blockjob.values_file(src, tmp_path / "v.json", tile_size=100)
    doc = blockjob.values_file(src, tmp_path / "v.json")
    with pytest.raises(CpsnakeError, match="--diameter auto with an image segmented block by block"):
        blockjob.block_file(net, src, doc, tmp_path / "0.npz", 0, block=512, diameter="auto")
    with pytest.raises(CpsnakeError, match="block 9 requested.* has 4"):
        blockjob.block_file(net, src, doc, tmp_path / "0.npz", 9, block=512)
