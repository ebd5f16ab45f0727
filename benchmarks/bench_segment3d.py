"""Benchmark: a whole stack through `cpsnake segment --do-3d` (network on three views, 3-D reconstruction, outputs).

    python benchmarks/bench_segment3d.py [--shape 100 1024 1024] [--model nuclei_small]

A synthetic uint16 stack is made from ``bench_reconstruct3d.synthetic_stack`` (touching roundish 3-D objects,
radius 9-13 voxels): each object a random brightness of 600-1,400 on a background of 100, blurred (Gaussian,
sigma 1.5) with Poisson-like noise, saved as an ImageJ ZYX hyperstack. It is segmented end to end by
``cpsnake segment STACK --out OUT --do-3d --max-pixels VOXELS`` (the stack's voxel count: 100 x 1024 x 1024
is above the default limit of 100,000,000) with the bundled model on the CPU in a fresh process, which
reports its wall time and its own peak resident memory (``ru_maxrss``: interpreter, torch, the model, the
stack, its 3-D flows, the reconstruction and the outputs). Printed with the objects found and their AP at
IoU 0.5 against the synthetic truth (a model trained on 2-D nuclei, so a sanity figure, not a score).
The target: a 100 x 1024 x 1024 stack segments with peak RSS under 8 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _stats import load
from bench_reconstruct3d import ap_at, synthetic_stack

CHILD = r"""
import json, resource, sys, time
from cpsnake.cli import main
t0 = time.perf_counter()
rc = main(["segment", sys.argv[1], "--out", sys.argv[2], "--do-3d", "--model", sys.argv[3],
          "--max-pixels", sys.argv[4]])
print(json.dumps({"rc": rc, "time_s": time.perf_counter() - t0,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def synthetic_image(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(Z, Y, X) uint16: objects of random brightness on a dim background, blurred, with noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    level = np.concatenate([[100.0], rng.uniform(600, 1400, int(labels.max()))]).astype(np.float32)
    img = ndi.gaussian_filter(level[labels], 1.5)
    img += rng.normal(0, 1, img.shape).astype(np.float32) * np.sqrt(img)
    return np.clip(img, 0, 65535).astype(np.uint16)


def main() -> int:
    import tifffile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[100, 1024, 1024], metavar=("Z", "Y", "X"))
    ap.add_argument("--model", default="nuclei_small")
    args = ap.parse_args()
    print(f"bench_segment3d: {tuple(args.shape)}, bundled model {args.model}, CPU; {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-seg3d-") as tmp:
        t0 = time.perf_counter()
        truth = synthetic_stack(tuple(args.shape))
        src = Path(tmp) / "stack.tif"
        tifffile.imwrite(src, synthetic_image(truth), imagej=True, metadata={"axes": "ZYX", "spacing": 1.0})
        np.save(Path(tmp) / "truth.npy", truth)
        n_true = int(truth.max())
        del truth
        print(f"stack made in {time.perf_counter() - t0:.0f} s: {n_true} objects", flush=True)
        voxels = int(np.prod(args.shape))  # above the default --max-pixels at 100 x 1024 x 1024: raised to fit
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(Path(tmp) / "out"), args.model, str(voxels)],
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {"rc": out.returncode}
        if out.returncode or r["rc"]:
            sys.exit(f"segment failed:\n{out.stderr[-3000:]}")
        got = tifffile.imread(Path(tmp) / "out" / "masks" / "stack.tif")
        from cpsnake.engine.dynamics import renumber

        score, tp, fp, fn = ap_at(np.load(Path(tmp) / "truth.npy"), renumber(got.astype(np.int32)), iou=0.5)
        print(
            f"segment --do-3d: exit {r['rc']}, wall {r['time_s']:.0f} s, peak RSS {r['peak_rss_gb']:.2f} GB "
            f"(target < 8 GB); {int(got.max())} objects found of {n_true}, AP@0.5 {score:.3f} "
            f"(TP {tp}, FP {fp}, FN {fn}); {load()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
