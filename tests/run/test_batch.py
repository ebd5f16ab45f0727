"""cpsnake batch: one step for a batch of images in one process, failure isolation, equal to the step commands."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from paths import DATA as TEST_DATA

from cpsnake import cli
from cpsnake.io.flows import read_flows
from cpsnake.io.labels import read_labels
from cpsnake.io.tiff import read_tiff
from cpsnake.run import batch, samples

FIND = ["--flow-threshold", "0", "--cellprob-threshold", "-0.5"]
DATA = TEST_DATA / "images"


@pytest.fixture()
def run(tmp_path):
    """Three images in one batch: two real crops (grey, RGB) and a constant one."""
    img = tmp_path / "img"
    img.mkdir()
    tifffile.imwrite(img / "a_grey.tif", tifffile.imread(DATA / "bbbc039_O13_s3_uint16.tif")[:150, :200])
    tifffile.imwrite(img / "b_rgb.tif", tifffile.imread(DATA / "dsb2018_0e21d7b3eea8cdbb_rgb.tif"), photometric="rgb")
    tifffile.imwrite(img / "c_flat.tif", np.full((60, 60), 7, np.uint16))
    table = samples.inspect(samples.discover(str(img)))
    samples.write_table(tmp_path / "samples.tsv", table)
    assert {s.batch for s in table} == {"b0001"}
    return tmp_path


def step(run, name, *extra):
    return cli.main(["batch", name, str(run / "samples.tsv"), "b0001", "--results", str(run / "res"), *extra])


def test_a_bad_image_fails_alone_and_later_steps_skip_it(run, tiny_model, capsys):
    assert step(run, "normalize") == 0
    err = capsys.readouterr().err
    assert "c_flat.tif: found a constant image" in err and "2 ok, 1 failed" in err
    done = {o.sample: o for o in batch.read_manifest(run / "res" / "work" / "b0001" / "normalize.tsv")}
    assert [done[n].status for n in ("a_grey", "b_rgb", "c_flat")] == ["ok", "ok", "failed"]
    assert done["a_grey"].info["normalization"]["per_channel"][0]["status"] == "scaled"
    log = (run / "res" / "logs" / "images" / "c_flat.log").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith("cpsnake normalize: error: ") and "c_flat.tif" in log[0]
    assert not (run / "res" / "work" / "b0001" / "normalized" / "c_flat.tif").exists()
    for name in ("infer", "reconstruct", "rois", "measure", "overlay"):
        assert step(run, name, "--model", str(tiny_model), *FIND) == 0
        out = {o.sample: o for o in batch.read_manifest(run / "res" / "work" / "b0001" / f"{name}.tsv")}
        assert out["c_flat"].status == "skipped" and out["c_flat"].reason == "normalize failed", name
        assert out["a_grey"].status == out["b_rgb"].status == "ok", name
    for kind, ext in (("masks", "tif"), ("rois", "zip"), ("measurements", "csv"), ("overlays", "png")):
        assert sorted(p.name for p in (run / "res" / kind).iterdir()) == [f"a_grey.{ext}", f"b_rgb.{ext}"]


def test_batch_outputs_equal_the_step_commands(run, tiny_model):
    """Same bytes as `cpsnake normalize / infer / reconstruct / measure` on one image (infer pools the
    batch's tiles: its flows equal the one-image command's to float rounding)."""
    for name in ("normalize", "infer", "reconstruct", "measure"):
        assert step(run, name, "--model", str(tiny_model), *FIND) == 0
    one = run / "one"
    src = run / "img" / "b_rgb.tif"
    assert cli.main(["normalize", str(src), str(one / "n.tif")]) == 0
    assert cli.main(["infer", str(one / "n.tif"), str(one / "f.tif"), "--model", str(tiny_model)]) == 0
    assert cli.main(["reconstruct", str(one / "f.tif"), str(one / "m.tif"), *FIND]) == 0
    assert cli.main(["measure", str(one / "m.tif"), str(src), str(one / "t.csv"), "--flows", str(one / "f.tif")]) == 0
    work = run / "res" / "work" / "b0001"
    assert (work / "normalized" / "b_rgb.tif").read_bytes() == (one / "n.tif").read_bytes()
    np.testing.assert_allclose(
        read_flows(work / "flows" / "b_rgb.tif")[0], read_flows(one / "f.tif")[0], rtol=0, atol=1e-6
    )
    masks = read_labels(run / "res" / "masks" / "b_rgb.tif")[0]
    assert masks.max() > 0 and np.array_equal(masks, read_labels(one / "m.tif")[0])
    assert (run / "res" / "measurements" / "b_rgb.csv").read_text() == (one / "t.csv").read_text()


def test_per_image_options_from_the_table(run, tiny_model):
    table = samples.read_table(run / "samples.tsv")
    table[1].channels = [2]  # b_rgb: the third colour only
    table[0].pixel_size = 0.5
    samples.write_table(run / "samples.tsv", table)
    assert step(run, "normalize", "--channels", "0") == 0
    done = {o.sample: o.info for o in batch.read_manifest(run / "res" / "work" / "b0001" / "normalize.tsv")}
    assert done["b_rgb"]["normalization"]["channels"] == [2] and done["a_grey"]["normalization"]["channels"] == [0]
    assert read_tiff(run / "res" / "work" / "b0001" / "normalized" / "a_grey.tif", expected="x")[1][
        "pixel_size"
    ] == pytest.approx((0.5, 0.5))


def test_missing_upstream_manifest_is_one_error_line(run, capsys):
    assert step(run, "reconstruct") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cpsnake batch: error:") and "\n" not in err and "infer.tsv" in err
