"""Benchmark: how long the bundled model takes per image on this machine (the figures of the model card).

    python benchmarks/bench_segment.py [--repeat 3] [--folder ../shared/data/nuclei/val/images]

1. A 1024x1024 fluorescence image (the demo's BBBC039 field, mirrored to 1024x1024) through
   ``cpsnake.run.segment.segment_image`` with the bundled ``nuclei_small``, ``--repeat`` times after a
   warm-up: seconds of normalize, infer and reconstruct (median and range).
2. The same image through the whole command ``cpsnake segment IMAGE --out TMP`` in a fresh process,
   ``--repeat`` times: wall seconds including Python, torch and model start-up and every output file.
3. With ``--folder``: every image of the folder in one ``cpsnake segment`` process (one model load):
   total wall seconds and seconds per image.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _stats import load, spread

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo" / "images" / "bbbc039_IXMtest_A24_s9_w152CD6793-DA45-4975-869A-CBD49D645E37.tif"


def image_1024() -> np.ndarray:
    """(1, 1024, 1024) uint16: the demo field, mirrored at its edges to 1024 x 1024."""
    from cpsnake.io.inputs import read_image

    img, _ = read_image(DEMO)
    tiled = np.concatenate([img, img[:, ::-1]], axis=1)
    tiled = np.concatenate([tiled, tiled[:, :, ::-1]], axis=2)
    assert tiled.shape[1] >= 1024 and tiled.shape[2] >= 1024, tiled.shape
    return np.ascontiguousarray(tiled[:, :1024, :1024])


def command(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cpsnake", "segment", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import torch

    from cpsnake.io.tiff import write_tiff
    from cpsnake.models import weights
    from cpsnake.models.registry import load_model
    from cpsnake.run.segment import segment_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=None, help="also time one segment run over this folder")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {load()}")
    img = image_1024()
    net = load_model(weights.resolve("nuclei_small"))
    segment_image(net, img[:, :256, :256])  # warm-up
    steps: dict[str, list[float]] = {}
    cells = 0
    for _ in range(args.repeat):
        labels, _, _, seconds = segment_image(net, img)
        cells = int(labels.max())
        for k, v in seconds.items():
            steps.setdefault(k, []).append(v)
    print(f"segment_image 1024x1024 ({cells} cells): " + ", ".join(f"{k} {spread(v)}" for k, v in steps.items()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img1024.tif"
        write_tiff(path, img, axes="CYX")
        walls = [command([str(path), "--out", str(Path(tmp) / f"out{i}")]) for i in range(args.repeat)]
        print(f"cpsnake segment 1024x1024, whole command in a fresh process: {spread(walls)}")
        if args.folder:
            images = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg"))
            wall = command([*map(str, images), "--out", str(Path(tmp) / "folder")])
            print(
                f"cpsnake segment on {len(images)} images of {args.folder} in one process: {wall:.1f} s, "
                f"{wall / len(images):.2f} s per image"
            )
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
