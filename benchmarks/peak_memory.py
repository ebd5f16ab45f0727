"""Benchmark: peak resident memory of every step on large images (what ``limits.DEFAULT_MAX_PIXELS`` rests on).

    python benchmarks/peak_memory.py [--sizes 2048 4096] [--model nuclei_small] [--keep DIR]

For each size N an N x N uint16 image is made by tiling a bundled nuclei image (BBBC039, 520 x 696),
so the network finds real nuclei (~N^2 / 3,000 of them). Each step runs as its own ``cpsnake`` command
in a fresh helper process that reports the command's peak resident memory (``ru_maxrss`` of its child:
interpreter, numpy, torch and the data). ``reconstruct-all`` is the worst case of reconstruction: every
pixel above the threshold (``--cellprob-threshold -1000``), so every pixel follows the flows.

Printed per step: peak MB at each size and the slope between the two largest sizes in bytes per pixel,
i.e. the memory that one more pixel costs. The largest slope times ``max_pixels`` plus the largest
intercept is the peak of a run at the limit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "data" / "images" / "bbbc039_O13_s3_uint16.tif"
HELPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, "
    "r.stderr.strip()[-300:].replace(chr(10), ' '))\n"
)


def peak_mb(cmd: list[str]) -> float:
    """Peak resident memory (MB) of ``cmd`` run in a fresh helper process; raises if the command fails."""
    out = subprocess.run([sys.executable, "-c", HELPER, *cmd], capture_output=True, text=True, check=True).stdout
    kb, rc, err = out.split(" ", 2)
    if int(rc) != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {rc}: {err}")
    return int(kb) / 1024


def make_image(n: int, path: Path) -> None:
    import tifffile

    tile = tifffile.imread(SOURCE)
    reps = (-(-n // tile.shape[0]), -(-n // tile.shape[1]))
    tifffile.imwrite(path, np.tile(tile, reps)[:n, :n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--model", default="nuclei_small")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="cpsnake-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    cp = [sys.executable, "-m", "cpsnake"]
    big = ["--max-pixels", str(max(args.sizes) ** 2 * 4)]
    table: dict[str, list[float]] = {}
    for n in args.sizes:
        d = work / str(n)
        d.mkdir(exist_ok=True)
        img = d / "img.tif"
        make_image(n, img)
        steps = {
            "normalize": [*cp, "normalize", str(img), str(d / "norm.tif"), *big],
            "infer": [
                *cp,
                "infer",
                str(d / "norm.tif"),
                str(d / "flows.tif"),
                "--model",
                args.model,
                "--device",
                "cpu",
                *big,
            ],
            "reconstruct": [*cp, "reconstruct", str(d / "flows.tif"), str(d / "masks.tif"), *big],
            "reconstruct-all": [
                *cp,
                "reconstruct",
                str(d / "flows.tif"),
                str(d / "all.tif"),
                "--cellprob-threshold",
                "-1000",
                *big,
            ],
            "rois": [*cp, "rois", str(d / "masks.tif"), str(d / "rois.zip"), *big],
            "measure": [*cp, "measure", str(d / "masks.tif"), str(img), str(d / "m.csv"), *big],
            "overlay": [*cp, "overlay", str(img), str(d / "masks.tif"), str(d / "o.png"), *big],
            "segment": [
                *cp,
                "segment",
                str(img),
                "--out",
                str(d / "seg"),
                "--model",
                args.model,
                "--device",
                "cpu",
                *big,
            ],
        }
        for name, cmd in steps.items():
            mb = peak_mb(cmd)
            table.setdefault(name, []).append(mb)
            print(f"{n:>6}  {name:<16} {mb:9.0f} MB", flush=True)
    print()
    head = "".join(f"{n:>10}" for n in args.sizes)
    print(f"{'step':<16}{head}   MB peak; slope B/px (last two sizes); intercept MB")
    a, b = args.sizes[-2:] if len(args.sizes) > 1 else (0, args.sizes[0])
    for name, mbs in table.items():
        slope = (mbs[-1] - mbs[-2]) * 2**20 / (b * b - a * a) if len(mbs) > 1 else float("nan")
        icpt = mbs[-1] - slope * b * b / 2**20
        print(f"{name:<16}" + "".join(f"{m:10.0f}" for m in mbs) + f"   {slope:7.1f}   {icpt:7.0f}")


if __name__ == "__main__":
    main()
