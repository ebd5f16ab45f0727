"""cpsnake.training.evaluate: AP = TP / (TP + FP + FN) with one-to-one IoU matching, as cellpose defines it."""

import math

import numpy as np
import pandas as pd
import pytest

from cpsnake.io.labels import write_labels
from cpsnake.training import evaluate


def _pair():
    """Hand-made 10x12 pair whose answers are worked out below.

    true: A = rows 0-3 x cols 0-3 (16 px), B = rows 0-3 x cols 6-9 (16 px), C = rows 6-9 x cols 0-1 (8 px)
    pred: a = A exactly (IoU 1), b = rows 0-3 x cols 6-8 (12 px, IoU 12/16 = 0.75),
          c = rows 6-9 x cols 0-3 (16 px, IoU with C = 8/16 = 0.5), d = rows 8-9 x cols 10-11 (no overlap)
    """
    t = np.zeros((10, 12), np.int32)
    t[0:4, 0:4] = 3
    t[0:4, 6:10] = 7
    t[6:10, 0:2] = 9
    p = np.zeros_like(t)
    p[0:4, 0:4] = 1
    p[0:4, 6:9] = 2
    p[6:10, 0:4] = 5
    p[8:10, 10:12] = 6
    return t, p


def test_iou_matrix_by_hand():
    t, p = _pair()
    iou, nt, npr = evaluate.iou_matrix(t, p)
    assert (nt, npr) == (3, 4)
    expected = np.zeros((3, 4))
    expected[0, 0] = 1.0
    expected[1, 1] = 0.75
    expected[2, 2] = 0.5
    np.testing.assert_allclose(iou, expected)


@pytest.mark.parametrize(
    "th, tp, fp, fn",
    [(0.5, 3, 1, 0), (0.75, 2, 2, 1), (0.9, 1, 3, 2)],
)
def test_scores_by_hand(th, tp, fp, fn):
    t, p = _pair()
    r = evaluate.scores(t, p, [th])
    k = f"{th:g}"
    assert (r[f"tp@{k}"], r[f"fp@{k}"], r[f"fn@{k}"]) == (tp, fp, fn)
    assert r[f"ap@{k}"] == pytest.approx(tp / (tp + fp + fn))
    assert r[f"err@{k}"] == pytest.approx((fp + fn) / (tp + fn))


def test_one_to_one_matching():
    # one true object split in two halves by the prediction: IoU 0.5 each, only one may match
    t = np.zeros((4, 8), np.int32)
    t[:, :] = 1
    p = np.zeros_like(t)
    p[:, :4] = 1
    p[:, 4:] = 2
    r = evaluate.scores(t, p, [0.5])
    assert (r["tp@0.5"], r["fp@0.5"], r["fn@0.5"]) == (1, 1, 0)


def test_empty_vs_empty_is_undefined():
    z = np.zeros((5, 5), np.int32)
    r = evaluate.scores(z, z, [0.5])
    assert (r["n_true"], r["n_pred"], r["tp@0.5"], r["fp@0.5"], r["fn@0.5"]) == (0, 0, 0, 0, 0)
    assert math.isnan(r["ap@0.5"]) and math.isnan(r["err@0.5"])


def test_empty_vs_some():
    t, p = _pair()
    z = np.zeros_like(t)
    missed = evaluate.scores(t, z, [0.5])  # nothing predicted: all false negatives, error rate 1
    assert (missed["tp@0.5"], missed["fp@0.5"], missed["fn@0.5"], missed["ap@0.5"], missed["err@0.5"]) == (
        0,
        0,
        3,
        0.0,
        1.0,
    )
    spurious = evaluate.scores(z, p, [0.5])  # nothing to find: all false positives, error rate undefined
    assert (spurious["tp@0.5"], spurious["fp@0.5"], spurious["fn@0.5"], spurious["ap@0.5"]) == (0, 4, 0, 0.0)
    assert math.isnan(spurious["err@0.5"])


def test_no_background_pixel():
    t = np.ones((3, 3), np.int32)
    r = evaluate.scores(t, t.copy(), [0.9])
    assert (r["n_true"], r["tp@0.9"], r["ap@0.9"]) == (1, 1, 1.0)


def _random_labels(rng, shape=(48, 48), n=12):
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(3, 14, size=2)
        lab[y : y + h, x : x + w] = k
    return lab


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # cellpose divides 0 by 0
def test_equals_cellpose_on_random_pairs():
    from cellpose import metrics

    rng = np.random.default_rng(0)
    ths = [0.5, 0.75, 0.9]
    trues, preds = [], []
    for _ in range(30):
        t = _random_labels(rng)
        # prediction: shifted / jittered copy plus a few random boxes, labels permuted
        p = np.roll(t, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1))
        extra = _random_labels(rng, n=3)
        p = np.where(extra > 0, extra + 100, p)
        t[0, 0] = 0  # cellpose counts objects as len(unique) - 1: keep a background pixel in each
        p[0, 0] = 0
        trues.append(t)
        preds.append(p)
    ap, tp, fp, fn = metrics.average_precision(trues, preds, threshold=ths)
    for i, (t, p) in enumerate(zip(trues, preds)):
        r = evaluate.scores(t, p, ths)
        for j, th in enumerate(ths):
            k = f"{th:g}"
            assert (r[f"tp@{k}"], r[f"fp@{k}"], r[f"fn@{k}"]) == (tp[i, j], fp[i, j], fn[i, j])
            assert r[f"ap@{k}"] == pytest.approx(ap[i, j], abs=1e-6)
    assert tp.sum() > 0 and fp.sum() > 0  # the comparison exercised both outcomes


def test_cli_pools_groups_and_missing(tmp_path, capsys):
    t, p = _pair()
    (tmp_path / "true").mkdir()
    (tmp_path / "pred").mkdir()
    write_labels(tmp_path / "true" / "a.tif", t, pixel_size=None, unit=None)
    write_labels(tmp_path / "pred" / "a.tif", p, pixel_size=None, unit=None)
    write_labels(tmp_path / "true" / "b.tif", t, pixel_size=None, unit=None)  # no prediction -> 3 FN
    write_labels(tmp_path / "pred" / "c.tif", p, pixel_size=None, unit=None)  # no truth -> left out
    pd.DataFrame({"file": ["a.tif", "b.tif"], "modality": ["x", "y"]}).to_csv(tmp_path / "index.csv", index=False)
    out = tmp_path / "table.csv"
    rc = evaluate.main(
        [
            str(tmp_path / "pred"),
            str(tmp_path / "true"),
            "--out",
            str(out),
            "--index",
            str(tmp_path / "index.csv"),
            "--thresholds",
            "0.5",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "scored as empty predictions: b" in err and "left out: c" in err
    df = pd.read_csv(out)
    assert list(df["image"]) == ["a", "b", "pooled", "pooled", "pooled"]
    allrow = df[df["group"] == "all"].iloc[0]
    # pooled = sums: TP 3+0, FP 1+0, FN 0+3
    assert (allrow["tp@0.5"], allrow["fp@0.5"], allrow["fn@0.5"]) == (3, 1, 3)
    assert allrow["ap@0.5"] == pytest.approx(3 / 7)
    assert allrow["err@0.5"] == pytest.approx(4 / 6)
    yrow = df[df["group"] == "y"].iloc[0]
    assert (yrow["tp@0.5"], yrow["fn@0.5"], yrow["ap@0.5"]) == (0, 3, 0.0)


def test_cli_shape_mismatch_is_one_line_error(tmp_path, capsys):
    (tmp_path / "true").mkdir()
    (tmp_path / "pred").mkdir()
    write_labels(tmp_path / "true" / "a.tif", np.ones((4, 4), np.int32), pixel_size=None, unit=None)
    write_labels(tmp_path / "pred" / "a.tif", np.ones((4, 5), np.int32), pixel_size=None, unit=None)
    out = tmp_path / "t.csv"
    rc = evaluate.main([str(tmp_path / "pred"), str(tmp_path / "true"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "expected (4, 4)" in err[0]
    assert not out.exists()
