"""Benchmark: mask reconstruction from flows, cpsnake vs cellpose 4.2.1.1 (CPU), same flows, one run.

    python benchmarks/bench_reconstruct.py [--sizes 2048 4096] [--repeat 3] [--no-reference] [--seed 0]

For each size a synthetic label image of touching / near-touching roundish cells is made (jittered
grid seeds every 29 px, Voronoi cells clipped at a radius of 10-15 px: ~5,000 cells at 2048^2,
~20,000 at 4096^2); flows = masks_to_flows * 5 (the network's scale) + Gaussian noise (sd 1.0),
cellprob logits +3 inside / -3 outside + noise (sd 1.5). Ours (``cpsnake.engine.reconstruct.compute_masks``)
and theirs (``cellpose.dynamics.resize_and_compute_masks``, default settings, CPU) each run in a fresh
subprocess; the child reports its wall time and its own peak resident memory (``ru_maxrss``, which
includes the interpreter, numpy and torch). Each side runs ``--repeat`` times per size, alternating which
goes first. Printed: time and peak memory (median and range), ratios, and agreement (AP at IoU 0.9
between ours and theirs, identical pixels, mask counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _stats import load, ratio, spread
from scipy import ndimage as ndi

CHILD = r"""
import json, resource, sys, time
import numpy as np
which, src, dst = sys.argv[1:4]
flows = np.load(src)
if which == "ours":
    from cpsnake.engine.reconstruct import compute_masks
    t0 = time.perf_counter()
    masks = compute_masks(flows)
else:
    import warnings; warnings.filterwarnings("ignore")
    from cellpose import dynamics
    t0 = time.perf_counter()
    masks = dynamics.resize_and_compute_masks(flows[:2], flows[2])
dt = time.perf_counter() - t0
np.save(dst, masks.astype(np.int32))
print(json.dumps({"time_s": dt, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def synthetic_labels(shape: tuple[int, int], *, spacing: int = 29, seed: int = 0) -> np.ndarray:
    """Touching roundish cells: jittered grid seeds, Voronoi regions clipped at radius 10-15 px. (Y, X) int32."""
    rng = np.random.default_rng(seed)
    Ly, Lx = shape
    gy, gx = np.meshgrid(np.arange(spacing / 2, Ly, spacing), np.arange(spacing / 2, Lx, spacing), indexing="ij")
    pts = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(-spacing / 4, spacing / 4, (gy.size, 2))
    pts = np.clip(np.round(pts).astype(int), 0, [Ly - 1, Lx - 1])
    free = np.ones(shape, bool)
    free[pts[:, 0], pts[:, 1]] = False
    dist, (iy, ix) = ndi.distance_transform_edt(free, return_indices=True)
    seed_label = np.zeros(shape, np.int32)
    seed_label[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1)
    labels = seed_label[iy, ix]
    del iy, ix
    radius = rng.uniform(10, 15, len(pts) + 1)
    labels[dist > radius[labels]] = 0
    return labels


def synthetic_flows(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Network-like flows (3, Y, X) float32 from labels: unit flows * 5 + noise, cellprob +-3 + noise."""
    from cpsnake.engine.heat import masks_to_flows

    rng = np.random.default_rng(seed + 1)
    flows = np.empty((3, *labels.shape), np.float32)
    flows[:2] = masks_to_flows(labels)
    flows[:2] *= 5
    flows[:2] += rng.normal(0, 1.0, (2, *labels.shape)).astype(np.float32)
    flows[2] = np.where(labels > 0, 3.0, -3.0) + rng.normal(0, 1.5, labels.shape)
    return flows


def ap_at(a: np.ndarray, b: np.ndarray, iou: float = 0.9) -> tuple[float, int, int, int]:
    """AP = TP / (TP + FP + FN) at an IoU threshold >= 0.5 (matches are then unique). Returns (AP, TP, FP, FN)."""
    na, nb = int(a.max()), int(b.max())
    if na == 0 and nb == 0:
        return 1.0, 0, 0, 0
    both = (a > 0) | (b > 0)
    pair = a[both].astype(np.int64) * (nb + 1) + b[both]
    inter = np.bincount(pair, minlength=(na + 1) * (nb + 1)).reshape(na + 1, nb + 1)
    sa, sb = np.bincount(a.ravel(), minlength=na + 1), np.bincount(b.ravel(), minlength=nb + 1)
    ia, ib = np.nonzero(inter[1:, 1:])
    ia, ib = ia + 1, ib + 1
    i = inter[ia, ib]
    tp = int((i / (sa[ia] + sb[ib] - i) >= iou).sum())
    return tp / (na + nb - tp), tp, nb - tp, na - tp


def run_child(which: str, src: Path, dst: Path) -> dict:
    env = dict(os.environ)
    res = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(src), str(dst)], capture_output=True, text=True, env=env
    )
    if res.returncode != 0:
        raise SystemExit(f"{which} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--no-reference", action="store_true", help="time ours only (no cellpose run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per side and size (alternating)")
    args = ap.parse_args()
    print(f"torch threads default; {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            labels = synthetic_labels((size, size), seed=args.seed)
            flows = synthetic_flows(labels, seed=args.seed)
            src = Path(tmp) / f"flows{size}.npy"
            np.save(src, flows)
            ncells = int(labels.max())
            del flows
            sides = ["ours"] if args.no_reference else ["ours", "cellpose"]
            runs = {k: [] for k in sides}
            for r in range(args.repeat):
                for k in sides if r % 2 == 0 else sides[::-1]:
                    runs[k].append(run_child(k, src, Path(tmp) / f"{k}.npy"))
            t = {k: [x["time_s"] for x in v] for k, v in runs.items()}
            m = {k: [x["peak_rss_gb"] for x in v] for k, v in runs.items()}
            m_ours = np.load(Path(tmp) / "ours.npy")
            print(f"\n{size}x{size}, {ncells} cells (ground truth); {load()}")
            print(
                f"  ours     : {spread(t['ours'], digits=1)}  peak {spread(m['ours'], 'GB')}  "
                f"{int(m_ours.max())} masks  AP@0.9 vs truth {ap_at(m_ours, labels)[0]:.3f}"
            )
            if args.no_reference:
                continue
            m_theirs = np.load(Path(tmp) / "cellpose.npy")
            apv, tp, fp, fn = ap_at(m_ours, m_theirs)
            print(
                f"  cellpose : {spread(t['cellpose'], digits=1)}  peak {spread(m['cellpose'], 'GB')}  "
                f"{int(m_theirs.max())} masks  AP@0.9 vs truth {ap_at(m_theirs, labels)[0]:.3f}"
            )
            print(
                f"  speed-up cellpose/ours {ratio(t['cellpose'], t['ours'])}, memory ours/cellpose "
                f"{ratio(m['ours'], m['cellpose'])}"
            )
            print(
                f"  agreement: AP@0.9 ours vs cellpose {apv:.4f} (TP {tp}, FP {fp}, FN {fn}); "
                f"identical label images: {bool(np.array_equal(m_ours, m_theirs))}, "
                f"differing pixels {int((m_ours != m_theirs).sum())}"
            )
            sys.stdout.flush()
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
