"""Training data: image/mask pairs, their cached network inputs and targets, and the augmented batches.

A training source (TRAIN or VAL of ``cpsnake train``, SRC of ``pack``) is a folder with ``images/`` and
``masks/`` (pairs matched by name stem; masks are label TIFF/PNG or ImageJ ``RoiSet.zip``), optionally with an
``index.csv`` whose ``file`` column names the images to use (the split is read from it, never drawn at random),
or a CSV/text list of ``image,mask`` path pairs; a pair listed k times is drawn k times as often (a way to
weight rare kinds of image) (:func:`list_pairs`). Images are percentile-normalised exactly as ``cpsnake
normalize`` does (1 -> 0, 99 -> 1, per channel) and zero-padded to 3 channels (:func:`image_for_net`). Objects
under 15 px are removed from the masks, and images with fewer than ``--min-train-masks`` (5) objects are left
out, as cellpose does.

Targets are computed once per image and cached (:func:`prepare`; file name = stem + hash of the image and mask
bytes): cell probability (mask > 0) and unit flows from :func:`cpsnake.engine.heat.masks_to_flows`. Each
step draws a batch of images (with replacement, from a generator seeded by ``(seed, step)``, so a run is
reproducible and a resumed run continues exactly) and augments each into a crop of the family's tile size
(:func:`make_batch`, :class:`BatchStream`; :mod:`cpsnake.training.augment`).

pandas (index files) and torch (the batch stream's tensors) are imported where they are used: ``pack`` and the
option checks of ``cpsnake train`` run without them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from cpsnake.engine.dynamics import compact
from cpsnake.engine.heat import masks_to_flows
from cpsnake.engine.normalize import normalize
from cpsnake.errors import CpsnakeError, library_text
from cpsnake.export.roi_import import read_rois, rois_to_labels
from cpsnake.io import limits
from cpsnake.io.files import read_text, regular_file
from cpsnake.io.inputs import read_image
from cpsnake.io.outputs import atomic_output, make_folder
from cpsnake.io.tables import read_frame
from cpsnake.training.augment import augment
from cpsnake.training.evaluate import read_label_file

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "list_pairs",
    "read_mask",
    "median_diameter",
    "image_for_net",
    "prepare",
    "make_batch",
    "BatchStream",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_SUFFIXES = (".tif", ".tiff", ".png", ".zip")


# --- pairs, images, masks ----------------------------------------------------------------------------


def _by_stem(folder: Path, suffixes) -> dict[str, Path]:
    """Name stem -> file of ``folder``'s files with ``suffixes`` (``NAME.roiset.zip``, ``NAME_RoiSet.zip``: NAME)."""
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
            raise CpsnakeError(
                f"{src}: found no images/ and masks/ folders; expected a split folder with both, "
                "or a list file of image,mask pairs"
            )
        images, masks = _by_stem(idir, IMAGE_SUFFIXES), _by_stem(mdir, MASK_SUFFIXES)
        if (src / "index.csv").exists():
            df = _read_index(src / "index.csv")
            if "file" not in df.columns:
                raise CpsnakeError(
                    f"{src / 'index.csv'}: no 'file' column (found {list(df.columns)}); "
                    "expected the image file names of the split"
                )
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


def _read_index(path: Path):
    """An index.csv (a ``file`` column of image names) as a pandas DataFrame of strings."""
    import pandas as pd

    regular_file(path, "an index.csv with a 'file' column")
    try:
        return read_frame(pd.read_csv(path, dtype=str))
    except Exception as exc:
        raise CpsnakeError(
            f"{path}: not a readable CSV ({library_text(exc)}); expected an index.csv with a 'file' "
            "column; save it as a plain CSV (UTF-8)"
        ) from None


def read_mask(path: Path, shape: tuple[int, int], *, max_pixels: int | None = None) -> np.ndarray:
    """Label image (Y, X) int32 from a label TIFF/PNG or an ImageJ RoiSet.zip (needs ``shape``)."""
    if path.suffix.lower() == ".zip":
        lab = rois_to_labels(read_rois(path), shape, source=path)
    else:
        lab = read_label_file(path, max_pixels=max_pixels)
    lab = np.asarray(lab)
    if lab.shape != tuple(shape):
        raise CpsnakeError(f"{path}: mask of shape {lab.shape}, expected {tuple(shape)} (the image's Y, X)")
    return lab.astype(np.int32)


def median_diameter(labels: np.ndarray) -> float:
    """Median over objects of the equivalent-circle diameter 2 sqrt(area / pi) (0 if no object); any ids."""
    areas = np.bincount(compact(labels)[1].ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else 0.0


def _clean(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` px and renumber 1..N (in id order; tables follow the object count)."""
    index = compact(labels)[1]
    areas = np.bincount(index.ravel())
    keep = areas >= min_size
    keep[0] = False
    new = np.zeros(areas.size, np.int32)
    new[keep] = np.arange(1, keep.sum() + 1)
    return new[index]


def image_for_net(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image and normalise it as the pipeline does -> (3, Y, X) float32 (zero-padded channels)."""
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
    h = hashlib.sha1()
    for p in paths:
        regular_file(p, "a training image or mask file")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


# --- cached targets and batches -------------------------------------------------------------------


def prepare(
    pairs,
    cache_dir: str | os.PathLike,
    *,
    min_size: int = 15,
    min_masks: int = 5,
    log=None,
    max_pixels: int | None = None,
) -> list[dict]:
    """Compute (or reuse) each pair's cached network input and targets.

    Returns
    -------
    list of dict
        ``name``, ``path`` (cache ``.npz`` holding ``image`` (3, Y, X) and ``target`` (3, Y, X) =
        cellprob, dY, dX, both float16), ``diameter`` (median object diameter, px), ``n`` (objects).
        Pairs with fewer than ``min_masks`` objects are left out (named on ``log``).
    """
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
            img = image_for_net(ipath, max_pixels=max_pixels)
            lab = _clean(read_mask(mpath, img.shape[1:], max_pixels=max_pixels), min_size)
            n = int(lab.max())
            diameter = median_diameter(lab)
            flows = masks_to_flows(lab) if n else np.zeros((2,) + lab.shape, np.float32)
            target = np.concatenate([(lab > 0)[None].astype(np.float32), flows]).astype(np.float16)
            with atomic_output(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(
                        fh, image=img.astype(np.float16), target=target, diameter=np.float64(diameter), n=np.int64(n)
                    )
        if n < min_masks:
            skipped.append(name)
            continue
        items.append({"name": name, "path": path, "diameter": diameter, "n": n})
    if skipped:
        skipped = list(dict.fromkeys(skipped))
        print(
            f"cpsnake train: {len(skipped)} image(s) with fewer than {min_masks} objects left out: "
            f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}",
            file=log,
        )
    return items


def make_batch(
    items: list[dict],
    rng: np.random.Generator,
    batch_size: int,
    *,
    bsize: int = 256,
    diam_range=(7.5, 120.0),
    augment_p: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``batch_size`` items (with replacement) and augment them.

    Returns
    -------
    x : (B, 3, bsize, bsize) float32 ; y : (B, 3, bsize, bsize) float32 = cellprob, dY, dX
    """
    xs, ys = [], []
    for i in rng.integers(0, len(items), size=batch_size):
        with np.load(items[i]["path"], allow_pickle=False) as z:
            img, target = z["image"].astype(np.float32), z["target"].astype(np.float32)
        x, y = augment(img, target, rng, diameter=items[i]["diameter"], diam_range=diam_range, bsize=bsize, p=augment_p)
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)


class BatchStream:
    """Map-style dataset: index ``step`` -> the augmented batch of that step (tensors), from ``(seed, step)``."""

    def __init__(self, items, *, seed: int, batch_size: int, diam_range, augment_p=None, bsize: int = 256) -> None:
        self.items, self.seed, self.batch_size = items, seed, batch_size
        self.diam_range, self.augment_p, self.bsize = diam_range, augment_p, bsize

    def __getitem__(self, step: int):
        import torch

        x, y = make_batch(
            self.items,
            np.random.default_rng([self.seed, step]),
            self.batch_size,
            bsize=self.bsize,
            diam_range=self.diam_range,
            augment_p=self.augment_p,
        )
        return torch.from_numpy(x), torch.from_numpy(y)
