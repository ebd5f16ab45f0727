"""``cpsnake train``: train or fine-tune a Cellpose-SAM network or a classic Cellpose U-Net on images with label masks.

Usage::

    cpsnake train TRAIN --out DIR [--arch tiny | --family unet [--nbase 3,32,64,128,256] | --init MODEL | --sam SAM.pth] [--val VAL]
                  [--steps 1000] [--batch-size 8] [--lr LR] [--weight-decay 0.1] [--warmup N]
                  [--layer-drop 0.4] [--seed 0] [--device auto] [--resume DIR/checkpoint.pt]
    python -m cpsnake.training.train pack SRC_SPLIT OUT_DIR [--max-mb 50]

TRAIN (and VAL) is a folder with ``images/`` and ``masks/`` (pairs matched by name stem; masks are label
TIFF/PNG or ImageJ ``RoiSet.zip``), optionally with an ``index.csv`` whose ``file`` column names the
images to use (the split is read from it, never drawn at random), or a CSV/text list of ``image,mask``
path pairs; a pair listed k times is drawn k times as often (a way to weight rare kinds of image).
Images are percentile-normalised exactly as ``cpsnake normalize`` does (1 -> 0, 99 -> 1, per channel)
and zero-padded to 3 channels. Objects under 15 px are removed from the masks, and images
with fewer than ``--min-train-masks`` (5) objects are left out, as cellpose does.

Targets are computed once per image and cached (``--cache``, default ``DIR/cache``; file name = stem +
hash of the image and mask bytes): cell probability (mask > 0) and unit flows from
:func:`cpsnake.engine.heat.masks_to_flows`. Each step draws ``--batch-size`` images (with replacement, from a
generator seeded by ``(seed, step)``, so a run is reproducible and a resumed run continues exactly) and
augments each into a crop of the family's tile size (256 px for Cellpose-SAM, 224 px for the U-Net;
:mod:`cpsnake.training.augment`: rotation, flip, rescaling so that the median
object diameter is log-uniform in ``--diam-range`` 7.5-120 px, channel permutation/dropping, grey
conversion, inversion, brightness/contrast, blur, downsampling, Poisson noise).

Loss (as cellpose 4.2.1.1 ``train._loss_fn_seg``): ``MSE(pred dY dX, 5 * flows) / 2 +
BCEWithLogits(pred cellprob, mask > 0.5)``. Optimiser AdamW (weight decay 0.1). Learning rate (as cellpose's
``train_seg`` schedule, in steps instead of epochs): linear warm-up from 0 over ``--warmup`` steps (default
steps/20, at most 100), constant, then halved 10 times in equal parts of the last ``--decay`` steps
(default steps/10). Defaults: lr 5e-5 for fine-tuning (``--init``, ``--sam``; the Cellpose-SAM value),
2e-4 from scratch. ``--layer-drop`` is the per-sample stochastic depth of the network (0.4 as cellpose).

Outputs in DIR: ``model.pt`` (a plain cellpose-4 state dict, loads with ``cpsnake.models.registry.load_model``;
``diam_labels`` = mean training diameter), ``checkpoint.pt`` (model, optimiser, step, seed, loss log;
tensors and plain containers only, ``torch.load(..., weights_only=True)``), ``log.csv`` (step, lr, loss,
val_ap50). ``--resume DIR/checkpoint.pt`` continues the step count up to ``--steps``, with the batch size,
learning rate, weight decay, warm-up, layer drop and diameter range recorded in the checkpoint unless given
again (and its decay if ``--steps`` is unchanged), so the run goes on exactly. ``--workers N`` processes
prepare batches ahead (default 0 on CPU, min(8, cores - 1) on a GPU); a batch depends only on
``(seed, step)``, never on the number of workers.
With ``--val`` the pooled AP@0.5 on the validation images (the pipeline's own ``infer.predict`` +
``reconstruct.compute_masks``, no diameter) is printed every ``--val-every`` steps.

``pack`` (``python -m cpsnake.training.train pack``) is :mod:`cpsnake.training.pack`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from cpsnake.errors import CpsnakeError, guard, library_text
from cpsnake.models.device import resolve_device

__all__ = [
    "list_pairs",
    "read_mask",
    "median_diameter",
    "prepare",
    "lr_at",
    "loss_fn",
    "make_batch",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "validate",
    "main",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_SUFFIXES = (".tif", ".tiff", ".png", ".zip")


# --- data -----------------------------------------------------------------------------------------


def _by_stem(folder: Path, suffixes) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in suffixes and not p.name.startswith("."):
            stem = p.name[: -len(".zip")] if p.name.endswith(".zip") else p.stem
            if stem.endswith(".roiset") or stem.endswith("_RoiSet"):
                stem = stem.rsplit(".", 1)[0] if stem.endswith(".roiset") else stem[: -len("_RoiSet")]
            out[stem] = p
    return out


def list_pairs(src: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(name, image path, mask path) for a training source, in a fixed order.

    Parameters
    ----------
    src : folder with ``images/`` and ``masks/`` (and optionally ``index.csv`` with a ``file`` column),
        or a CSV/text file of ``image,mask`` lines (relative paths are relative to the file's folder).
    """
    src = Path(src)
    if src.is_dir():
        idir, mdir = src / "images", src / "masks"
        if not idir.is_dir() or not mdir.is_dir():
            raise CpsnakeError(f"{src}: found no images/ and masks/ folders; expected a split folder with both, "
                               "or a list file of image,mask pairs")
        images, masks = _by_stem(idir, IMAGE_SUFFIXES), _by_stem(mdir, MASK_SUFFIXES)
        if (src / "index.csv").exists():
            df = _read_index(src / "index.csv")
            if "file" not in df.columns:
                raise CpsnakeError(f"{src / 'index.csv'}: no 'file' column (found {list(df.columns)}); "
                                   "expected the image file names of the split")
            stems = [Path(f).stem for f in df["file"]]
        else:
            stems = list(images)
        pairs = []
        for s in stems:
            if s not in images:
                raise CpsnakeError(f"{idir}: no image named {s!r}; expected one for every index.csv row")
            if s not in masks:
                raise CpsnakeError(f"{mdir}: no mask named {s!r} for {images[s].name}; expected a mask per image")
            pairs.append((s, images[s], masks[s]))
    elif os.path.lexists(src):
        from cpsnake.io.files import read_text

        pairs = []
        text = read_text(src, "a list file of image,mask path pairs (UTF-8 text)", limit=64 * 2**20)
        for n, line in enumerate(text.splitlines(), 1):
            parts = [x.strip() for x in line.split(",")]
            if not line.strip() or line.startswith("#") or parts[:2] == ["image", "mask"]:
                continue
            if len(parts) != 2:
                raise CpsnakeError(f"{src}:{n}: found {len(parts)} fields, expected 'image,mask'")
            img, msk = (Path(p) if Path(p).is_absolute() else src.parent / p for p in parts)
            pairs.append((img.stem, img, msk))
    else:
        raise CpsnakeError(f"{src}: no such folder or file; expected a split folder (images/, masks/) or a pair list")
    if not pairs:
        raise CpsnakeError(f"{src}: no image/mask pairs found; expected at least one")
    return pairs


def _read_index(path: Path) -> "pd.DataFrame":
    import pandas as pd

    from cpsnake.io.files import regular_file
    from cpsnake.io.tables import read_frame

    regular_file(path, "an index.csv with a 'file' column")
    try:
        return read_frame(pd.read_csv(path, dtype=str))
    except Exception as exc:
        raise CpsnakeError(f"{path}: not a readable CSV ({library_text(exc)}); expected an index.csv with a 'file' "
                           "column; save it as a plain CSV (UTF-8)") from None


def read_mask(path: Path, shape: tuple[int, int], *, max_pixels: int | None = None) -> np.ndarray:
    """Label image (Y, X) int32 from a label TIFF/PNG or an ImageJ RoiSet.zip (needs ``shape``)."""
    from cpsnake.training.evaluate import read_label_file

    if path.suffix.lower() == ".zip":
        from cpsnake.export import roi_import

        lab = roi_import.rois_to_labels(roi_import.read_rois(path), shape, source=path)
    else:
        lab = read_label_file(path, max_pixels=max_pixels)
    lab = np.asarray(lab)
    if lab.shape != tuple(shape):
        raise CpsnakeError(f"{path}: mask of shape {lab.shape}, expected {tuple(shape)} (the image's Y, X)")
    return lab.astype(np.int32)


def median_diameter(labels: np.ndarray) -> float:
    """Median over objects of the equivalent-circle diameter 2 sqrt(area / pi) (0 if no object); any ids."""
    from cpsnake.engine.dynamics import compact

    areas = np.bincount(compact(labels)[1].ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else 0.0


def _clean(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` px and renumber 1..N (in id order; tables follow the object count)."""
    from cpsnake.engine.dynamics import compact

    index = compact(labels)[1]
    areas = np.bincount(index.ravel())
    keep = areas >= min_size
    keep[0] = False
    new = np.zeros(areas.size, np.int32)
    new[keep] = np.arange(1, keep.sum() + 1)
    return new[index]


def _image_for_net(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image and normalise it as the pipeline does -> (3, Y, X) float32 (zero-padded channels)."""
    from cpsnake.io import limits
    from cpsnake.io.inputs import read_image
    from cpsnake.engine.normalize import normalize

    img, _ = read_image(path, max_pixels=max_pixels)
    if img.ndim != 3:
        raise CpsnakeError(f"{path}: image of shape {img.shape}, expected a 2-D image (C, Y, X); train on planes")
    if img.shape[0] > 3:
        raise CpsnakeError(f"{path}: {img.shape[0]} channels, expected at most 3; select channels before training")
    limits.check_min_side(path, img.shape)
    try:
        x, _ = normalize(img)
    except CpsnakeError as exc:
        raise CpsnakeError(f"{path}: {exc}") from None
    out = np.zeros((3,) + x.shape[1:], np.float32)
    out[: x.shape[0]] = x
    return out


def _digest(*paths: Path) -> str:
    """Short hash of the files' bytes (regular files only, read in chunks)."""
    from cpsnake.io.files import regular_file

    h = hashlib.sha1()
    for p in paths:
        regular_file(p, "a training image or mask file")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def prepare(pairs, cache_dir: str | os.PathLike, *, min_size: int = 15, min_masks: int = 5,
            log=None, max_pixels: int | None = None) -> list[dict]:
    """Compute (or reuse) each pair's cached network input and targets.

    Returns
    -------
    list of dict
        ``name``, ``path`` (cache ``.npz`` holding ``image`` (3, Y, X) and ``target`` (3, Y, X) =
        cellprob, dY, dX, both float16), ``diameter`` (median object diameter, px), ``n`` (objects).
        Pairs with fewer than ``min_masks`` objects are left out (named on ``log``).
    """
    from cpsnake.engine.heat import masks_to_flows
    from cpsnake.io.outputs import atomic_output
    from cpsnake.io.outputs import make_folder

    log = sys.stderr if log is None else log
    cache = Path(cache_dir)
    make_folder(cache)
    items, skipped = [], []
    for name, ipath, mpath in pairs:
        path = cache / f"{name}.{_digest(ipath, mpath)}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                diameter, n = float(z["diameter"]), int(z["n"])
        else:
            img = _image_for_net(ipath, max_pixels=max_pixels)
            lab = _clean(read_mask(mpath, img.shape[1:], max_pixels=max_pixels), min_size)
            n = int(lab.max())
            diameter = median_diameter(lab)
            flows = masks_to_flows(lab) if n else np.zeros((2,) + lab.shape, np.float32)
            target = np.concatenate([(lab > 0)[None].astype(np.float32), flows]).astype(np.float16)
            with atomic_output(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, image=img.astype(np.float16), target=target, diameter=np.float64(diameter),
                             n=np.int64(n))
        if n < min_masks:
            skipped.append(name)
            continue
        items.append({"name": name, "path": path, "diameter": diameter, "n": n})
    if skipped:
        skipped = list(dict.fromkeys(skipped))
        print(f"cpsnake train: {len(skipped)} image(s) with fewer than {min_masks} objects left out: "
              f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}", file=log)
    return items


def make_batch(items: list[dict], rng: np.random.Generator, batch_size: int, *, bsize: int = 256,
               diam_range=(7.5, 120.0), augment_p: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``batch_size`` items (with replacement) and augment them.

    Returns
    -------
    x : (B, 3, bsize, bsize) float32 ; y : (B, 3, bsize, bsize) float32 = cellprob, dY, dX
    """
    from cpsnake.training.augment import augment

    xs, ys = [], []
    for i in rng.integers(0, len(items), size=batch_size):
        with np.load(items[i]["path"], allow_pickle=False) as z:
            img, target = z["image"].astype(np.float32), z["target"].astype(np.float32)
        x, y = augment(img, target, rng, diameter=items[i]["diameter"], diam_range=diam_range, bsize=bsize,
                       p=augment_p)
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)


class _BatchStream:
    """Map-style dataset: index ``step`` -> the augmented batch of that step (tensors), from ``(seed, step)``."""

    def __init__(self, items, *, seed: int, batch_size: int, diam_range, augment_p=None, bsize: int = 256) -> None:
        self.items, self.seed, self.batch_size = items, seed, batch_size
        self.diam_range, self.augment_p, self.bsize = diam_range, augment_p, bsize

    def __getitem__(self, step: int):
        import torch

        x, y = make_batch(self.items, np.random.default_rng([self.seed, step]), self.batch_size, bsize=self.bsize,
                          diam_range=self.diam_range, augment_p=self.augment_p)
        return torch.from_numpy(x), torch.from_numpy(y)


# --- optimisation ---------------------------------------------------------------------------------


def lr_at(step: int, total: int, lr: float, *, warmup: int, decay: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, constant, then 10 halvings over the last ``decay``."""
    if step < warmup:
        return lr * (step + 1) / warmup  # cellpose's linspace(0, lr, 10) starts at 0; we start one step in
    start = total - decay
    if decay > 0 and step >= start:
        k = min(10, 1 + (step - start) * 10 // decay)
        return lr / 2**k
    return lr


def loss_fn(pred, target):
    """cellpose's segmentation loss.

    Parameters
    ----------
    pred : (B, 3, Y, X) tensor = dY, dX, cellprob logits
    target : (B, 3, Y, X) tensor = cellprob in [0, 1], dY, dX (unit vectors)

    Returns
    -------
    scalar tensor: ``MSE(pred[:, :2], 5 * target[:, 1:]) / 2 + BCEWithLogits(pred[:, 2], target[:, 0] > 0.5)``
    """
    import torch.nn.functional as F

    flow = F.mse_loss(pred[:, :2].float(), 5.0 * target[:, 1:]) / 2
    prob = F.binary_cross_entropy_with_logits(pred[:, 2].float(), (target[:, 0] > 0.5).float())
    return flow + prob


def save_checkpoint(path, net, optimizer, *, step: int, seed: int, log_rows: list[dict], config: dict) -> None:
    """Write a resumable checkpoint (tensors and plain containers only; loads with weights_only=True)."""
    from cpsnake.models.state import save_tensors

    state = {
        "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "seed": int(seed),
        "log": [dict(r) for r in log_rows],
        "config": dict(config),
    }
    save_tensors(state, path)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Before loading, :func:`cpsnake.models.statefile.check` refuses expanded views, short storages, NaN/Inf and
    more than 3 x :data:`cpsnake.io.limits.MAX_PARAMETERS` elements (weights and two AdamW moments); after,
    the model's tensors get the checks of :func:`cpsnake.models.state.check_tensors`.
    """
    import torch

    from cpsnake.io import limits
    from cpsnake.models import statefile
    from cpsnake.models.state import check_tensors

    what = "a checkpoint.pt written by cpsnake train"
    if not os.path.lexists(path):
        raise CpsnakeError(f"{path}: no such file; expected {what}; check the path")
    inspected = statefile.check(path, max_parameters=3 * limits.MAX_PARAMETERS, what=what)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CpsnakeError(f"{path}: not a loadable checkpoint ({library_text(exc)}); "
                           f"expected {what}; resume from an earlier checkpoint or start again") from None
    if not isinstance(ck, dict) or not {"model", "optimizer", "step", "seed"} <= set(ck):
        raise CpsnakeError(f"{path}: found no model/optimizer/step/seed entries; expected a cpsnake train checkpoint")
    if not isinstance(ck["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ck["model"].values()):
        raise CpsnakeError(f"{path}: found a 'model' entry that is not a dict of tensors; expected {what}")
    check_tensors(ck["model"], str(path), finite=not inspected)
    return ck


def _net_from_state(state: dict):
    """The network of a checkpoint's model state, of either family (train mode is set by :func:`train`)."""
    from cpsnake.models import cpsam, unet
    from cpsnake.models.registry import family_of

    build = cpsam.from_state if family_of(state, "checkpoint") == "cpsam" else unet.from_state
    return build(state, "checkpoint")


def validate(net, val_pairs, *, device=None, max_images: int | None = None, max_pixels: int | None = None) -> float:
    """Pooled AP@0.5 of ``net`` on (name, image, mask) pairs via ``infer.predict`` + ``reconstruct.compute_masks``."""
    from cpsnake.training import evaluate
    from cpsnake.engine.infer import predict
    from cpsnake.engine.reconstruct import compute_masks

    was_training = net.training
    net.eval()
    rows = []
    for name, ipath, mpath in val_pairs[:max_images]:
        img = _image_for_net(ipath, max_pixels=max_pixels)
        true = read_mask(mpath, img.shape[1:], max_pixels=max_pixels)
        flows = predict(net, img, device=device, progress=False)
        rows.append(evaluate.scores(true, compute_masks(flows), [0.5]))
    net.train(was_training)
    return float(evaluate.pool(rows, [0.5])["ap@0.5"])


def train(net, items: list[dict], *, out_dir, steps: int, batch_size: int = 8, lr: float = 5e-5,
          weight_decay: float = 0.1, warmup: int | None = None, decay: int | None = None, seed: int = 0,
          device: str = "cpu", bf16: bool = False, diam_range=(7.5, 120.0), save_every: int = 100,
          log_every: int = 10, val_pairs=None, val_every: int = 0, val_max: int | None = None,
          resume: dict | None = None, augment_p: dict | None = None, workers: int = 0, out=None,
          max_pixels: int | None = None, diam_labels: float | None = None) -> list[dict]:
    """Train ``net`` in place for steps ``start .. steps - 1`` and write ``model.pt``, ``checkpoint.pt``, ``log.csv``.

    Parameters
    ----------
    net : a :class:`~cpsnake.models.CPSAMNet` or :class:`~cpsnake.models.UNet` (train mode is set here);
        crops are the family's tile size (256 or 224 px)
    items : from :func:`prepare`
    diam_labels : float, optional
        Stored in the model as ``diam_labels``; default the mean diameter of the training objects
        (cellpose's convention). A U-Net without a ``--diameter`` rescales images by ``diam_mean /
        diam_labels`` (cellpose 3), so a size-robust U-Net stores its ``diam_mean`` here (own scale).
    resume : a :func:`load_checkpoint` dict: model and optimiser state are restored, counting goes on
        from its ``step`` (the seed is taken from it too).
    workers : int
        Processes that prepare batches ahead (0: in this process). Batch ``step`` depends only on
        ``(seed, step)``, so results do not depend on ``workers``.

    Returns
    -------
    list of dict: the log rows (step, lr, loss[, val_ap50]) of the whole run, resumed part included.
    """
    import torch

    from cpsnake.models.state import save_model

    out = sys.stdout if out is None else out
    out_dir = Path(out_dir)
    warmup = min(100, max(1, steps // 20)) if warmup is None else warmup
    decay = steps // 10 if decay is None else decay
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    start, log_rows = 0, []
    if resume is not None:
        net.load_state_dict(resume["model"], strict=True)
        opt.load_state_dict(resume["optimizer"])
        start, seed, log_rows = int(resume["step"]), int(resume["seed"]), list(resume.get("log", []))
    config = {"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "warmup": warmup, "decay": decay, "diam_range": list(diam_range),
              "layer_drop": float(getattr(net, "rdrop", 0.0))}
    net.diam_labels.data[:] = float(np.mean([it["diameter"] for it in items]) if diam_labels is None else diam_labels)
    from cpsnake.engine.infer import tiling

    running, t0 = [], time.perf_counter()
    batches = _BatchStream(items, seed=seed, batch_size=batch_size, diam_range=tuple(diam_range), augment_p=augment_p,
                           bsize=tiling(net).bsize)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, steps), num_workers=workers,
                                         prefetch_factor=2 if workers else None)
    step = start
    for step, (x, y) in zip(range(start, steps), loader):
        torch.manual_seed(seed * 1_000_003 + step)  # layer drop
        x, y = x.to(device), y.to(device)
        cur = lr_at(step, steps, lr, warmup=warmup, decay=decay)
        for g in opt.param_groups:
            g["lr"] = cur
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            pred = net(x)
        loss = loss_fn(pred, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row = {"step": step + 1, "lr": cur, "loss": float(loss.item())}
        running.append(row["loss"])
        dt = (time.perf_counter() - t0) / len(running)  # training time per step, validation excluded
        if val_pairs and val_every and ((step + 1) % val_every == 0 or step + 1 == steps):
            row["val_ap50"] = validate(net, val_pairs, device=device, max_images=val_max, max_pixels=max_pixels)
            net.train()
        log_rows.append(row)
        if (step + 1) % log_every == 0 or step + 1 == steps or "val_ap50" in row:
            msg = f"step {step + 1}/{steps}  loss {np.mean(running):.4f}  lr {cur:.2e}  {dt:.2f} s/step"
            if "val_ap50" in row:
                msg += f"  val AP@0.5 {row['val_ap50']:.3f}"
            print(msg, file=out, flush=True)
            running, t0 = [], time.perf_counter()
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save_checkpoint(out_dir / "checkpoint.pt", net, opt, step=step + 1, seed=seed, log_rows=log_rows,
                            config=config)
            _write_log(out_dir / "log.csv", log_rows)
    final = max(steps, start)
    save_checkpoint(out_dir / "checkpoint.pt", net, opt, step=final, seed=seed, log_rows=log_rows, config=config)
    save_model(net, out_dir / "model.pt")
    _write_log(out_dir / "log.csv", log_rows)
    return log_rows


def _write_log(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    from cpsnake.io.outputs import atomic_output
    from cpsnake.io.tables import to_csv

    with atomic_output(path) as tmp:
        to_csv(pd.DataFrame(rows), tmp)


# --- command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpsnake train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="pack: python -m cpsnake.training.train pack SRC_SPLIT OUT_DIR [--max-mb 50]")
    p.add_argument("train", help="split folder (images/, masks/[, index.csv]) or a list file of image,mask pairs")
    p.add_argument("--out", required=True, help="output folder: model.pt, checkpoint.pt, log.csv, cache/")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--arch", default=None, help="train a Cellpose-SAM from scratch: tiny (default), vit_b, vit_l, vit_h")
    start.add_argument("--family", choices=("cpsam", "unet"), default=None,
                       help="train from scratch: cpsam (with --arch) or unet (the classic Cellpose U-Net, --nbase)")
    start.add_argument("--init", help="fine-tune a cellpose-4 / cpsnake model (path or registry name)")
    start.add_argument("--sam", help="start from a segment-anything checkpoint (sam_vit_*.pth)")
    start.add_argument("--resume", help="continue from a checkpoint.pt (same --steps total or more)")
    p.add_argument("--val", help="validation split folder or pair list (AP@0.5 printed as training goes)")
    from cpsnake.bounds import option

    def bound(flag: str):  # cpsnake train's own bounds (cpsnake.bounds)
        return option(f"train {flag}")

    p.add_argument("--val-every", type=bound("--val-every"), default=500,
                   help="steps between validations (default 500)")
    p.add_argument("--val-max", type=bound("--val-max"), default=None, help="use only the first N validation images")
    p.add_argument("--steps", type=bound("--steps"), default=1000, help="total optimiser steps (default 1000)")
    # options left out on --resume are the checkpoint's (see _settings), so a resumed run goes on unchanged
    p.add_argument("--batch-size", type=bound("--batch-size"), default=None, help="images per step (default 8)")
    p.add_argument("--lr", type=bound("--lr"), default=None, help="peak learning rate (5e-5 fine-tuning, 2e-4 scratch)")
    p.add_argument("--weight-decay", type=bound("--weight-decay"), default=None,
                   help="AdamW weight decay (default 0.1)")
    p.add_argument("--warmup", type=bound("--warmup"), default=None,
                   help="warm-up steps (default steps/20, at most 100)")
    p.add_argument("--decay", type=bound("--decay"), default=None,
                   help="final steps with 10 halvings (default steps/10)")
    p.add_argument("--layer-drop", type=bound("--layer-drop"), default=None,
                   help="stochastic depth of the encoder (default 0.4)")
    p.add_argument("--diam-range", type=bound("--diam-range"), nargs=2, default=None, metavar=("LO", "HI"),
                   help="median object diameters to rescale to (default 7.5 120)")
    p.add_argument("--nbase", default="3,32,64,128,256",
                   help="--family unet: input channels and widths per level (cellpose 3: 2,32,64,128,256)")
    p.add_argument("--diam-labels", type=bound("--diam-labels"), default=None,
                   help="stored as the model's diam_labels (default: mean training diameter; see train())")
    p.add_argument("--min-train-masks", type=bound("--min-train-masks"), default=5)
    p.add_argument("--seed", type=bound("--seed"), default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, mps")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="autocast dtype (auto: bfloat16 on cuda, float32 elsewhere)")
    p.add_argument("--workers", type=bound("--workers"), default=None,
                   help="batch-preparing processes (default: 0 on cpu, min(8, cores - 1) on a GPU)")
    p.add_argument("--save-every", type=bound("--save-every"), default=100)
    p.add_argument("--log-every", type=bound("--log-every"), default=10)
    p.add_argument("--cache", help="target cache folder (default OUT/cache)")
    from cpsnake.io import limits

    limits.add_option(p)
    return p


DEFAULTS = {"batch_size": 8, "weight_decay": 0.1, "layer_drop": 0.4, "diam_range": [7.5, 120.0]}


def _settings(args: argparse.Namespace, resume: dict | None, lr_default: float) -> dict:
    """Training options: given on the command line, else recorded in the resumed checkpoint, else defaults.

    ``decay`` is taken from the checkpoint only when ``--steps`` is unchanged (a longer run decays over
    its own last tenth); ``warmup`` is the checkpoint's.
    """
    cfg = dict(resume.get("config", {})) if resume else {}
    out = {}
    for key, default in {**DEFAULTS, "lr": lr_default}.items():
        given = getattr(args, key)
        out[key] = given if given is not None else cfg.get(key, default)
    out["warmup"] = args.warmup if args.warmup is not None else cfg.get("warmup")
    same = cfg.get("steps") == args.steps
    out["decay"] = args.decay if args.decay is not None else (cfg.get("decay") if same else None)
    return out


@guard("train")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "pack":
        from cpsnake.training.pack import main as pack_main

        return pack_main(argv[1:])
    args = _parser().parse_args(argv)  # each value within its bound (cpsnake.bounds), before torch is imported
    from cpsnake.bounds import check_pair

    check_pair("--diam-range", args.diam_range)
    import torch

    from cpsnake.models.cpsam import build_cpsam, from_sam_checkpoint
    from cpsnake.models.registry import load_model
    from cpsnake.models.unet import build_unet
    from cpsnake.io.outputs import check_target, writable_folder

    writable_folder(args.out)  # a read-only or misnamed --out, or a final name taken: one line before any work
    for name in ("model.pt", "checkpoint.pt", "log.csv"):
        check_target(Path(args.out) / name)

    device = str(resolve_device("auto", kinds=("cuda", "cpu"))) if args.device == "auto" else args.device
    bf16 = args.precision == "bfloat16" or (args.precision == "auto" and device.startswith("cuda"))
    torch.manual_seed(args.seed)  # random initialisation
    resume = None
    if args.resume:
        resume = load_checkpoint(args.resume)
        net = _net_from_state(resume["model"])
        lr_default = 5e-5
    elif args.init:
        path = Path(args.init)
        if not path.exists():
            from cpsnake.models.weights import resolve

            path = resolve(args.init)
        net = load_model(path)
        lr_default = 5e-5
    elif args.sam:
        net = from_sam_checkpoint(args.sam)
        lr_default = 5e-5
    elif args.family == "unet":
        try:
            nbase = [int(n) for n in args.nbase.split(",")]
        except ValueError:
            nbase = []
        if len(nbase) < 3 or min(nbase) < 1:
            raise CpsnakeError(f"--nbase {args.nbase!r}: expected input channels and at least two widths, e.g. 3,32,64,128,256")
        net = build_unet(nbase)
        lr_default = 2e-3
    else:
        net = build_cpsam(args.arch or "tiny")
        lr_default = 2e-4
    opts = _settings(args, resume, lr_default)
    if hasattr(net, "rdrop"):  # Cellpose-SAM's stochastic depth
        net.rdrop = opts["layer_drop"]
    out_dir = Path(args.out)
    items = prepare(list_pairs(args.train), args.cache or out_dir / "cache", min_masks=args.min_train_masks,
                    max_pixels=args.max_pixels)
    if not items:
        raise CpsnakeError(f"{args.train}: no image with at least {args.min_train_masks} objects; "
                           "expected annotated images (or lower --min-train-masks)")
    val_pairs = list_pairs(args.val) if args.val else None
    if val_pairs:
        import importlib.util

        for mod in ("cpsnake.engine.infer", "cpsnake.engine.reconstruct"):
            if importlib.util.find_spec(mod) is None:
                raise CpsnakeError(f"--val: module {mod} is missing; expected the inference pipeline; drop --val")
    distinct = {i["path"]: i["n"] for i in items}
    print(f"train: {len(distinct)} images, {sum(distinct.values())} objects"
          + (f" ({len(items)} entries with repeats)" if len(items) > len(distinct) else "")
          + f", device {device}, "
          f"{sum(p.numel() for p in net.parameters()):,} parameters", flush=True)
    if resume is not None:
        print("resume: " + ", ".join(f"{k} {v}" for k, v in opts.items() if v is not None)
              + " (options not given are the checkpoint's)", flush=True)
    train(net, items, out_dir=out_dir, steps=args.steps, batch_size=opts["batch_size"], lr=opts["lr"],
          weight_decay=opts["weight_decay"], warmup=opts["warmup"], decay=opts["decay"], seed=args.seed,
          device=device, bf16=bf16, diam_range=tuple(opts["diam_range"]), save_every=args.save_every,
          log_every=args.log_every,
          val_pairs=val_pairs, val_every=args.val_every, val_max=args.val_max, resume=resume, max_pixels=args.max_pixels,
          diam_labels=args.diam_labels,
          workers=args.workers if args.workers is not None else
          (0 if device == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))))
    print(f"model: {out_dir / 'model.pt'}  checkpoint: {out_dir / 'checkpoint.pt'}  log: {out_dir / 'log.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
