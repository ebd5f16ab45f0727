"""Benchmark: block-wise segmentation of large mosaics; wall time and peak memory per image size.

    python benchmarks/bench_blocks.py [--sizes 4096 8192 16384 20000] [--block 2048] [--model nuclei_small]

For each size S a synthetic S x S uint16 mosaic is written as a tiled (512 px), zlib-compressed BigTIFF:
the demo's BBBC039 nuclei image (CC0, 520 x 696) mirrored at every repeat, so nuclei cross the seams and
the block borders everywhere. Each mosaic is written tile by tile (never whole in memory) and segmented in
a fresh subprocess by :func:`cpsnake.run.segment.segment_regions` with the bundled model on the CPU: one
streaming pass for the normalization values, then blocks of ``--block`` px (halo 96) read from the file,
the label image built in a Zarr array on disk. The child reports its wall time, its own peak resident
memory (``ru_maxrss``: interpreter, torch, the model, numpy and every buffer included) and the objects
found; the scratch space the blocks used on disk is printed too.

The target: peak RSS flat (at most 1.5x between 4096 and 20000 px) and under 6 GB at 20000 x 20000.
The files that `cpsnake segment` writes after the segmentation (label TIFF, ROIs, measurements, overlay)
are not part of this figure: `benchmarks/bench_block_outputs.py` measures them (written window by window).
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
from _stats import load

ROOT = Path(__file__).resolve().parents[1]
DEMO = sorted((ROOT / "resources/demo/images").glob("bbbc039_*.tif"))[0]

CHILD = r"""
import json, resource, sys, time
import zarr
from cpsnake.io import inputs
from cpsnake.models import registry, weights
from cpsnake.run.segment import segment_regions
src, model, block, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
net = registry.load_model(weights.resolve(model), device="cpu")
t0 = time.perf_counter()
with inputs.open_regions(src) as image:
    Y, X = image.shape[1:]
    store = zarr.create_array(f"{tmp}/labels.zarr", shape=(Y, X), chunks=(1024, 1024), dtype="int32", fill_value=0)
    labels, record, seconds = segment_regions(net, image, block=block, labels=store)
dt = time.perf_counter() - t0
print(json.dumps({"time_s": dt, "seconds": seconds, "objects": record["blocks"]["objects"],
                  "blocks": record["blocks"]["blocks"], "cut": record["blocks"]["cut"],
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Mirrored repeat of 0..n-1 (period 2n): 0, 1, ..., n-1, n-1, ..., 0, 0, 1, ..."""
    r = index % (2 * n)
    return np.where(r < n, r, 2 * n - 1 - r)


def write_mosaic(path: Path, size: int, tile: int = 512) -> None:
    """An S x S uint16 mosaic of the demo image (see the module doc), written tile by tile."""
    import tifffile

    from cpsnake.io.inputs import read_image

    src = read_image(DEMO)[0][0].astype(np.uint16)
    h, w = src.shape

    def tiles():
        for y0 in range(0, size, tile):
            rows = mirror(np.arange(y0, y0 + tile), h)
            for x0 in range(0, size, tile):
                yield src[np.ix_(rows, mirror(np.arange(x0, x0 + tile), w))]

    tifffile.imwrite(
        path, tiles(), shape=(size, size), dtype=np.uint16, tile=(tile, tile), compression="zlib", bigtiff=True
    )


def disk_use(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 20000])
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--model", default="nuclei_small")
    args = p.parse_args()
    print(f"bench_blocks: bundled model {args.model}, CPU, blocks of {args.block} px, halo 96; {load()}", flush=True)
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-blocks-") as tmp:
            src = Path(tmp) / f"mosaic_{size}.tif"
            write_mosaic(src, size)
            env = dict(os.environ, TMPDIR=tmp)  # the blocks' scratch goes to the same folder
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(src), args.model, str(args.block), tmp],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode:
                sys.exit(f"size {size}: child failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(size=size, file_gb=src.stat().st_size / 1e9, labels_gb=disk_use(f"{tmp}/labels.zarr") / 1e9)
            rows.append(r)
            print(
                f"{size:>6} x {size:<6} {r['blocks']:>4} blocks {r['objects']:>9,} objects  "
                f"wall {r['time_s']:8.1f} s ({size * size / r['time_s'] / 1e6:.2f} Mpx/s)  "
                f"peak RSS {r['peak_rss_gb']:.2f} GB  (file {r['file_gb']:.2f} GB, labels on disk "
                f"{r['labels_gb']:.2f} GB; {load()})",
                flush=True,
            )
    if len(rows) > 1:
        lo, hi = min(rows, key=lambda r: r["size"]), max(rows, key=lambda r: r["size"])
        ratio = hi["peak_rss_gb"] / lo["peak_rss_gb"]
        print(
            f"peak RSS {hi['size']} px / {lo['size']} px: {ratio:.2f}x (target <= 1.5x); "
            f"at {hi['size']} px {hi['peak_rss_gb']:.2f} GB (target < 6 GB)"
        )


if __name__ == "__main__":
    main()
