"""Benchmark: the Snakemake workflow against `cpsnake segment` (one process) on the same N small images.

    python benchmarks/bench_workflow.py [--n 100] [--data ../shared/data/nuclei] [--cores 2] [--batch-images 64]

Takes the first N images (sorted names) of DATA/val/images then DATA/train/images whose sides are all
at most 700 px, copies them into a temporary folder, and runs, one after the other with the bundled model:

1. ``cpsnake segment IMAGES... --out DIR`` (one process, one model load);
2. the workflow, ``snakemake --cores C --workflow-profile workflow/profiles/local --config images=...
   results=...`` (one job per batch of images and step).

Prints for each: wall seconds, jobs (Snakemake's own count of the jobs it ran, target rule excluded),
seconds per image, and the ratio workflow / segment; then whether the masks of the two runs are identical.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stats import load

ROOT = Path(__file__).resolve().parents[1]


def pick(data: Path, n: int, max_side: int = 700) -> list[Path]:
    import tifffile

    out = []
    for split in ("val", "train"):
        for p in sorted((data / split / "images").iterdir()):
            with tifffile.TiffFile(p) as tif:
                shape = tif.series[0].shape
            if max(shape[:2]) <= max_side:
                out.append(p)
            if len(out) == n:
                return out
    raise SystemExit(f"only {len(out)} images of at most {max_side} px in {data}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nuclei")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch-images", type=int, default=64)
    args = ap.parse_args(argv)
    print(f"{load()}; {args.n} images, {args.cores} cores, batches of at most {args.batch_images} images")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        for p in pick(args.data, args.n):
            shutil.copy(p, tmp / "images" / p.name)
        images = sorted((tmp / "images").iterdir())

        t0 = time.perf_counter()
        seg = subprocess.run(
            [sys.executable, "-m", "cpsnake", "segment", *map(str, images), "--out", str(tmp / "seg")],
            capture_output=True,
            text=True,
        )
        t_seg = time.perf_counter() - t0
        if seg.returncode != 0:
            raise SystemExit(seg.stderr[-3000:])

        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            str(args.cores),
            "--workflow-profile",
            "workflow/profiles/local",
            "--directory",
            str(ROOT),
            "--config",
            f"images={tmp / 'images'}",
            f"results={tmp / 'wf'}",
            f"batch={{images: {args.batch_images}}}",
        ]
        t0 = time.perf_counter()
        wf = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        t_wf = time.perf_counter() - t0
        if wf.returncode != 0:
            raise SystemExit(wf.stderr[-3000:])
        jobs = [
            r
            for r in re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", wf.stdout + wf.stderr, flags=re.M)
            if r != "all"
        ]
        n = len(images)
        print(f"cpsnake segment : {t_seg:7.1f} s, 1 process, {t_seg / n:.2f} s per image")
        print(f"workflow        : {t_wf:7.1f} s, {len(jobs)} jobs, {t_wf / n:.2f} s per image")
        print(f"ratio workflow / segment: {t_wf / t_seg:.2f}x")
        same = all(
            (tmp / "seg" / "masks" / f"{p.stem}.tif").read_bytes()
            == (tmp / "wf" / "masks" / f"{p.stem}.tif").read_bytes()
            for p in images
        )
        print(f"masks identical in both runs: {same}; end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
