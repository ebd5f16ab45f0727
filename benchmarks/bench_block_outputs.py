"""Benchmark: the files of a block-wise segmentation written window by window (`cpsnake.export.blockout`) against
the whole-image path; wall time and peak memory per image size, and whether the files are equal.

    python benchmarks/bench_block_outputs.py [--sizes 4096 8192 20000] [--whole-up-to 8192] [--spacing 32]

For each size S: the image is bench_blocks' S x S uint16 mosaic of the demo's nuclei (a tiled zlib
BigTIFF), the labels a Zarr array on disk of nucleus-sized ellipses (radii 6-10 px, one every
``--spacing`` px, ids in raster order of their first pixel, as a block-wise segmentation numbers them),
both written chunk by chunk, never whole. Each side runs in a fresh subprocess: ``blockout.write_outputs``
(label TIFF, ROI zip, measurement table, overlay: what `cpsnake segment` writes after a block-wise
segmentation) reading both by region, and, up to ``--whole-up-to`` px, the whole-image path
(``segment._image_outputs`` on the image and labels read whole, as before `cpsnake.export.blockout`). Printed:
wall time, the child's peak resident memory (``ru_maxrss``, the interpreter and numpy included), objects,
and for the sizes run both ways whether every file is the same (ROI zip entries compared by content).

With ``--steps``, each of the workflow's batch steps for an image in blocks then runs alone in a fresh
subprocess as its job does (``cpsnake.run.batchjob`` imported, then ``blockjob.values_file`` on the image, or
``export_file_by_window`` / ``measure_file_by_window`` / ``overlay_file_by_window`` of ``cpsnake.steps`` on the
label TIFF just written), and its peak
RSS is printed next to the memory request the workflow makes for it (:func:`cpsnake.run.jobmem.step_mb`,
blocks of ``--block`` px): the measurements behind those requests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from _stats import load
from bench_blocks import write_mosaic

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, zarr
from cpsnake.export import blockout
from cpsnake.io import inputs
from cpsnake.run.segment import _image_outputs
side, src, labels_path, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
labels = zarr.open_array(labels_path, mode="r")
t0 = time.perf_counter()
with inputs.open_regions(src) as image:
    n = int(json.loads(sys.argv[5]))
    if side == "blocks":
        blockout.write_outputs(out, "mosaic", src, image, labels, n, image.meta)
    else:
        Y, X = image.shape[1:]
        img, lab = image.read(0, Y, 0, X), np.asarray(labels[:])
        _image_outputs(out, "mosaic", src, img, image.meta, lab, None)
print(json.dumps({"time_s": time.perf_counter() - t0,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


STEP = r"""
import json, resource, sys, time
from cpsnake.run import batchjob, blockjob
from cpsnake.steps import measure, overlay, rois
step, src, masks, out = sys.argv[1:5]
t0 = time.perf_counter()
if step == "normalize":
    blockjob.values_file(src, out + ".json")
elif step == "rois":
    rois.export_file_by_window(masks, out + ".zip")
elif step == "measure":
    measure.measure_file_by_window(masks, src, out + ".csv")
else:
    overlay.overlay_file_by_window(src, masks, out + ".png")
print(json.dumps({"time_s": time.perf_counter() - t0,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def write_labels(path: Path, size: int, spacing: int, chunk: int = 1024) -> int:
    """Ellipses on a grid of ``spacing`` px in a Zarr array (see the module doc), chunk by chunk; returns their
    number. Ellipse (r, c) has id r * ncols + c + 1: its first pixel is in its top row, and every ellipse
    of a grid row has the same top row, so these ids are the raster order of first pixels."""
    import zarr

    n_side = size // spacing
    rng = np.random.default_rng(0)
    ry = rng.integers(6, 11, (n_side, n_side))  # the same radius for a whole grid row keeps the top rows equal
    ry[:] = ry[:, :1]
    rx = rng.integers(6, 11, (n_side, n_side))
    arr = zarr.create_array(str(path), shape=(size, size), chunks=(chunk, chunk), dtype="int32", fill_value=0)
    for y0 in range(0, size, chunk):
        for x0 in range(0, size, chunk):
            yy, xx = np.mgrid[y0 : min(size, y0 + chunk), x0 : min(size, x0 + chunk)]
            r, c = yy // spacing, xx // spacing
            ok = (r < n_side) & (c < n_side)
            r, c = np.minimum(r, n_side - 1), np.minimum(c, n_side - 1)
            cy, cx = r * spacing + spacing // 2, c * spacing + spacing // 2
            inside = ok & (((yy - cy) / ry[r, c]) ** 2 + ((xx - cx) / rx[r, c]) ** 2 <= 1)
            arr[y0 : y0 + yy.shape[0], x0 : x0 + yy.shape[1]] = np.where(inside, r * n_side + c + 1, 0)
    return n_side * n_side


def same_files(a: Path, b: Path) -> bool:
    for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        if f.suffix == ".zip":
            with zipfile.ZipFile(a / f) as za, zipfile.ZipFile(b / f) as zb:
                if za.namelist() != zb.namelist() or any(za.read(n) != zb.read(n) for n in za.namelist()):
                    return False
        elif (a / f).read_bytes() != (b / f).read_bytes():
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 20000])
    p.add_argument("--whole-up-to", type=int, default=8192)
    p.add_argument("--spacing", type=int, default=32)
    p.add_argument("--steps", action="store_true", help="also each workflow step alone (peak RSS vs request)")
    p.add_argument("--block", type=int, default=2048, help="block size for the requests printed with --steps")
    args = p.parse_args()
    print(f"bench_block_outputs: ellipses every {args.spacing} px; {load()}", flush=True)
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-outputs-") as tmp:
            src = Path(tmp) / "mosaic.tif"
            write_mosaic(src, size)
            n = write_labels(Path(tmp) / "labels.zarr", size, args.spacing)
            sides = ["blocks"] + (["whole"] if size <= args.whole_up_to else [])
            res = {}
            for side in sides:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, side, str(src), f"{tmp}/labels.zarr", f"{tmp}/{side}", str(n)],
                    capture_output=True,
                    text=True,
                )
                if out.returncode:
                    sys.exit(f"size {size}, {side}: child failed:\n{out.stderr[-3000:]}")
                res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            line = (
                f"{size:>6} x {size:<6} {n:>9,} objects  window by window: wall {res['blocks']['time_s']:7.1f} s, "
                f"peak RSS {res['blocks']['peak_rss_gb']:.2f} GB"
            )
            if "whole" in res:
                line += (
                    f"  | whole image: wall {res['whole']['time_s']:7.1f} s, peak RSS "
                    f"{res['whole']['peak_rss_gb']:.2f} GB "
                    f"({res['whole']['peak_rss_gb'] / res['blocks']['peak_rss_gb']:.1f}x)"
                    f"; files equal: {same_files(Path(tmp) / 'blocks', Path(tmp) / 'whole')}"
                )
            print(f"{line}; {load()}", flush=True)
            if args.steps:
                from cpsnake.run.jobmem import step_mb

                for step in ("normalize", "rois", "measure", "overlay"):
                    out = subprocess.run(
                        [sys.executable, "-c", STEP, step, str(src), f"{tmp}/blocks/masks/mosaic.tif", f"{tmp}/{step}"],
                        capture_output=True,
                        text=True,
                    )
                    if out.returncode:
                        sys.exit(f"size {size}, step {step}: child failed:\n{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    request = step_mb(step, pixels=size * size, width=size, channels=1, block=args.block)
                    print(
                        f"    step {step:<9} wall {r['time_s']:7.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB; "
                        f"request {request / 1000:.2f} GB",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
