"""Benchmark: stitching per-plane labels into 3-D objects, cpsnake.stacks.stitch vs cellpose 4.2.1.1's stitch3D.

    python benchmarks/bench_stitch.py [--shape 32 512 512] [--spacing 16] [--thresholds 0.25 0.9] [--repeat 3]

The stack: Voronoi cells around jittered grid seeds (every ``--spacing`` px: ~1,000 cells per 512^2 plane),
clipped at a radius of 0.4-0.6 x spacing; the seeds drift by a random walk (sd 1 px per plane) and 2 %
of them are replaced by new ones in each plane, so most cells continue, some end and some start. Each
plane is numbered 1..N in a random order (as a 2-D segmentation would number it independently).

Both sides run in this process, alternating which goes first, ``--repeat`` times per threshold (cellpose
on a fresh copy each time, made outside the timing: it overwrites its input). Printed: time (median and
range), the speed ratio, peak memory of numpy allocations (tracemalloc, one extra run each: cellpose's
dense IoU tables are numpy arrays, so they are counted) and whether the labels are identical. Cellpose's
progress bar is turned off (``cellpose.utils.trange`` replaced by ``range``).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np
from _stats import load, ratio, spread
from scipy import ndimage as ndi


def drifting_cells(shape: tuple[int, int, int], *, spacing: int = 16, seed: int = 0) -> np.ndarray:
    """(Z, Y, X) int32 stack of Voronoi cells whose seeds drift from plane to plane (see the module docstring)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    gy, gx = np.meshgrid(np.arange(spacing / 2, ny, spacing), np.arange(spacing / 2, nx, spacing), indexing="ij")
    pts = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(-spacing / 4, spacing / 4, (gy.size, 2))
    radius = rng.uniform(0.4 * spacing, 0.6 * spacing, len(pts))
    planes = np.empty(shape, np.int32)
    for z in range(nz):
        if z:
            pts += rng.normal(0, 1.0, pts.shape)
            fresh = rng.random(len(pts)) < 0.02
            pts[fresh] = rng.uniform(0, [ny, nx], (int(fresh.sum()), 2))
            radius[fresh] = rng.uniform(0.4 * spacing, 0.6 * spacing, int(fresh.sum()))
        yx = np.clip(np.round(pts).astype(int), 0, [ny - 1, nx - 1])
        free = np.ones((ny, nx), bool)
        free[yx[:, 0], yx[:, 1]] = False
        dist, (iy, ix) = ndi.distance_transform_edt(free, return_indices=True)
        seeds = np.zeros((ny, nx), np.int32)
        seeds[yx[:, 0], yx[:, 1]] = np.arange(1, len(yx) + 1)
        lab = seeds[iy, ix]
        lab[dist > np.r_[0, radius][lab]] = 0
        order = np.zeros(len(yx) + 1, np.int32)
        order[1:] = rng.permutation(len(yx)) + 1
        planes[z] = order[lab]
    return planes


def main() -> None:
    import cellpose.utils
    from cellpose.utils import stitch3D

    cellpose.utils.trange = range  # no progress bar on stderr (it would interleave with the table)

    from cpsnake.stacks.stitch import stitch_planes

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 512, 512])
    ap.add_argument("--spacing", type=int, default=16)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.25, 0.9])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    masks = drifting_cells(tuple(args.shape), spacing=args.spacing)
    per_plane = np.mean([len(np.unique(p)) - 1 for p in masks])
    print(f"{load()}; stack {masks.shape} int32, {per_plane:.0f} objects per plane")
    print(
        f"{'threshold':>9s} {'ours s':>24s} {'cellpose s':>24s} {'speed cellpose/ours':>26s} "
        f"{'ours MB':>8s} {'cp MB':>8s} {'3-D objects':>11s} {'identical':>9s}"
    )
    warnings.filterwarnings("ignore")  # cellpose divides 0 by 0 for absent ids
    np.seterr(divide="ignore", invalid="ignore")
    for threshold in args.thresholds:
        ours_fn = lambda: stitch_planes(masks, threshold)  # noqa: E731
        ref_fn = lambda copy: stitch3D(copy, stitch_threshold=threshold)  # noqa: E731
        t_ours, t_ref = [], []
        for r in range(args.repeat):
            for side in (0, 1) if r % 2 == 0 else (1, 0):
                if side == 0:
                    t = time.perf_counter()
                    ours = ours_fn()
                    t_ours.append(time.perf_counter() - t)
                else:
                    copy = masks.copy()
                    t = time.perf_counter()
                    theirs = ref_fn(copy)
                    t_ref.append(time.perf_counter() - t)
        peaks = []
        for fn in (ours_fn, lambda: ref_fn(masks.copy())):
            tracemalloc.start()
            fn()
            peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
            tracemalloc.stop()
        same = np.array_equal(ours, theirs)
        print(
            f"{threshold:9.2f} {spread(t_ours, digits=3):>24s} {spread(t_ref, digits=3):>24s} "
            f"{ratio(t_ref, t_ours):>26s} {peaks[0]:8.1f} {peaks[1]:8.1f} {len(np.unique(ours)) - 1:11d} "
            f"{str(same):>9s}"
        )
    print(
        "cellpose's memory includes the copy of the stack it is given (it overwrites its input); "
        "ours includes its output"
    )
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
