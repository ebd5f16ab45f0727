"""Benchmark: label image -> ImageJ RoiSet.zip, cpsnake vs cellpose's ``io.save_rois`` (the reference).

A 4096 x 4096 label image with ~20,000 touching, irregular cells (jittered-grid Voronoi cells,
shrunk by one pixel where they touch, some with holes) is exported by both; each is timed once after
a warm-up on a small image. Prints both times and the ratio, plus how many labels each wrote and
whether ImageJ's areas would be right (pixel-edge outlines vs cellpose's centre-line outlines).

    python benchmarks/bench_rois.py [--size 4096] [--cells 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


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
    args = ap.parse_args()
    from cellpose import io as cpio

    from cpsnake.rois import labels_to_rois, write_rois

    lab = make_labels(args.size, args.cells)
    n = len(np.unique(lab)) - 1
    small = make_labels(256, 60, seed=1)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        write_rois(d / "w.zip", labels_to_rois(small))  # warm-up (imports, caches)
        cpio.save_rois(small, str(d / "w"))
        t0 = time.perf_counter()
        write_rois(d / "ours.zip", labels_to_rois(lab))
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        cpio.save_rois(lab, str(d / "ref"))
        t_ref = time.perf_counter() - t0
        n_ours = len(zipfile.ZipFile(d / "ours.zip").namelist())
        n_ref = len(zipfile.ZipFile(d / "ref_rois.zip").namelist())
    print(f"labels: {args.size}x{args.size}, {n} cells")
    print(f"cpsnake rois      : {t_ours:8.2f} s  ({n_ours} ROIs, pixel-edge outlines, holes and pieces kept)")
    print(f"cellpose save_rois: {t_ref:8.2f} s  ({n_ref} ROIs, centre-line outlines)")
    print(f"ratio cellpose / cpsnake: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
