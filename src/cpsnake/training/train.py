"""``cpsnake train``: train or fine-tune a Cellpose-SAM network or a classic Cellpose U-Net on images with label masks.

Usage::

    cpsnake train TRAIN --out DIR [--arch tiny | --family unet [--nbase 3,32,64,128,256] | --init MODEL | --sam SAM.pth]
                  [--val VAL]
                  [--steps 1000] [--batch-size 8] [--lr LR] [--weight-decay 0.1] [--warmup N]
                  [--layer-drop 0.4] [--seed 0] [--device auto] [--resume DIR/checkpoint.pt]
    python -m cpsnake.training.train pack SRC_SPLIT OUT_DIR [--max-mb 50]

TRAIN (and VAL) is a folder with ``images/`` and ``masks/``, or a list of ``image,mask`` pairs
(:mod:`cpsnake.training.data`: how pairs are found, normalised like ``cpsnake normalize``, cleaned of small
objects, cached with their targets and drawn into augmented batches). Targets are cached in ``--cache``
(default ``DIR/cache``). Each step draws ``--batch-size`` images from a generator seeded by ``(seed, step)``
and augments each into a crop of the family's tile size (256 px for Cellpose-SAM, 224 px for the U-Net;
:mod:`cpsnake.training.augment`: rotation, flip, rescaling so that the median object diameter is log-uniform
in ``--diam-range`` 7.5-120 px, channel permutation/dropping, grey conversion, inversion,
brightness/contrast, blur, downsampling, Poisson noise).

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

torch, the model modules (which import torch) and pandas are imported inside the functions that use them, so
that a bad option is refused before torch is imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

from cpsnake.bounds import check_pair, option
from cpsnake.engine import infer, reconstruct
from cpsnake.errors import CpsnakeError, guard, library_text
from cpsnake.io import limits
from cpsnake.io.outputs import atomic_output, check_target, writable_folder
from cpsnake.io.tables import to_csv
from cpsnake.models import statefile
from cpsnake.models.device import resolve_device
from cpsnake.models.weights import resolve
from cpsnake.training import evaluate
from cpsnake.training.data import BatchStream, image_for_net, list_pairs, prepare, read_mask
from cpsnake.training.pack import main as pack_main

__all__ = [
    "lr_at",
    "loss_fn",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "validate",
    "main",
]

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

    from cpsnake.models.state import check_tensors

    what = "a checkpoint.pt written by cpsnake train"
    if not os.path.lexists(path):
        raise CpsnakeError(f"{path}: no such file; expected {what}; check the path")
    inspected = statefile.check(path, max_parameters=3 * limits.MAX_PARAMETERS, what=what)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CpsnakeError(
            f"{path}: not a loadable checkpoint ({library_text(exc)}); "
            f"expected {what}; resume from an earlier checkpoint or start again"
        ) from None
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
    was_training = net.training
    net.eval()
    rows = []
    for name, ipath, mpath in val_pairs[:max_images]:
        img = image_for_net(ipath, max_pixels=max_pixels)
        true = read_mask(mpath, img.shape[1:], max_pixels=max_pixels)
        flows = infer.predict(net, img, device=device, progress=False)
        rows.append(evaluate.scores(true, reconstruct.compute_masks(flows), [0.5]))
    net.train(was_training)
    return float(evaluate.pool(rows, [0.5])["ap@0.5"])


def train(
    net,
    items: list[dict],
    *,
    out_dir,
    steps: int,
    batch_size: int = 8,
    lr: float = 5e-5,
    weight_decay: float = 0.1,
    warmup: int | None = None,
    decay: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = False,
    diam_range=(7.5, 120.0),
    save_every: int = 100,
    log_every: int = 10,
    val_pairs=None,
    val_every: int = 0,
    val_max: int | None = None,
    resume: dict | None = None,
    augment_p: dict | None = None,
    workers: int = 0,
    out=None,
    max_pixels: int | None = None,
    diam_labels: float | None = None,
) -> list[dict]:
    """Train ``net`` in place for steps ``start .. steps - 1`` and write ``model.pt``, ``checkpoint.pt``, ``log.csv``.

    Parameters
    ----------
    net : a :class:`~cpsnake.models.cpsam.CPSAMNet` or :class:`~cpsnake.models.unet.UNet` (train mode is set here);
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
    config = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "decay": decay,
        "diam_range": list(diam_range),
        "layer_drop": float(getattr(net, "rdrop", 0.0)),
    }
    net.diam_labels.data[:] = float(np.mean([it["diameter"] for it in items]) if diam_labels is None else diam_labels)
    running, t0 = [], time.perf_counter()
    batches = BatchStream(
        items,
        seed=seed,
        batch_size=batch_size,
        diam_range=tuple(diam_range),
        augment_p=augment_p,
        bsize=infer.tiling(net).bsize,
    )
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=range(start, steps),
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
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
            save_checkpoint(
                out_dir / "checkpoint.pt", net, opt, step=step + 1, seed=seed, log_rows=log_rows, config=config
            )
            _write_log(out_dir / "log.csv", log_rows)
    final = max(steps, start)
    save_checkpoint(out_dir / "checkpoint.pt", net, opt, step=final, seed=seed, log_rows=log_rows, config=config)
    save_model(net, out_dir / "model.pt")
    _write_log(out_dir / "log.csv", log_rows)
    return log_rows


def _write_log(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    with atomic_output(path) as tmp:
        to_csv(pd.DataFrame(rows), tmp)


# --- command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpsnake train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="pack: python -m cpsnake.training.train pack SRC_SPLIT OUT_DIR [--max-mb 50]",
    )
    p.add_argument("train", help="split folder (images/, masks/[, index.csv]) or a list file of image,mask pairs")
    p.add_argument("--out", required=True, help="output folder: model.pt, checkpoint.pt, log.csv, cache/")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--arch", default=None, help="train a Cellpose-SAM from scratch: tiny (default), vit_b, vit_l, vit_h"
    )
    start.add_argument(
        "--family",
        choices=("cpsam", "unet"),
        default=None,
        help="train from scratch: cpsam (with --arch) or unet (the classic Cellpose U-Net, --nbase)",
    )
    start.add_argument("--init", help="fine-tune a cellpose-4 / cpsnake model (path or registry name)")
    start.add_argument("--sam", help="start from a segment-anything checkpoint (sam_vit_*.pth)")
    start.add_argument("--resume", help="continue from a checkpoint.pt (same --steps total or more)")
    p.add_argument("--val", help="validation split folder or pair list (AP@0.5 printed as training goes)")

    def bound(flag: str):  # cpsnake train's own bounds (cpsnake.bounds)
        return option(f"train {flag}")

    p.add_argument(
        "--val-every", type=bound("--val-every"), default=500, help="steps between validations (default 500)"
    )
    p.add_argument("--val-max", type=bound("--val-max"), default=None, help="use only the first N validation images")
    p.add_argument("--steps", type=bound("--steps"), default=1000, help="total optimiser steps (default 1000)")
    # options left out on --resume are the checkpoint's (see _settings), so a resumed run goes on unchanged
    p.add_argument("--batch-size", type=bound("--batch-size"), default=None, help="images per step (default 8)")
    p.add_argument("--lr", type=bound("--lr"), default=None, help="peak learning rate (5e-5 fine-tuning, 2e-4 scratch)")
    p.add_argument(
        "--weight-decay", type=bound("--weight-decay"), default=None, help="AdamW weight decay (default 0.1)"
    )
    p.add_argument(
        "--warmup", type=bound("--warmup"), default=None, help="warm-up steps (default steps/20, at most 100)"
    )
    p.add_argument(
        "--decay", type=bound("--decay"), default=None, help="final steps with 10 halvings (default steps/10)"
    )
    p.add_argument(
        "--layer-drop", type=bound("--layer-drop"), default=None, help="stochastic depth of the encoder (default 0.4)"
    )
    p.add_argument(
        "--diam-range",
        type=bound("--diam-range"),
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="median object diameters to rescale to (default 7.5 120)",
    )
    p.add_argument(
        "--nbase",
        default="3,32,64,128,256",
        help="--family unet: input channels and widths per level (cellpose 3: 2,32,64,128,256)",
    )
    p.add_argument(
        "--diam-labels",
        type=bound("--diam-labels"),
        default=None,
        help="stored as the model's diam_labels (default: mean training diameter; see train())",
    )
    p.add_argument("--min-train-masks", type=bound("--min-train-masks"), default=5)
    p.add_argument("--seed", type=bound("--seed"), default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, mps")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="autocast dtype (auto: bfloat16 on cuda, float32 elsewhere)",
    )
    p.add_argument(
        "--workers",
        type=bound("--workers"),
        default=None,
        help="batch-preparing processes (default: 0 on cpu, min(8, cores - 1) on a GPU)",
    )
    p.add_argument("--save-every", type=bound("--save-every"), default=100)
    p.add_argument("--log-every", type=bound("--log-every"), default=10)
    p.add_argument("--cache", help="target cache folder (default OUT/cache)")

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
        return pack_main(argv[1:])
    args = _parser().parse_args(argv)  # each value within its bound (cpsnake.bounds), before torch is imported
    check_pair("--diam-range", args.diam_range)
    import torch

    from cpsnake.models.cpsam import build_cpsam, from_sam_checkpoint
    from cpsnake.models.registry import load_model
    from cpsnake.models.unet import build_unet

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
        net = load_model(resolve(args.init))  # a registry name wins over a file of that name, as everywhere
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
            raise CpsnakeError(
                f"--nbase {args.nbase!r}: expected input channels and at least two widths, e.g. 3,32,64,128,256"
            )
        net = build_unet(nbase)
        lr_default = 2e-3
    else:
        net = build_cpsam(args.arch or "tiny")
        lr_default = 2e-4
    opts = _settings(args, resume, lr_default)
    if hasattr(net, "rdrop"):  # Cellpose-SAM's stochastic depth
        net.rdrop = opts["layer_drop"]
    out_dir = Path(args.out)
    items = prepare(
        list_pairs(args.train),
        args.cache or out_dir / "cache",
        min_masks=args.min_train_masks,
        max_pixels=args.max_pixels,
    )
    if not items:
        raise CpsnakeError(
            f"{args.train}: no image with at least {args.min_train_masks} objects; "
            "expected annotated images (or lower --min-train-masks)"
        )
    val_pairs = list_pairs(args.val) if args.val else None
    if val_pairs:
        for mod in ("cpsnake.engine.infer", "cpsnake.engine.reconstruct"):
            if importlib.util.find_spec(mod) is None:
                raise CpsnakeError(f"--val: module {mod} is missing; expected the inference pipeline; drop --val")
    distinct = {i["path"]: i["n"] for i in items}
    print(
        f"train: {len(distinct)} images, {sum(distinct.values())} objects"
        + (f" ({len(items)} entries with repeats)" if len(items) > len(distinct) else "")
        + f", device {device}, "
        f"{sum(p.numel() for p in net.parameters()):,} parameters",
        flush=True,
    )
    if resume is not None:
        print(
            "resume: "
            + ", ".join(f"{k} {v}" for k, v in opts.items() if v is not None)
            + " (options not given are the checkpoint's)",
            flush=True,
        )
    train(
        net,
        items,
        out_dir=out_dir,
        steps=args.steps,
        batch_size=opts["batch_size"],
        lr=opts["lr"],
        weight_decay=opts["weight_decay"],
        warmup=opts["warmup"],
        decay=opts["decay"],
        seed=args.seed,
        device=device,
        bf16=bf16,
        diam_range=tuple(opts["diam_range"]),
        save_every=args.save_every,
        log_every=args.log_every,
        val_pairs=val_pairs,
        val_every=args.val_every,
        val_max=args.val_max,
        resume=resume,
        max_pixels=args.max_pixels,
        diam_labels=args.diam_labels,
        workers=args.workers
        if args.workers is not None
        else (0 if device == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))),
    )
    print(f"model: {out_dir / 'model.pt'}  checkpoint: {out_dir / 'checkpoint.pt'}  log: {out_dir / 'log.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
