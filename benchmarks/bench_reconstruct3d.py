"""Benchmark: 3-D mask reconstruction from flows, cpsnake vs cellpose 4.2.1.1 (CPU, do_3D), same flows.

    python benchmarks/bench_reconstruct3d.py [--shape 64 512 512] [--repeat 1] [--no-reference] [--seed 0]

A synthetic label stack of touching / near-touching roundish objects is made (jittered grid seeds every
21 x 28 x 28 voxels, 3-D Voronoi cells clipped at a radius of 9-13 voxels: ~1,000 objects at
64 x 512 x 512); flows = 3-D heat flows (``cpsnake.engine.heat3d.masks_to_flows_3d``, equal to cellpose's
``masks_to_flows_gpu_3d`` after float32 rounding) * 5 + Gaussian noise (sd 1.0), cellprob logits +3
inside / -3 outside + noise (sd 1.5). Ours (``cpsnake.engine.reconstruct3d.compute_masks_3d``) and theirs
(``cellpose.dynamics.resize_and_compute_masks(dP, cellprob, do_3D=True)``, default settings, CPU) each
run in a fresh subprocess; the child reports its wall time and its own peak resident memory
(``ru_maxrss``, which includes the interpreter, numpy, torch and the flows it loaded). Each side runs
``--repeat`` times, alternating which goes first. Printed: time and peak memory (median and range),
ratios, and agreement (AP at IoU 0.9 between ours and theirs, identical voxels, mask counts).
The issue's target: ours >= 3x faster, peak memory at most half of cellpose's.
"""

from __future__ import annotations

import argparse
import json
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
    from cpsnake.engine.reconstruct3d import compute_masks_3d
    t0 = time.perf_counter()
    masks = compute_masks_3d(flows)
else:
    import warnings; warnings.filterwarnings("ignore")
    from cellpose import dynamics
    t0 = time.perf_counter()
    masks = dynamics.resize_and_compute_masks(flows[:3], flows[3], do_3D=True)
dt = time.perf_counter() - t0
np.save(dst, masks.astype(np.int32))
print(json.dumps({"time_s": dt, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def synthetic_stack(shape: tuple[int, int, int], *, spacing=(21, 28, 28), seed: int = 0) -> np.ndarray:
    """Touching roundish 3-D objects: jittered grid seeds, Voronoi cells clipped at radius 9-13. (Z, Y, X) int32."""
    rng = np.random.default_rng(seed)
    axes = [np.arange(s / 2, L, s) for s, L in zip(spacing, shape)]
    grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], 1)
    pts = grid + rng.uniform(-1, 1, grid.shape) * np.array(spacing) / 4
    pts = np.clip(np.round(pts).astype(int), 0, np.array(shape) - 1)
    free = np.ones(shape, bool)
    free[tuple(pts.T)] = False
    dist, ind = ndi.distance_transform_edt(free, return_indices=True)
    seed_label = np.zeros(shape, np.int32)
    seed_label[tuple(pts.T)] = np.arange(1, len(pts) + 1)
    labels = seed_label[tuple(ind)]
    del ind, free
    radius = rng.uniform(9, 13, len(pts) + 1)
    labels[dist > radius[labels]] = 0
    return labels


def synthetic_flows(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Network-like flows (4, Z, Y, X) float32 from labels: unit flows * 5 + noise, cellprob +-3 + noise."""
    from cpsnake.engine.heat3d import masks_to_flows_3d

    rng = np.random.default_rng(seed + 1)
    flows = np.empty((4, *labels.shape), np.float32)
    flows[:3] = masks_to_flows_3d(labels)
    flows[:3] *= 5
    for c in range(3):
        flows[c] += rng.normal(0, 1.0, labels.shape).astype(np.float32)
    flows[3] = np.where(labels > 0, 3.0, -3.0) + rng.normal(0, 1.5, labels.shape)
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
    res = subprocess.run([sys.executable, "-c", CHILD, which, str(src), str(dst)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{which} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--no-reference", action="store_true", help="time ours only (no cellpose run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side (alternating)")
    args = ap.parse_args()
    shape = tuple(args.shape)
    print(f"torch threads default; {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        labels = synthetic_stack(shape, seed=args.seed)
        flows = synthetic_flows(labels, seed=args.seed)
        src = Path(tmp) / "flows.npy"
        np.save(src, flows)
        nobj = int(len(np.unique(labels)) - 1)
        print(f"{'x'.join(map(str, shape))}: {nobj} objects, flows made; {load()}", flush=True)
        del flows
        sides = ["ours"] if args.no_reference else ["ours", "cellpose"]
        runs = {k: [] for k in sides}
        for r in range(args.repeat):
            for k in sides if r % 2 == 0 else sides[::-1]:
                runs[k].append(run_child(k, src, Path(tmp) / f"{k}.npy"))
                print(
                    f"  run {r + 1} {k}: {runs[k][-1]['time_s']:.1f} s, peak {runs[k][-1]['peak_rss_gb']:.2f} GB",
                    flush=True,
                )
        t = {k: [x["time_s"] for x in v] for k, v in runs.items()}
        m = {k: [x["peak_rss_gb"] for x in v] for k, v in runs.items()}
        m_ours = np.load(Path(tmp) / "ours.npy")
        print(
            f"\n{'x'.join(map(str, shape))}, {nobj} objects (ground truth), "
            f"{(labels > 0).mean():.0%} of voxels in objects; {load()}"
        )
        print(
            f"  ours     : {spread(t['ours'], digits=1)}  peak {spread(m['ours'], 'GB')}  "
            f"{int(m_ours.max())} masks  AP@0.9 vs truth {ap_at(m_ours, labels)[0]:.3f}"
        )
        if not args.no_reference:
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
                f"identical label stacks: {bool(np.array_equal(m_ours, m_theirs))}, "
                f"differing voxels {int((m_ours != m_theirs).sum())}"
            )
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
