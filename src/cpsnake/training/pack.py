"""``python -m cpsnake.training.train pack SRC_SPLIT OUT_DIR [--max-mb 50]``: a split, packed for moving it to a GPU
machine.

Copies a split (images/, masks/, index.csv) into a compact folder for moving it to a GPU machine:
images and masks as lossless PNG (8- or 16-bit; masks uint16), same stems, and index.csv with the rows kept.
If the total would exceed ``--max-mb`` (default 50 MB), images are dropped until it fits, by one rule that
knows no data set by name: images of the same *kind* (same Y, X, channels and dtype: in practice fields of
one screen or instrument, which are near-duplicates of one another for training) form a group; the group
with the most bytes loses every other image (name order), and the groups are weighed again. A kind with a
single image is never dropped; if the pack still does not fit, it is an error naming the size. The dropped
names go to OUT_DIR/dropped.txt and the summary line names each kind that lost images.

The pairs are found and their masks read as for training (:mod:`cpsnake.training.data`). pandas and PIL are
imported where they are used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cpsnake.bounds import option
from cpsnake.errors import CpsnakeError, guard
from cpsnake.io.inputs import read_image
from cpsnake.io.outputs import all_or_nothing, atomic_output, make_folder
from cpsnake.io.tables import read_frame, to_csv
from cpsnake.training.data import list_pairs, read_mask

__all__ = ["drop_to_fit", "pack", "main"]


def _png_bytes(arr: np.ndarray) -> bytes:
    """Lossless PNG of (Y, X) uint8/uint16 or (Y, X, 3) uint8."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def drop_to_fit(size: dict[str, int], kind: dict[str, str], budget: float) -> list[str]:
    """Names to drop so that the remaining sizes sum to at most ``budget`` (see the module docstring).

    Parameters
    ----------
    size : name -> bytes; kind : name -> kind label (same Y, X, channels, dtype)

    Returns
    -------
    Dropped names in the order they were dropped: repeatedly, every other name (name order) of the kind
    holding the most bytes among kinds with at least two names, until the total fits or no kind can give.
    """
    left = dict(sorted(size.items()))
    total = sum(left.values())
    dropped: list[str] = []
    while total > budget:
        groups: dict[str, list[str]] = {}
        for n in left:
            groups.setdefault(kind[n], []).append(n)
        groups = {k: ns for k, ns in groups.items() if len(ns) > 1}
        if not groups:
            break
        heaviest = max(sorted(groups), key=lambda k: sum(left[n] for n in groups[k]))
        for n in groups[heaviest][1::2]:
            if total <= budget:
                break
            total -= left.pop(n)
            dropped.append(n)
    return dropped


def pack(src, out_dir, *, max_mb: float = 50.0, log=None) -> tuple[int, list[str]]:
    """Write ``src``'s image/mask pairs as lossless PNGs + index.csv under ``out_dir``.

    Returns
    -------
    (total bytes written, names dropped to fit ``max_mb``)
    """
    import pandas as pd

    log = sys.stdout if log is None else log
    src, out_dir = Path(src), Path(out_dir)
    pairs = list_pairs(src)
    blobs: dict[str, tuple[bytes, bytes]] = {}
    kinds: dict[str, str] = {}  # name -> "Y x X, C channel(s), dtype"
    for name, ipath, mpath in pairs:
        img, _ = read_image(ipath)
        if (
            img.ndim != 3
            or img.shape[0] not in (1, 3)
            or img.dtype not in (np.uint8, np.uint16)
            or (img.shape[0] == 3 and img.dtype != np.uint8)
        ):
            raise CpsnakeError(f"{ipath}: image {img.shape} {img.dtype}; pack expects grey uint8/uint16 or RGB uint8")
        lab = read_mask(mpath, img.shape[1:])
        if lab.max() > 65535:
            raise CpsnakeError(f"{mpath}: {lab.max()} labels, expected at most 65,535 for a uint16 PNG mask")
        pix = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        blobs[name] = (_png_bytes(np.ascontiguousarray(pix)), _png_bytes(lab.astype(np.uint16)))
        kinds[name] = f"{img.shape[1]}x{img.shape[2]} {img.shape[0]}ch {img.dtype}"
    budget = max_mb * 1e6
    size = {n: len(a) + len(b) for n, (a, b) in blobs.items()}
    dropped = drop_to_fit(size, kinds, budget)
    for n in dropped:
        del blobs[n]
    total = sum(size[n] for n in blobs)
    if total > budget:
        raise CpsnakeError(f"{src}: packed size {total / 1e6:.1f} MB, expected at most {max_mb} MB; raise --max-mb")
    if (src / "index.csv").exists():
        df = read_frame(pd.read_csv(src / "index.csv", dtype=str))
        df = df[[Path(f).stem in blobs for f in df["file"]]].copy()
        df["file"] = [Path(f).stem + ".png" for f in df["file"]]
    else:
        df = pd.DataFrame({"file": [f"{n}.png" for n in blobs]})
    for sub in ("images", "masks"):
        make_folder(out_dir / sub)
    with all_or_nothing():  # the pack's files, all or none
        for name, (ib, mb) in blobs.items():
            for sub, data in (("images", ib), ("masks", mb)):
                with atomic_output(out_dir / sub / f"{name}.png") as tmp:
                    tmp.write_bytes(data)
        with atomic_output(out_dir / "index.csv") as tmp:
            to_csv(df, tmp)
        with atomic_output(out_dir / "dropped.txt") as tmp:
            tmp.write_text("".join(f"{n}\n" for n in dropped))
    total += (out_dir / "index.csv").stat().st_size
    by_kind = {k: sum(kinds[n] == k for n in dropped) for k in dict.fromkeys(kinds[n] for n in dropped)}
    what = "; ".join(f"{c} of kind {k}" for k, c in by_kind.items()) or "none"
    print(
        f"pack: {len(blobs)} pairs, {total / 1e6:.1f} MB in {out_dir}; dropped {len(dropped)} image(s) to fit "
        f"{max_mb} MB ({what}; listed in {out_dir / 'dropped.txt'})",
        file=log,
    )
    return total, dropped


@guard("train pack")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cpsnake.training.train pack",
        description="lossless PNG copy of a split for moving it to a GPU machine, within a size budget (see --max-mb)",
    )
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument(
        "--max-mb",
        type=option("--max-mb"),
        default=50.0,
        help="size budget of the pack (default 50); over it, every other image of the heaviest kind "
        "(same size, channels, dtype) is dropped until it fits, listed in OUT/dropped.txt",
    )
    a = p.parse_args(argv)
    pack(a.src, a.out, max_mb=a.max_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
