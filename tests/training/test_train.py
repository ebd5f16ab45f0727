"""cpsnake.training.train, .data, .augment: targets, augmentation, loss, schedule, training, resume, pack."""

import sys

import numpy as np
import pytest
import tifffile
import torch
from paths import DATA as TEST_DATA
from scipy import ndimage as ndi

from cpsnake.errors import CpsnakeError
from cpsnake.training import augment, data, pack, train


def _blobs(shape=(96, 112), seed=0, n=9):
    """Synthetic nuclei: ellipses on a dim noisy background -> (uint16 image (Y, X), int32 labels (Y, X))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    k = 0
    for _ in range(60):
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)
        ry, rx = rng.uniform(4, 9, size=2)
        disk = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        if np.any(lab[ndi.binary_dilation(disk, iterations=2)]):
            continue
        k += 1
        lab[disk] = k
        if k == n:
            break
    img = 200 + 1500 * (lab > 0) + rng.normal(0, 60, shape)
    img = ndi.gaussian_filter(img, 1.0)
    return np.clip(img, 0, 4095).astype(np.uint16), lab


def _split(root, n=4, shape=(96, 112)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, lab = _blobs(shape, seed=i)
        tifffile.imwrite(root / "images" / f"im{i}.tif", img)
        tifffile.imwrite(root / "masks" / f"im{i}.tif", lab.astype(np.uint16))
    return root


def _ellipses(shape=(120, 140)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx, ry, rx) in enumerate([(30, 30, 12, 20), (80, 40, 18, 10), (60, 100, 15, 25), (25, 100, 10, 10)], 1):
        lab[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k
    return lab


# --- augmentation ---------------------------------------------------------------------------------


def test_transformed_flows_agree_with_recomputed_flows():
    """Warping flows (vectors rotated/flipped) == flows recomputed from the warped label image."""
    from cpsnake.engine.heat import masks_to_flows

    lab = _ellipses()
    flows = masks_to_flows(lab)
    rng = np.random.default_rng(1)
    flipped = 0
    for _ in range(6):
        t = augment.random_warp(rng, lab.shape, diameter=25, diam_range=(15, 50), bsize=128)
        flipped += np.linalg.det(t["L"]) < 0
        warped = augment.warp(flows, t, vectors=True)
        lab2 = augment.warp(lab[None], t, order=0)[0].astype(np.int32)
        inner = ndi.binary_erosion(lab2 > 0, iterations=2)
        assert inner.sum() > 200
        cos = (warped * masks_to_flows(lab2)).sum(axis=0)[inner]
        assert cos.mean() > 0.97, t
        assert np.percentile(cos, 5) > 0.9, t
    assert 0 < flipped < 6  # both flipped and unflipped draws were checked


def test_wrong_vector_rotation_would_be_caught():
    """The check above has power: flows warped without rotating the vectors disagree."""
    from cpsnake.engine.heat import masks_to_flows

    lab = _ellipses()
    flows = masks_to_flows(lab)
    t = {"L": np.array([[0.0, -1.0], [1.0, 0.0]]), "c_in": np.array([59.5, 69.5]), "bsize": 128, "scale": 1.0}
    lab2 = augment.warp(lab[None], t, order=0)[0].astype(np.int32)
    inner = ndi.binary_erosion(lab2 > 0, iterations=2)
    recomputed = masks_to_flows(lab2)
    good = (augment.warp(flows, t, vectors=True) * recomputed).sum(axis=0)[inner].mean()
    bad = (augment.warp(flows, t) * recomputed).sum(axis=0)[inner].mean()
    assert good > 0.97 and bad < 0.5


def test_scale_brings_diameter_into_range():
    rng = np.random.default_rng(0)
    scales = [augment.random_warp(rng, (500, 500), diameter=20.0)["scale"] for _ in range(300)]
    d = 20.0 * np.array(scales)
    assert d.min() >= 7.5 - 1e-9 and d.max() <= 120 + 1e-9
    assert d.min() < 10 and d.max() > 90  # the whole range is used


def test_intensity_keeps_absent_channels_zero_and_is_seeded():
    img = np.zeros((3, 32, 32), np.float32)
    img[1] = np.random.default_rng(0).random((32, 32))
    p = {k: 1.0 for k in augment.INTENSITY_P}
    a = augment.intensity(img, np.random.default_rng(5), p)
    b = augment.intensity(img, np.random.default_rng(5), p)
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert (np.abs(a).reshape(3, -1).max(axis=1) > 0).sum() == 1  # one channel present, wherever permuted
    assert not np.allclose(a[np.abs(a).reshape(3, -1).max(axis=1) > 0][0], img[1])


# --- loss and schedule ------------------------------------------------------------------------------


def test_loss_equals_cellpose_loss():
    from cellpose.train import _loss_fn_seg

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 16, 16, generator=g)
    target = torch.cat(
        [(torch.rand(2, 1, 16, 16, generator=g) > 0.5).float(), torch.randn(2, 2, 16, 16, generator=g).clamp(-1, 1)],
        dim=1,
    )
    ours = train.loss_fn(pred, target)
    ref = _loss_fn_seg(target, pred, torch.device("cpu"))
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_lr_schedule_warms_up_holds_and_halves():
    lrs = [train.lr_at(s, 200, 1e-3, warmup=10, decay=20) for s in range(200)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(v == 1e-3 for v in lrs[10:180])
    assert lrs[180] == pytest.approx(5e-4) and lrs[199] == pytest.approx(1e-3 / 2**10)
    assert all(a >= b for a, b in zip(lrs[180:], lrs[181:]))


# --- data -----------------------------------------------------------------------------------------


def test_list_pairs_follows_index_and_reports_missing_mask(tmp_path):
    root = _split(tmp_path / "s", n=3)
    (root / "index.csv").write_text("file,modality\nim2.tif,x\nim0.tif,y\n")
    assert [n for n, _, _ in data.list_pairs(root)] == ["im2", "im0"]
    (root / "masks" / "im0.tif").unlink()
    with pytest.raises(CpsnakeError, match="no mask named 'im0'"):
        data.list_pairs(root)


def test_prepare_caches_targets(tmp_path):
    root = _split(tmp_path / "s", n=2)
    items = data.prepare(data.list_pairs(root), tmp_path / "cache")
    assert len(items) == 2 and all(it["n"] == 9 for it in items)
    with np.load(items[0]["path"]) as z:
        img, target = z["image"], z["target"]
    assert img.shape == (3, 96, 112) and target.shape == (3, 96, 112)
    assert np.all(img[1:] == 0) and img[0].max() > 0.9
    norm = np.sqrt(target[1].astype(np.float32) ** 2 + target[2].astype(np.float32) ** 2)
    assert np.allclose(norm[target[0] > 0], 1, atol=2e-3) and np.all(norm[target[0] == 0] == 0)
    mtime = items[0]["path"].stat().st_mtime_ns
    again = data.prepare(data.list_pairs(root), tmp_path / "cache")
    assert again[0]["path"] == items[0]["path"] and items[0]["path"].stat().st_mtime_ns == mtime


def test_a_pair_listed_twice_is_kept_twice_and_reported_once(tmp_path, capsys):
    """Batches draw uniformly over the entries, so an entry kept twice is drawn twice as often."""
    root = _split(tmp_path / "s", n=2)
    tifffile.imwrite(root / "masks" / "im1.tif", np.zeros((96, 112), np.uint16))  # too few objects
    lst = tmp_path / "pairs.csv"
    lst.write_text("image,mask\n" + "".join(f"s/images/im{i}.tif,s/masks/im{i}.tif\n" for i in (0, 0, 1, 1)))
    items = data.prepare(data.list_pairs(lst), tmp_path / "cache", log=sys.stdout)
    assert [it["name"] for it in items] == ["im0", "im0"] and items[0]["path"] == items[1]["path"]
    assert "1 image(s) with fewer than 5 objects left out: im1\n" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one cache file per distinct image
    train.main(
        [
            str(lst),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--cache",
            str(tmp_path / "cache"),
            "--save-every",
            "1",
        ]
    )
    assert "train: 1 images, 9 objects (2 entries with repeats)" in capsys.readouterr().out


# --- training ---------------------------------------------------------------------------------------


def _small_net(seed=0):
    from cpsnake.models.cpsam import build_cpsam

    torch.manual_seed(seed)
    return build_cpsam("tiny", embed_dim=64, depth=1, num_heads=2, out_chans=32)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = _split(tmp_path_factory.mktemp("data") / "s", n=4)
    return data.prepare(data.list_pairs(root), root / "cache")


def test_training_lowers_loss_and_writes_loadable_model(items, tmp_path):
    from cpsnake.models.registry import load_model

    torch.set_num_threads(1)
    net = _small_net()
    rows = train.train(
        net,
        items,
        out_dir=tmp_path,
        steps=40,
        batch_size=2,
        lr=2e-3,
        warmup=4,
        decay=0,
        seed=0,
        diam_range=(15, 30),
        log_every=1000,
        save_every=0,
    )
    losses = [r["loss"] for r in rows]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    loaded = load_model(tmp_path / "model.pt")
    x = torch.rand(1, 3, 256, 256)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert float(loaded.diam_labels) == pytest.approx(np.mean([it["diameter"] for it in items]), rel=1e-5)


def test_validate_scores_a_trained_model_as_the_segment_and_evaluate_commands_do(tmp_path):
    """validate() (the AP logged during training) equals ``cpsnake segment`` + ``cpsnake evaluate``, and is high
    for the bundled trained model and zero for an untrained one.

    Bugs this catches: validate pairing image i's prediction with mask j, scoring at another IoU threshold,
    skipping normalization, or returning a constant (the old test only checked ``0 <= AP <= 1``, which an
    untrained network's 0.0 passes).
    """

    from cpsnake import cli
    from cpsnake.models import weights
    from cpsnake.models.registry import load_model

    val = TEST_DATA / "nuclei_val"
    pairs = data.list_pairs(val)
    bundled = weights.resolve("nuclei_small")
    ap = train.validate(load_model(bundled), pairs)
    seg = tmp_path / "seg"
    assert cli.main(["segment", *[str(p) for _, p, _ in pairs], "--out", str(seg), "--model", str(bundled)]) == 0
    table = tmp_path / "ap.csv"
    assert cli.main(["evaluate", str(seg / "masks"), str(val / "masks"), "--out", str(table)]) == 0
    import pandas as pd

    pooled = pd.read_csv(table).set_index("image").loc["pooled", "ap@0.5"]
    assert ap == pytest.approx(float(pooled), abs=1e-6)  # the table holds 6 decimals
    assert ap > 0.5  # the bundled model on its own modality (fluorescence, histology crops)
    assert train.validate(_small_net(), pairs) < 0.05  # untrained: the same check can fail


def test_resume_continues_the_step_count_and_the_run(items, tmp_path):
    torch.set_num_threads(1)
    # decay=0: the schedule of a 4-step run is the first 4 steps of the 6-step run's schedule
    kw = dict(steps=6, batch_size=1, lr=1e-3, warmup=2, decay=0, seed=3, diam_range=(15, 30), log_every=1000)
    full = train.train(_small_net(), items, out_dir=tmp_path / "full", save_every=0, **kw)
    first = train.train(_small_net(), items, out_dir=tmp_path / "part", save_every=0, **{**kw, "steps": 4})
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    ck = train.load_checkpoint(tmp_path / "part" / "checkpoint.pt")  # weights_only=True inside
    assert ck["step"] == 4
    net = train._net_from_state(ck["model"])
    rows = train.train(net, items, out_dir=tmp_path / "part", save_every=0, resume=ck, **kw)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert train.load_checkpoint(tmp_path / "part" / "checkpoint.pt")["step"] == 6
    # the resumed run is the uninterrupted run (same batches, same optimizer state), not merely similar
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in full], rtol=1e-5)


def test_same_command_same_data_gives_the_same_model_bit_for_bit(items, tmp_path):
    """The card's reproducibility claim rests on this: a fixed seed fixes every batch and every update."""
    torch.set_num_threads(1)
    kw = dict(steps=3, batch_size=2, lr=1e-3, warmup=1, decay=1, diam_range=(15, 30), save_every=0, log_every=1000)
    runs = {
        name: train.train(_small_net(), items, out_dir=tmp_path / name, seed=s, **kw)
        for name, s in [("a", 11), ("b", 11), ("c", 12)]
    }
    sd = {name: torch.load(tmp_path / name / "model.pt", weights_only=True) for name in runs}
    assert [r["loss"] for r in runs["a"]] == [r["loss"] for r in runs["b"]]
    assert all(torch.equal(sd["a"][k], sd["b"][k]) for k in sd["a"])
    # another seed draws other batches: the comparison above can fail
    assert not all(torch.equal(sd["a"][k], sd["c"][k]) for k in sd["a"])


def test_bfloat16_autocast_training_lowers_loss_and_saves_float32(items, tmp_path):
    """The GPU recipe's mixed precision (autocast bf16, float32 master weights), run here on the CPU."""
    torch.set_num_threads(1)
    rows = train.train(
        _small_net(),
        items,
        out_dir=tmp_path,
        steps=40,
        batch_size=2,
        lr=2e-3,
        warmup=4,
        decay=0,
        seed=0,
        diam_range=(15, 30),
        log_every=1000,
        save_every=0,
        bf16=True,
    )
    losses = [r["loss"] for r in rows]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float32}


def test_checkpoint_is_weights_only_loadable(items, tmp_path):
    train.train(_small_net(), items, out_dir=tmp_path, steps=1, batch_size=1, seed=0, save_every=0)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(ck) >= {"model", "optimizer", "step", "seed", "log", "config"}
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CpsnakeError, match="bad.pt: not a loadable checkpoint"):
        train.load_checkpoint(tmp_path / "bad.pt")


def test_cli_trains_and_resumes(tmp_path, capsys):
    root = _split(tmp_path / "s", n=2)
    out = tmp_path / "run"
    base = [str(root), "--out", str(out), "--batch-size", "1", "--seed", "1", "--log-every", "1", "--device", "cpu"]
    assert train.main(base + ["--arch", "tiny", "--steps", "1"]) == 0
    assert train.main(base + ["--resume", str(out / "checkpoint.pt"), "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "step 1/1" in text and "step 2/2" in text
    assert train.load_checkpoint(out / "checkpoint.pt")["step"] == 2
    # fine-tuning starts from a saved model (a cellpose-4 style state dict)
    base2 = [str(root), "--out", str(tmp_path / "ft"), "--batch-size", "1", "--device", "cpu", "--steps", "1"]
    assert train.main(base2 + ["--init", str(out / "model.pt")]) == 0
    assert train.load_checkpoint(tmp_path / "ft" / "checkpoint.pt")["config"]["lr"] == 5e-5


def test_cli_resume_keeps_the_checkpoint_options_unless_given(tmp_path, capsys):
    """A resumed run must not fall back to the defaults (diameter range, layer drop, batch size, lr)."""
    root = _split(tmp_path / "s", n=2)
    out = tmp_path / "run"
    base = [str(root), "--out", str(out), "--device", "cpu", "--log-every", "1"]
    assert (
        train.main(
            base
            + [
                "--arch",
                "tiny",
                "--steps",
                "1",
                "--batch-size",
                "1",
                "--lr",
                "3e-4",
                "--layer-drop",
                "0",
                "--diam-range",
                "12",
                "20",
                "--weight-decay",
                "0.05",
            ]
        )
        == 0
    )
    assert train.main(base + ["--resume", str(out / "checkpoint.pt"), "--steps", "2"]) == 0
    cfg = train.load_checkpoint(out / "checkpoint.pt")["config"]
    assert cfg == {
        **cfg,
        "batch_size": 1,
        "lr": 3e-4,
        "layer_drop": 0.0,
        "diam_range": [12.0, 20.0],
        "weight_decay": 0.05,
        "steps": 2,
    }
    assert "resume: batch_size 1" in capsys.readouterr().out
    # an option given again wins
    assert train.main(base + ["--resume", str(out / "checkpoint.pt"), "--steps", "3", "--diam-range", "15", "30"]) == 0
    cfg = train.load_checkpoint(out / "checkpoint.pt")["config"]
    assert cfg["diam_range"] == [15.0, 30.0] and cfg["batch_size"] == 1


def test_cli_rejects_bad_input_in_one_line(tmp_path, capsys):
    assert train.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder or file" in err[0]


# --- pack -------------------------------------------------------------------------------------------


def test_pack_is_lossless_and_keeps_the_index(tmp_path):
    from PIL import Image

    root = _split(tmp_path / "s", n=3)
    (root / "index.csv").write_text("file,modality\nim0.tif,a\nim1.tif,b\nim2.tif,c\n")
    total, dropped = pack.pack(root, tmp_path / "pack")
    assert dropped == [] and total > 0
    for i in range(3):
        img = np.asarray(Image.open(tmp_path / "pack" / "images" / f"im{i}.png"))
        lab = np.asarray(Image.open(tmp_path / "pack" / "masks" / f"im{i}.png"))
        np.testing.assert_array_equal(img, tifffile.imread(root / "images" / f"im{i}.tif"))
        np.testing.assert_array_equal(lab, tifffile.imread(root / "masks" / f"im{i}.tif"))
    assert (tmp_path / "pack" / "index.csv").read_text().splitlines()[1] == "im0.png,a"
    assert [n for n, _, _ in data.list_pairs(tmp_path / "pack")] == ["im0", "im1", "im2"]


def test_drop_to_fit_thins_the_heaviest_kind_first():
    size = {"a1": 10, "a2": 10, "a3": 10, "a4": 10, "b1": 4, "b2": 4, "c1": 30}
    kind = {"a1": "A", "a2": "A", "a3": "A", "a4": "A", "b1": "B", "b2": "B", "c1": "C"}
    assert pack.drop_to_fit(size, kind, 1000) == []
    assert pack.drop_to_fit(size, kind, 70) == ["a2"]  # 78 -> 68: one of the heaviest kind (A, 40 bytes)
    assert pack.drop_to_fit(size, kind, 50) == ["a2", "a4", "a3"]  # A again (20 > B's 8), then A's last pair
    # a kind with one image (c1) is never dropped: what cannot fit is left to the caller's error
    assert pack.drop_to_fit(size, kind, 10) == ["a2", "a4", "a3", "b2"]


def test_pack_over_budget_drops_by_kind_and_says_so(tmp_path, capsys):
    root = _split(tmp_path / "s", n=4)  # four 96x112 uint16 images: one kind
    tifffile.imwrite(root / "images" / "odd.tif", _blobs((64, 80), seed=9)[0])
    tifffile.imwrite(root / "masks" / "odd.tif", _blobs((64, 80), seed=9)[1].astype(np.uint16))
    full, _ = pack.pack(root, tmp_path / "full")
    pngs = sum(p.stat().st_size for p in (tmp_path / "full").rglob("*.png"))  # what the budget weighs
    total, dropped = pack.pack(root, tmp_path / "small", max_mb=(pngs - 1) / 1e6)
    assert dropped == ["im1"] and total < full
    assert (tmp_path / "small" / "dropped.txt").read_text() == "im1\n"
    assert "dropped 1 image(s)" in capsys.readouterr().out
    with pytest.raises(CpsnakeError, match="raise --max-mb"):
        pack.pack(root, tmp_path / "tiny", max_mb=1e-6)


def test_imagej_roiset_masks_are_read_as_labels(tmp_path):
    from cpsnake.export import rois

    root = _split(tmp_path / "s", n=1)
    lab = tifffile.imread(root / "masks" / "im0.tif").astype(np.int32)
    (root / "masks" / "im0.tif").unlink()
    rois.write_rois(root / "masks" / "im0_RoiSet.zip", rois.labels_to_rois(lab))
    [(name, ipath, mpath)] = data.list_pairs(root)
    assert name == "im0" and mpath.name == "im0_RoiSet.zip"
    got = data.read_mask(mpath, lab.shape)
    np.testing.assert_array_equal(got > 0, lab > 0)
    assert got.max() == lab.max()


def test_batches_do_not_depend_on_worker_processes(items, tmp_path):
    torch.set_num_threads(1)
    kw = dict(steps=2, batch_size=1, lr=1e-3, warmup=1, decay=0, seed=5, diam_range=(15, 30), save_every=0)
    a = train.train(_small_net(), items, out_dir=tmp_path / "a", workers=0, **kw)
    b = train.train(_small_net(), items, out_dir=tmp_path / "b", workers=2, **kw)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_targets_reconstruct_to_the_masks_before_and_after_warping(tmp_path):
    """The targets speak the pipeline's convention: 5 x flows + cellprob logits -> compute_masks -> the masks."""
    from cpsnake.engine.reconstruct import compute_masks
    from cpsnake.training.evaluate import scores

    root = _split(tmp_path / "s", n=1, shape=(128, 128))
    [item] = data.prepare(data.list_pairs(root), tmp_path / "cache")
    with np.load(item["path"]) as z:
        target = z["target"].astype(np.float32)
    lab = tifffile.imread(root / "masks" / "im0.tif").astype(np.int32)

    def masks(t):
        return compute_masks(np.concatenate([5 * t[1:], 10 * (t[:1] > 0.5) - 5]).astype(np.float32))

    assert scores(lab, masks(target), [0.9])["ap@0.9"] == 1.0
    t = augment.random_warp(
        np.random.default_rng(2), lab.shape, diameter=item["diameter"], diam_range=(20, 30), bsize=256
    )
    warped = np.concatenate([augment.warp(target[:1], t), augment.warp(target[1:], t, vectors=True)])
    true = augment.warp(lab[None], t, order=0)[0].astype(np.int32)
    r = scores(true, masks(warped), [0.5])
    assert r["n_true"] == 9 and r["ap@0.5"] >= 0.85, r
