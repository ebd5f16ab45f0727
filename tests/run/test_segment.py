"""`cpsnake segment`: the whole chain in one process equals the chain of step commands."""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from paths import DATA as TEST_DATA

from cpsnake import cli
from cpsnake.io.labels import read_labels
from cpsnake.io.tiff import write_tiff

DATA = TEST_DATA / "images"
IMAGE = DATA / "bbbc039_O13_s3_uint16.tif"
# a tiny random network finds nothing at the defaults; these thresholds make it find (nonsense) cells
FIND = ["--flow-threshold", "0", "--cellprob-threshold", "-0.5"]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    """A 200x260 crop of a real BBBC039 image, calibrated 0.5 um."""
    img = tifffile.imread(IMAGE)[:200, :260]
    path = tmp_path_factory.mktemp("img") / "crop.tif"
    write_tiff(path, img, axes="YX", pixel_size=(0.5, 0.5), unit="um")
    return path


def test_segment_equals_step_commands(tmp_path, tiny_model, small_image):
    out = tmp_path / "seg"
    assert (
        cli.main(["segment", str(small_image), "--out", str(out), "--model", str(tiny_model), *FIND, "--geojson"]) == 0
    )
    steps = tmp_path / "steps"
    norm, flows, masks = steps / "n.tif", steps / "f.tif", steps / "m.tif"
    assert cli.main(["normalize", str(small_image), str(norm)]) == 0
    assert cli.main(["infer", str(norm), str(flows), "--model", str(tiny_model)]) == 0
    assert cli.main(["reconstruct", str(flows), str(masks), *FIND]) == 0
    seg, meta = read_labels(out / "masks" / "crop.tif")
    ref, _ = read_labels(masks)
    assert seg.max() > 0
    np.testing.assert_array_equal(seg, ref)
    assert meta["pixel_size"] == pytest.approx((0.5, 0.5))
    for sub, suffix in [("rois", ".zip"), ("measurements", ".csv"), ("overlays", ".png"), ("provenance", ".json")]:
        assert (out / sub / f"crop{suffix}").stat().st_size > 0
    # the per-step rois/measure commands give the same files' content (zip entries compared by name and
    # bytes: the zip's own timestamps differ); a segment that traced other outlines, dropped or renamed
    # a ROI, or measured another image would fail here
    assert cli.main(["rois", str(masks), str(steps / "r.zip")]) == 0
    assert (
        cli.main(
            [
                "measure",
                str(masks),
                str(small_image),
                str(steps / "m.csv"),
                "--flows",
                str(flows),
                "--geojson",
                str(steps / "m.geojson"),
            ]
        )
        == 0
    )
    assert (steps / "m.csv").read_text() == (out / "measurements" / "crop.csv").read_text()
    assert (steps / "m.geojson").read_text() == (out / "geojson" / "crop.geojson").read_text()
    assert zip_entries(steps / "r.zip") == zip_entries(out / "rois" / "crop.zip")
    assert len(zip_entries(steps / "r.zip")) == seg.max()


def zip_entries(path: Path) -> dict[str, bytes]:
    """Entry name -> uncompressed bytes of a zip."""
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_bad_image_fails_alone(tmp_path, tiny_model, small_image, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_text("not an image\n")
    good = tmp_path / "good.tif"
    shutil.copy(small_image, good)
    out = tmp_path / "out"
    code = cli.main(["segment", str(bad), str(good), "--out", str(out), "--model", str(tiny_model), *FIND])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "bad.tif" in err[0]
    assert (out / "masks" / "good.tif").exists()
    assert not any(p.name.startswith("bad") for p in out.rglob("*"))


def test_unknown_model_is_an_error(tmp_path, small_image, capsys):
    assert cli.main(["segment", str(small_image), "--out", str(tmp_path), "--model", "no_such_model"]) == 1
    err = capsys.readouterr().err
    assert "no_such_model" in err and "cpsam" in err


@pytest.mark.parametrize(
    "option, expected",
    [
        (["--tile-overlap", "0.9"], "--tile-overlap 0.9"),
        (["--niter", "0"], "--niter 0"),
        (["--max-size-fraction", "2"], "--max-size-fraction 2"),
        (["--low-high", "0", "100", "--tile-norm", "64"], "--low-high"),
        (["--channels", "a"], "--channels 'a'"),
    ],
)
def test_bad_option_is_one_error_line_before_any_work(tmp_path, small_image, capsys, option, expected):
    # checked before the model is resolved: an unknown model name would be an error of its own
    out = tmp_path / "out"
    assert cli.main(["segment", str(small_image), "--out", str(out), "--model", "no_such_model", *option]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "no_such_model" not in err[0]
    assert not out.exists()


def test_segment_offers_every_option_of_the_step_commands():
    from cpsnake.run import segment
    from cpsnake.steps import infer, normalize, reconstruct

    def flags(parser: argparse.ArgumentParser) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings}

    steps = argparse.ArgumentParser()
    for module in (normalize, infer, reconstruct):
        module.add_options(steps)
    assert len(flags(steps)) > 15
    assert flags(steps) <= flags(segment._parser())
