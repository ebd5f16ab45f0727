"""``cpsnake evaluate PRED_DIR TRUE_DIR``: how well predicted label images match true ones.

Usage::

    cpsnake evaluate PRED_DIR TRUE_DIR [--out TABLE.csv] [--thresholds 0.5 0.75 0.9]
                     [--index INDEX.csv [--group-by modality]]

Files are paired by name stem (``a.tif`` in PRED_DIR with ``a.tif`` / ``a.png`` in TRUE_DIR; ``.tif``,
``.tiff`` and ``.png`` label images are read). A true image with no prediction is scored as an empty
prediction (all its objects are false negatives) and named on stderr; a prediction with no true image
cannot be scored, is left out and named on stderr. Two label images of different shapes are an error.

Definitions (the same as ``cellpose.metrics.average_precision``): objects are the distinct non-zero
labels; IoU(t, p) = |t & p| / |t | p|; at a threshold th the true positives TP are the largest
one-to-one matching of true and predicted objects with IoU >= th (a linear sum assignment on
``-(IoU >= th) - IoU / (2 n_min)``); FP = predicted objects left unmatched, FN = true objects left
unmatched; AP = TP / (TP + FP + FN); error rate = (FP + FN) / (TP + FN). AP and error rate are
undefined (empty cells, NaN) where their denominator is 0 (e.g. an empty prediction of an empty image).
One deliberate difference: cellpose counts objects as ``len(unique(labels)) - 1``, one too few when an
image has no background pixel; here objects are always the distinct non-zero labels.

The table has one row per image, one ``pooled`` row (TP, FP and FN summed over all images, then AP and
error rate computed from the sums; not the mean of per-image APs) and, with ``--index``, one pooled
row per group (``--group-by`` column of the index, matched on its ``file`` column by stem). Columns:
``image, group, n_true, n_pred`` then per threshold ``ap@T, tp@T, fp@T, fn@T, err@T``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cpsnake.errors import CpsnakeError, guard, library_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["iou_matrix", "match_counts", "overlap_pairs", "matched", "scores", "evaluate_dirs", "pool", "main"]

SUFFIXES = (".tif", ".tiff", ".png")
DEFAULT_THRESHOLDS = (0.5, 0.75, 0.9)


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, int, int]:
    """IoU of every (true object, predicted object) pair.

    Parameters
    ----------
    true, pred : (Y, X) or (Z, Y, X) int ndarray
        Label images of the same shape, 0 = background, other values = one object each (need not be
        consecutive).

    Returns
    -------
    iou : (n_true, n_pred) float64 ndarray
        Rows in increasing true label order, columns in increasing predicted label order.
    n_true, n_pred : int
        Number of distinct non-zero labels in each image.
    """
    if true.shape != pred.shape:
        raise ValueError(f"label images of shapes {true.shape} and {pred.shape}; expected equal shapes")
    # compact the labels to 0..n (0 stays background) so the overlap table is small
    ut, it = np.unique(true.ravel(), return_inverse=True)
    up, ip = np.unique(pred.ravel(), return_inverse=True)
    if ut.size == 0 or ut[0] != 0:  # no background pixel: shift so that index 0 is "background"
        it = it + 1
        ut = np.concatenate([[0], ut])
    if up.size == 0 or up[0] != 0:
        ip = ip + 1
        up = np.concatenate([[0], up])
    nt, npr = ut.size, up.size
    overlap = np.bincount(it * npr + ip, minlength=nt * npr).reshape(nt, npr).astype(np.float64)
    area_t = overlap.sum(axis=1, keepdims=True)
    area_p = overlap.sum(axis=0, keepdims=True)
    ov = overlap[1:, 1:]
    union = area_t[1:] + area_p[:, 1:] - ov
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, ov / np.where(union > 0, union, 1), 0.0)
    return iou, nt - 1, npr - 1


def match_counts(iou: np.ndarray, threshold: float) -> int:
    """Number of true positives: the largest one-to-one matching of pairs with ``iou >= threshold``.

    Parameters
    ----------
    iou : (n_true, n_pred) ndarray
    threshold : float

    Returns
    -------
    tp : int
        Ties between matchings of equal size are broken towards higher total IoU (as cellpose does).
    """
    from scipy.optimize import linear_sum_assignment

    if iou.size == 0:
        return 0
    n_min = min(iou.shape)
    ok = iou >= threshold
    cost = -ok.astype(np.float64) - iou / (2 * n_min)
    rows, cols = linear_sum_assignment(cost)
    return int(ok[rows, cols].sum())


def overlap_pairs(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """IoU of every overlapping (true object, predicted object) pair, without an n_true x n_pred table.

    Parameters
    ----------
    true, pred : (Y, X) or (Z, Y, X) int ndarray of the same shape, 0 = background, ids need not be
        consecutive

    Returns
    -------
    ti, pi : (P,) int64 0-based object indices (in increasing label order) of the P overlapping pairs
    iou : (P,) float64
    n_true, n_pred : int, the numbers of distinct non-zero labels

    Memory follows the number of pixels, whatever the numbers of objects (:func:`iou_matrix` needs
    n_true x n_pred entries).
    """
    from cpsnake.engine.dynamics import compact

    if true.shape != pred.shape:
        raise ValueError(f"label images of shapes {true.shape} and {pred.shape}; expected equal shapes")
    t_ids, it = compact(true)
    p_ids, ip = compact(pred)
    it, ip = it.ravel(), ip.ravel()
    nt, npr = t_ids.size, p_ids.size
    area_t = np.bincount(it, minlength=nt + 1)
    area_p = np.bincount(ip, minlength=npr + 1)
    both = (it > 0) & (ip > 0)
    keys, inter = np.unique(it[both].astype(np.int64) * (npr + 1) + ip[both], return_counts=True)
    ti, pi = np.divmod(keys, npr + 1)
    iou = inter / (area_t[ti] + area_p[pi] - inter).astype(np.float64)
    return ti - 1, pi - 1, iou, nt, npr


def matched(ti: np.ndarray, pi: np.ndarray, iou: np.ndarray, n_true: int, n_pred: int, threshold: float) -> int:
    """True positives from :func:`overlap_pairs`: the largest one-to-one matching of pairs with IoU >= threshold.

    Equal to :func:`match_counts` on the full matrix: cellpose's assignment maximises the number of
    such pairs first (its IoU tie-break term adds less than 1 in all), i.e. a maximum bipartite matching.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    ok = iou >= threshold
    if not ok.any():
        return 0
    graph = csr_matrix((np.ones(int(ok.sum()), np.int8), (ti[ok], pi[ok])), shape=(n_true, n_pred))
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def scores(true: np.ndarray, pred: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Counts and scores of one pair of label images.

    Parameters
    ----------
    true, pred : (Y, X) or (Z, Y, X) int ndarray
    thresholds : sequence of float

    Returns
    -------
    dict
        ``n_true``, ``n_pred`` and, per threshold ``T`` (formatted with :func:`_fmt`), ``tp@T``,
        ``fp@T``, ``fn@T``, ``ap@T``, ``err@T`` (NaN where undefined).
    """
    pairs = overlap_pairs(true, pred)
    n_true, n_pred = pairs[3], pairs[4]
    row: dict = {"n_true": n_true, "n_pred": n_pred}
    for th in thresholds:
        tp = matched(*pairs, th)
        row.update(_derived(_fmt(th), tp, n_pred - tp, n_true - tp))
    return row


def _fmt(th: float) -> str:
    return f"{th:g}"


def _derived(t: str, tp: int, fp: int, fn: int) -> dict:
    ap = tp / (tp + fp + fn) if tp + fp + fn > 0 else float("nan")
    err = (fp + fn) / (tp + fn) if tp + fn > 0 else float("nan")
    return {f"ap@{t}": ap, f"tp@{t}": tp, f"fp@{t}": fp, f"fn@{t}": fn, f"err@{t}": err}


def pool(rows: list[dict], thresholds=DEFAULT_THRESHOLDS, *, image: str = "pooled", group: str = "") -> dict:
    """One row with TP, FP, FN (and object counts) summed over ``rows``, AP and error rate from the sums."""
    out: dict = {"image": image, "group": group}
    out["n_true"] = int(sum(r["n_true"] for r in rows))
    out["n_pred"] = int(sum(r["n_pred"] for r in rows))
    for th in thresholds:
        t = _fmt(th)
        tp, fp, fn = (int(sum(r[f"{k}@{t}"] for r in rows)) for k in ("tp", "fp", "fn"))
        out.update(_derived(t, tp, fp, fn))
    return out


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise CpsnakeError(f"{folder}: not a folder; expected a folder of label images ({', '.join(SUFFIXES)})")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                raise CpsnakeError(f"{p}: a second label file named {p.stem!r} in {folder}; expected one per name")
            files[p.stem] = p
    return files


def read_label_file(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a label image (``.tif``/``.tiff`` via :func:`cpsnake.io.labels.read_labels`, ``.png`` via Pillow), its
    values held to the rule of :func:`cpsnake.io.label_check.check_labels` either way.

    Only regular files are read, and the size the header declares is checked against ``max_pixels``
    (see :mod:`cpsnake.io.limits`) before decoding.
    """
    from cpsnake.io.formats import describe
    from cpsnake.io.label_check import LABELS_FIX, check_labels
    from cpsnake.io.labels import read_labels
    from cpsnake.io.png_jpeg import pillow_without_limit, png_shape

    if path.suffix.lower() == ".png":
        from PIL import Image

        from cpsnake.io import files, limits

        what = "a grey integer label image (PNG)"
        files.regular_file(path, what)
        with open(path, "rb") as fh:
            head = fh.read(33)
        if not head.startswith(b"\x89PNG\r\n\x1a\n"):
            raise CpsnakeError(f"{path}: not a PNG ({describe(path)}); expected {what}; save the labels as PNG or TIFF")
        h, w, spp, _ = png_shape(path, head)
        limits.check_samples(path, (h, w, spp) if spp > 1 else (h, w), limit=max_pixels, what="PNG")
        try:
            with pillow_without_limit(), Image.open(path) as im:
                arr = np.asarray(im)
        except Exception as exc:
            raise CpsnakeError(
                f"{path}: not a readable PNG ({library_text(exc)}); expected {what}; copy or export it again"
            ) from None
        if arr.ndim != 2 or arr.dtype.kind not in "ui":
            raise CpsnakeError(
                f"{path}: found a PNG of shape {arr.shape} and type {arr.dtype}; expected {what}; {LABELS_FIX}"
            )
        return check_labels(arr, path, source="file").astype(np.int32)
    return read_labels(path, max_pixels=max_pixels)[0]


def read_index(path: Path, column: str) -> dict[str, str]:
    """Map file stem -> value of ``column`` from a CSV with a ``file`` column."""
    import pandas as pd

    from cpsnake.io.files import regular_file
    from cpsnake.io.tables import read_frame

    regular_file(path, f"a CSV index with columns file,{column}")
    try:
        df = read_frame(pd.read_csv(path, dtype=str))
    except Exception as exc:
        raise CpsnakeError(
            f"{path}: not a readable CSV ({library_text(exc)}); expected columns file,{column}; "
            "save the index as a plain CSV (UTF-8)"
        ) from None
    for col in ("file", column):
        if col not in df.columns:
            names = [str(c) for c in df.columns]
            if all(re.fullmatch(r"[\w .()-]{1,40}", c) for c in names):  # column names, not a line of another file
                found, hint = f"found {names}", f"pass --group-by with one of {names}"
            else:
                found, hint = f"found {len(names)} column(s) with no such name", "check that this is the index file"
            raise CpsnakeError(
                f"{path}: no column {col!r} ({found}); expected columns file,{column}; add the column or {hint}"
            )
    return {Path(f).stem: g for f, g in zip(df["file"], df[column].fillna(""))}


def evaluate_dirs(
    pred_dir,
    true_dir,
    *,
    thresholds=DEFAULT_THRESHOLDS,
    groups: dict[str, str] | None = None,
    log=None,
    max_pixels: int | None = None,
) -> "pd.DataFrame":
    """Score every true label image in ``true_dir`` against its namesake in ``pred_dir``.

    Returns
    -------
    pandas.DataFrame
        One row per image (sorted by name), then per-group pooled rows (``image == "pooled"``,
        ``group`` set) when ``groups`` is given, then the overall pooled row (``group == "all"``).
    """
    import pandas as pd

    log = sys.stderr if log is None else log
    pred_files = _label_files(Path(pred_dir))
    true_files = _label_files(Path(true_dir))
    if not true_files:
        raise CpsnakeError(f"{true_dir}: no label images; expected files ending in {', '.join(SUFFIXES)}")
    missing = [s for s in true_files if s not in pred_files]
    extra = [s for s in pred_files if s not in true_files]
    if missing:
        print(
            f"cpsnake evaluate: {len(missing)} true image(s) without a prediction, scored as empty "
            f"predictions: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}",
            file=log,
        )
    if extra:
        print(
            f"cpsnake evaluate: {len(extra)} prediction(s) without a true image, left out: "
            f"{', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}",
            file=log,
        )
    rows = []
    for stem, tpath in true_files.items():
        true = read_label_file(tpath, max_pixels=max_pixels)
        if stem in pred_files:
            pred = read_label_file(pred_files[stem], max_pixels=max_pixels)
            if pred.shape != true.shape:
                raise CpsnakeError(
                    f"{pred_files[stem]}: labels of shape {pred.shape}, expected {true.shape} "
                    f"as in {tpath}; predict at the true image's size"
                )
        else:
            pred = np.zeros_like(true)
        group = (groups or {}).get(stem, "")
        rows.append({"image": stem, "group": group, **scores(true, pred, thresholds)})
    table = list(rows)
    if groups is not None:
        for g in sorted({r["group"] for r in rows}):
            table.append(pool([r for r in rows if r["group"] == g], thresholds, group=g))
    table.append(pool(rows, thresholds, group="all"))
    return pd.DataFrame(table)


def _print_summary(df, thresholds, out=None) -> None:
    pooled = df[df["image"] == "pooled"]
    cols = (
        ["group", "n_images", "n_true", "n_pred"]
        + [f"ap@{_fmt(t)}" for t in thresholds]
        + [f"err@{_fmt(thresholds[0])}"]
    )
    per_image = df[df["image"] != "pooled"]
    lines = []
    for _, r in pooled.iterrows():
        n = len(per_image) if r["group"] == "all" else int((per_image["group"] == r["group"]).sum())
        lines.append({**r.to_dict(), "n_images": n})
    import pandas as pd

    print(pd.DataFrame(lines)[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=out)


@guard("evaluate")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cpsnake evaluate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pred_dir", help="folder of predicted label images")
    p.add_argument("true_dir", help="folder of true label images (same names)")
    p.add_argument("--out", help="write the table (per image + pooled rows) to this CSV")
    from cpsnake.bounds import option

    p.add_argument(
        "--thresholds",
        type=option("--thresholds"),
        nargs="+",
        default=list(DEFAULT_THRESHOLDS),
        help="IoU thresholds (default 0.5 0.75 0.9)",
    )
    p.add_argument("--index", help="CSV with a 'file' column and a grouping column (per-group pooled rows)")
    p.add_argument("--group-by", default="modality", help="grouping column of --index (default modality)")
    from cpsnake.io import limits

    limits.add_option(p)
    args = p.parse_args(argv)
    groups = read_index(Path(args.index), args.group_by) if args.index else None
    df = evaluate_dirs(
        args.pred_dir, args.true_dir, thresholds=args.thresholds, groups=groups, max_pixels=args.max_pixels
    )
    if args.out:
        from cpsnake.io.outputs import atomic_output
        from cpsnake.io.tables import to_csv

        with atomic_output(args.out) as tmp:
            to_csv(df, tmp, float_format="%.6g")
    _print_summary(df, args.thresholds)
    if args.out:
        print(f"table: {os.fspath(args.out)} ({len(df)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
