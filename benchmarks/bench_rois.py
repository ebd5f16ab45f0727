"""Benchmark: label image -> ImageJ RoiSet.zip, cpsnake vs cellpose's ``io.save_rois`` (the reference).

A 4096 x 4096 label image with ~20,000 touching, irregular cells (jittered-grid Voronoi cells,
shrunk by one pixel where they touch, some with holes) is exported by both, ``--repeat`` times each
(alternating which goes first) after a warm-up on a small image. Prints both times (median and range)
and the ratio, plus how many ROIs each wrote (pixel-edge outlines vs cellpose's centre-line outlines).

    python benchmarks/bench_rois.py [--size 4096] [--cells 20000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from _stats import load, ratio, spread, timed


def make_labels(size: int, cells: int, seed: int = 0) -> np.ndarray:
    """(size, size) int32 labels: Voronoi cells of a jittered grid of about ``cells`` seeds."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    n = int(round(np.sqrt(cells)))
    step = size / n
    gy, gx = np.meshgrid((np.arange(n) + 0.5) * step, (np.arange(n) + 0.5) * step, indexing="ij")
    cy = np.clip(gy + rng.uniform(-0.3, 0.3, gy.shape) * step, 0, size - 1).astype(int).ravel()
    cx = np.clip(gx + rng.uniform(-0.3, 0.3, gx.shape) * step, 0, size - 1).astype(int).ravel()
    seeds = np.zeros((size, size), np.int32)
    seeds[cy, cx] = np.arange(1, cy.size + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[iy, ix]
    edge = ndimage.grey_dilation(lab, size=3) != ndimage.grey_erosion(lab, size=3)
    lab[edge & (rng.random(lab.shape) < 0.7)] = 0  # mostly separated, some still touching
    lab[(rng.random(lab.shape) < 0.002)] = 0  # pin-holes
    return lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--cells", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per side (alternating)")
    args = ap.parse_args()
    from cellpose import io as cpio

    from cpsnake.export.rois import labels_to_rois, write_rois

    print(load())
    lab = make_labels(args.size, args.cells)
    n = len(np.unique(lab)) - 1
    small = make_labels(256, 60, seed=1)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        write_rois(d / "w.zip", labels_to_rois(small))  # warm-up (imports, caches)
        cpio.save_rois(small, str(d / "w"))
        sides = {
            "ours": lambda: write_rois(d / "ours.zip", labels_to_rois(lab)),
            "cellpose": lambda: cpio.save_rois(lab, str(d / "ref")),
        }
        times = {k: [] for k in sides}
        for r in range(args.repeat):
            for k in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                times[k].append(timed(sides[k])[0])
        n_ours = len(zipfile.ZipFile(d / "ours.zip").namelist())
        n_ref = len(zipfile.ZipFile(d / "ref_rois.zip").namelist())
    print(f"labels: {args.size}x{args.size}, {n} cells")
    print(f"cpsnake rois      : {spread(times['ours'])}  ({n_ours} ROIs, pixel-edge outlines, holes and pieces kept)")
    print(f"cellpose save_rois: {spread(times['cellpose'])}  ({n_ref} ROIs, centre-line outlines)")
    print(f"ratio cellpose / cpsnake: {ratio(times['cellpose'], times['ours'])}; end: {load()}")


if __name__ == "__main__":
    main()
