"""``cpsnake train-size``: fit a classic Cellpose U-Net's size model (style -> diameter), for ``--diameter auto``.

Usage::

    cpsnake train-size MODEL TRAIN [--out size_MODEL.npy] [--per-image 2] [--diam-range 10 60]
                       [--crop 512] [--l2 1] [--seed 0] [--cache DIR] [--val VAL]

MODEL is a U-Net file or registry name; TRAIN is what ``cpsnake train`` takes (``images/`` + ``masks/``,
an ``index.csv`` or a pair list), with the same cache of normalised images (``--cache``; a temporary one
if not given). The output (default ``size_<model>.npy`` beside the model file, where ``--diameter auto``
looks) holds ``A``, ``smean``, ``ymean``, ``diam_mean`` as cellpose 3's ``train_size`` saves them (a dict
in a ``.npy``: cellpose 3 loads it; cpsnake reads it without unpickling objects, :mod:`cpsnake.engine.size`).

The fit, as cellpose 3.1.1.3's ``train_size``: for each training image and each of ``--per-image``
draws, an apparent cell diameter D (log-uniform in ``--diam-range``, px) is chosen; a random crop of the
image, resized by ``D / d`` (d the image's median mask diameter) and by the network's default scale
(``diam_mean / diam_labels``), at most ``--crop`` px a side, goes through the network as the first pass
of ``--diameter auto`` runs it (tiled, the tiles' styles summed and scaled to unit length); its style is
paired with ``log(D / diam_mean)``. A ridge regression (``--l2``, 1 as cellpose) of the centred log
diameters on the centred styles gives ``A``; ``smean`` and ``ymean`` are the means. Differences from
cellpose 3, chosen here: styles come from tiles as at inference rather than one 512-px crop, crops are
not rotated, and the sizes are drawn as apparent diameters instead of a 0.5-1.5 scale factor, so the
regression covers the diameters users give (and the model was trained on).

Printed: the correlation of fitted and true log diameters on the draws; with ``--val``, the whole
two-pass estimate (:func:`cpsnake.engine.size.estimate_diameter`) on each validation image against its median
mask diameter: median absolute error in percent and the share within 10 % and 25 %.

torch and the model modules (which import torch) are imported inside :func:`main`, after the options are checked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from cpsnake.bounds import check_pair, option
from cpsnake.engine import infer, size
from cpsnake.errors import CpsnakeError, guard
from cpsnake.io.outputs import atomic_output
from cpsnake.models.weights import resolve
from cpsnake.training.data import image_for_net, list_pairs, median_diameter, prepare, read_mask

__all__ = ["draw_styles", "fit_size_model", "main"]


def _for_net(img: np.ndarray, in_chans: int, name: str) -> np.ndarray:
    """The cached (3, Y, X) image cut to the network's inputs (the dropped channels must be empty)."""
    if np.any(img[in_chans:]):
        raise CpsnakeError(
            f"{name}: image with {img.shape[0]} channels, expected at most {in_chans} for this "
            "network; train the size model on images the network takes"
        )
    return img[:in_chans]


def draw_styles(
    net,
    items: list[dict],
    *,
    per_image: int = 2,
    diam_range=(10.0, 60.0),
    crop: int = 512,
    seed: int = 0,
    **predict_opts,
) -> tuple[np.ndarray, np.ndarray]:
    """Styles ``(N, S)`` and targets ``log(D / diam_mean)`` ``(N,)`` of ``per_image`` draws per training item.

    ``items`` as :func:`cpsnake.training.data.prepare` returns them. A draw depends only on ``(seed, item index,
    draw)``, so the result does not depend on batching.
    """
    spec = infer.tiling(net)
    r0 = spec.diam_mean / spec.diam_labels
    lo, hi = np.log(diam_range[0]), np.log(diam_range[1])
    draws = [
        (i, k, float(np.exp(np.random.default_rng([seed, i, k, 0]).uniform(lo, hi))))
        for i in range(len(items))
        for k in range(per_image)
    ]
    scales = [r0 * D / items[i]["diameter"] for i, _, D in draws]

    def crops():  # read lazily: one image at a time
        for (i, k, _), s in zip(draws, scales):
            with np.load(items[i]["path"], allow_pickle=False) as z:
                img = _for_net(z["image"].astype(np.float32), spec.in_chans, items[i]["name"])
            rng = np.random.default_rng([seed, i, k, 1])
            side = max(1, int(crop / s))
            y0 = int(rng.integers(0, max(1, img.shape[1] - side + 1)))
            x0 = int(rng.integers(0, max(1, img.shape[2] - side + 1)))
            yield np.ascontiguousarray(img[:, y0 : y0 + side, x0 : x0 + side])

    targets = [np.log(D / spec.diam_mean) for _, _, D in draws]
    styles = [
        style
        for _, style in infer.predict_many(
            net, crops(), scales=scales, resample=False, with_style=True, progress=False, **predict_opts
        )
    ]
    return np.stack(styles).astype(np.float64), np.asarray(targets, np.float64)


def fit_size_model(styles: np.ndarray, targets: np.ndarray, *, diam_mean: float, l2: float = 1.0) -> dict:
    """Ridge regression of ``targets (N,)`` on ``styles (N, S)``: the size model dict (A, smean, ymean, diam_mean)."""
    smean = styles.mean(axis=0)
    X = styles - smean
    ymean = float(targets.mean())
    A = np.linalg.solve(X.T @ X + l2 * np.eye(X.shape[1]), X.T @ (targets - ymean))
    return {
        "A": A.astype(np.float32),
        "smean": smean.astype(np.float32),
        "ymean": np.float32(ymean),
        "diam_mean": float(diam_mean),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpsnake train-size", description=__doc__.split("\n")[0].strip("`: "))
    p.add_argument("model", help="U-Net model file or registry name")
    p.add_argument("train", help="training images and masks, as for cpsnake train")
    p.add_argument("--out", help="size model file (default size_<model>.npy beside the model)")
    p.add_argument(
        "--per-image", type=option("train-size --per-image"), default=2, help="draws per training image (default 2)"
    )
    p.add_argument(
        "--diam-range",
        type=option("train-size --diam-range"),
        nargs=2,
        default=(10.0, 60.0),
        metavar=("MIN", "MAX"),
        help="apparent cell diameters drawn, px (default 10 60)",
    )
    p.add_argument(
        "--crop",
        type=option("train-size --crop"),
        default=512,
        help="largest side fed to the network, px (default 512)",
    )
    p.add_argument(
        "--l2", type=option("train-size --l2"), default=1.0, help="ridge regularisation (default 1, as cellpose)"
    )
    p.add_argument("--seed", type=option("train-size --seed"), default=0)
    p.add_argument("--cache", help="cache of normalised training images (as cpsnake train --cache)")
    p.add_argument("--val", help="validation images and masks: report the --diameter auto error")
    p.add_argument("--min-train-masks", type=option("train-size --min-train-masks"), default=5)
    return p


def _report_val(net, params: dict, val: str) -> str:
    errors = []
    for name, ipath, mpath in list_pairs(val):
        img = image_for_net(ipath)
        true = median_diameter(read_mask(mpath, img.shape[1:]))
        if true > 0:
            diam, _ = size.estimate_diameter(net, _for_net(img, net.in_chans, name), params, progress=False)
            errors.append(abs(diam / true - 1))
    errors = np.asarray(errors)
    return (
        f"val: {errors.size} images, --diameter auto vs median mask diameter: median error "
        f"{100 * np.median(errors):.1f} %, within 10 %: {100 * np.mean(errors <= 0.1):.0f} %, "
        f"within 25 %: {100 * np.mean(errors <= 0.25):.0f} %"
    )


@guard("train-size")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # each value within its bound (cpsnake.bounds), before torch is imported
    check_pair("--diam-range", args.diam_range)
    import torch

    from cpsnake.models.registry import load_model
    from cpsnake.models.unet import UNet

    path = resolve(args.model)  # a registry name wins over a file of that name, as everywhere
    net = load_model(path)
    if not isinstance(net, UNet):
        raise CpsnakeError(
            f"{path}: found a Cellpose-SAM model, expected a classic Cellpose U-Net (only U-Nets have "
            "the style vector a size model reads)"
        )
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        items = prepare(list_pairs(args.train), args.cache or tmp, min_masks=args.min_train_masks)
        if not items:
            raise CpsnakeError(
                f"{args.train}: no image with at least {args.min_train_masks} objects; expected annotated images"
            )
        styles, targets = draw_styles(
            net, items, per_image=args.per_image, diam_range=args.diam_range, crop=args.crop, seed=args.seed
        )
    params = fit_size_model(styles, targets, diam_mean=float(net.diam_mean), l2=args.l2)
    out = Path(args.out) if args.out else size.size_model_path(path)
    with atomic_output(out) as tmp:  # as cellpose 3 saves it: np.save of the dict
        with open(tmp, "wb") as fh:
            np.save(fh, params, allow_pickle=True)
    fitted = (styles - params["smean"]) @ params["A"] + params["ymean"]
    print(
        f"train-size: {len(items)} images, {targets.size} draws, {styles.shape[1]} style values; correlation of "
        f"fitted and true log diameter {np.corrcoef(fitted, targets)[0, 1]:.3f}",
        flush=True,
    )
    if args.val:
        print(_report_val(net, size.read_size_model(out, style_channels=styles.shape[1]), args.val), flush=True)
    print(f"size model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
