"""``cpsnake train-size``: a U-Net's size model (style -> diameter) fitted, written as cellpose 3 writes it,
read by cellpose 3's ``SizeModel`` and by ``--diameter auto``. How well a *trained* network's size model
estimates diameters is checked with the bundled model in test_bundled_unet.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cpsnake import cli
from cpsnake.engine import size
from cpsnake.errors import CpsnakeError
from cpsnake.models.registry import load_model
from cpsnake.training import data, train_size


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    """Four 128 x 128 images of bright discs (radius 4, 6, 8, 10 px) on noise, with their label masks."""
    import tifffile

    root = tmp_path_factory.mktemp("discs")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:128, :128]
    rng = np.random.default_rng(0)
    for r in (4, 6, 8, 10):
        lab = np.zeros((128, 128), np.uint16)
        step = 3 * r
        for k, (cy, cx) in enumerate((y, x) for y in range(step, 128 - r, step) for x in range(step, 128 - r, step)):
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k + 1
        img = (rng.normal(100, 10, lab.shape) + 800 * (lab > 0)).astype(np.uint16)
        tifffile.imwrite(root / "images" / f"r{r}.tif", img)
        tifffile.imwrite(root / "masks" / f"r{r}.tif", lab)
    return root


def test_fit_recovers_a_linear_relation_of_log_diameter_and_style():
    rng = np.random.default_rng(1)
    styles = rng.normal(0, 1, (400, 16))
    a = rng.normal(0, 0.3, 16)
    targets = styles @ a + 0.7
    params = train_size.fit_size_model(styles, targets, diam_mean=17.0, l2=1e-6)
    assert np.allclose(params["A"], a, atol=1e-4)
    fitted = (styles - params["smean"]) @ params["A"] + params["ymean"]
    assert np.allclose(fitted, targets, atol=1e-3)
    ridge = train_size.fit_size_model(styles, targets, diam_mean=17.0, l2=1e4)  # strong ridge shrinks A
    assert np.linalg.norm(ridge["A"]) < 0.5 * np.linalg.norm(a)
    assert params["diam_mean"] == 17.0 and params["A"].dtype == np.float32


def test_draws_depend_only_on_seed_image_and_draw(unet_file, discs, tmp_path):
    """The same (seed, image, draw) gives the same style whatever the batching or the other images."""
    net = load_model(unet_file)
    items = data.prepare(data.list_pairs(discs), tmp_path)
    assert {i["name"]: round(i["diameter"]) for i in items} == {"r4": 8, "r6": 12, "r8": 16, "r10": 20}
    s8, t8 = train_size.draw_styles(net, items, per_image=2, crop=96, seed=4, batch_size=8)
    s1, t1 = train_size.draw_styles(net, items[:2], per_image=2, crop=96, seed=4, batch_size=1)
    assert s8.shape == (8, 32) and t8.shape == (8,)
    assert np.allclose(s1, s8[:4], atol=1e-5) and np.array_equal(t1, t8[:4])
    assert np.allclose(np.linalg.norm(s8, axis=1), 1, atol=1e-4)  # unit-length styles, as at inference
    assert np.all((t8 >= np.log(10 / 17)) & (t8 <= np.log(60 / 17)))
    other, _ = train_size.draw_styles(net, items[:2], per_image=2, crop=96, seed=5)
    assert not np.allclose(other, s8[:4], atol=1e-3)


def test_written_size_model_is_read_by_cellpose3_and_by_diameter_auto(cp3, unet_file, discs, tmp_path, capsys):
    import shutil

    model = tmp_path / "unet17.pt"
    shutil.copy(unet_file, model)
    assert (
        cli.main(
            [
                "train-size",
                str(model),
                str(discs),
                "--per-image",
                "3",
                "--crop",
                "96",
                "--cache",
                str(tmp_path / "cache"),
                "--val",
                str(discs),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "train-size: 4 images, 12 draws, 32 style values" in out and "val: 4 images" in out
    written = tmp_path / "size_unet17.npy"
    params = size.read_size_model(written, style_channels=32)
    assert set(params) == {"A", "smean", "ymean", "diam_mean"} and params["diam_mean"] == 17.0
    import tifffile

    from cpsnake.engine.normalize import normalize

    img = tifffile.imread(discs / "images" / "r8.tif")
    np.save(tmp_path / "img.npy", img)
    ref = cp3(
        "size",
        state=str(model),
        size=str(written),
        image=str(tmp_path / "img.npy"),
        channels=[0, 0],
        nbase=[2, 8, 16, 32],
    )
    _, diam_style = size.estimate_diameter(load_model(model), normalize(img[None])[0], params, progress=False)
    assert diam_style == pytest.approx(float(ref["diam_style"]), rel=1e-4)
    assert diam_style != pytest.approx(17.0, rel=1e-3)  # the fitted regression moved it
    seg = tmp_path / "seg"
    assert (
        cli.main(
            [
                "segment",
                str(discs / "images" / "r8.tif"),
                "--out",
                str(seg),
                "--model",
                str(model),
                "--diameter",
                "auto",
            ]
        )
        == 0
    )
    assert (seg / "masks" / "r8.tif").exists()
    assert json.loads((seg / "provenance" / "r8.json").read_text())["model"]["family"] == "unet"


def test_a_cellpose_sam_model_or_bad_options_are_one_error(tiny_model, discs, capsys):
    assert cli.main(["train-size", str(tiny_model), str(discs)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found a Cellpose-SAM model, expected a classic Cellpose U-Net" in err[0]
    with pytest.raises(CpsnakeError, match="--per-image 0: found 0; expected a number of draws per image"):
        train_size.main.__wrapped__(["x.pt", str(discs), "--per-image", "0"])
