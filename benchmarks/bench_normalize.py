"""Benchmark: cpsnake.normalize.normalize vs cellpose.transforms.normalize_img (4.2.1.1).

Prints, per image size and dtype: wall time (best of N) and peak extra memory (tracemalloc, numpy
allocations) of both, their ratios, and the largest absolute difference of the outputs.
Usage: python benchmarks/bench_normalize.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


def measure(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        del out
    tracemalloc.start()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak, out


def main() -> None:
    from cellpose.transforms import normalize_img

    from cpsnake.normalize import normalize

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [
        ("grey uint16 520x696", (1, 520, 696), np.uint16),
        ("grey uint16 3000x3000", (1, 3000, 3000), np.uint16),
        ("grey uint16 4096x4096 (subsampled)", (1, 4096, 4096), np.uint16),
        ("RGB uint8 2048x2048", (3, 2048, 2048), np.uint8),
        ("grey float32 3000x3000", (1, 3000, 3000), np.float32),
    ]
    print(f"{'case':36s} {'ours s':>8s} {'cellpose s':>10s} {'speed x':>8s} {'ours MB':>8s} {'cp MB':>8s} {'mem x':>6s} {'max|diff|':>10s}")
    for name, shape, dtype in cases:
        img = (rng.gamma(2.0, 500.0, size=shape)).clip(0, 60000 if dtype != np.uint8 else 255).astype(dtype)
        yxc = np.ascontiguousarray(np.moveaxis(img, 0, -1))  # cellpose's layout, prepared outside the timing
        t_ours, m_ours, ours = measure(lambda: normalize(img)[0], args.repeat)
        if dtype == np.float32:  # cellpose scales float32 input in place: give it a fresh copy each time (timed)
            name += " *"
            t_ref, m_ref, ref = measure(lambda: normalize_img(yxc.copy(), axis=-1), args.repeat)
        else:
            t_ref, m_ref, ref = measure(lambda: normalize_img(yxc, axis=-1), args.repeat)
        diff = float(np.abs(ours - np.moveaxis(ref, -1, 0)).max())
        print(
            f"{name:36s} {t_ours:8.3f} {t_ref:10.3f} {t_ref / t_ours:8.2f} {m_ours / 2**20:8.1f} {m_ref / 2**20:8.1f} "
            f"{m_ref / m_ours:6.2f} {diff:10.3g}"
        )

    img = (rng.gamma(2.0, 500.0, size=(1, 3000, 3000))).clip(0, 60000).astype(np.uint16)
    yxc = np.ascontiguousarray(np.moveaxis(img, 0, -1))
    t_ours, m_ours, ours = measure(lambda: normalize(img, tile_size=200)[0], args.repeat)
    t_ref, m_ref, ref = measure(lambda: normalize_img(yxc, axis=-1, tile_norm_blocksize=200), args.repeat)
    diff = float(np.abs(ours - np.moveaxis(ref, -1, 0)).max())
    print(
        f"{'tile 200, uint16 3000x3000 **':36s} {t_ours:8.3f} {t_ref:10.3f} {t_ref / t_ours:8.2f} {m_ours / 2**20:8.1f} "
        f"{m_ref / 2**20:8.1f} {m_ref / m_ours:6.2f} {diff:10.3g}"
    )
    print("** tile grids are smoothed differently (ours: sigma 1 along Y and X; cellpose: twice along Y), so outputs differ")
    print("* cellpose's time and memory include a copy of the input, which it would otherwise overwrite")
    read_images(args.repeat)


def read_images(repeat: int) -> None:
    """read_image vs cellpose.io.imread on TIFFs written to a temporary folder."""
    import tempfile
    from pathlib import Path

    import tifffile
    from cellpose.io import imread

    from cpsnake.io import read_image

    rng = np.random.default_rng(1)
    print(f"\n{'read':36s} {'ours s':>8s} {'cellpose s':>10s} {'speed x':>8s} {'ours MB':>8s} {'cp MB':>8s} {'mem x':>6s} {'equal':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, dtype in [("grey uint16 4096x4096", (4096, 4096), np.uint16), ("RGB uint8 2048x2048 (YXS)", (2048, 2048, 3), np.uint8)]:
            path = Path(tmp) / "x.tif"
            tifffile.imwrite(path, rng.integers(0, 255, shape).astype(dtype))
            t_ours, m_ours, ours = measure(lambda: read_image(path)[0], repeat)
            t_ref, m_ref, ref = measure(lambda: imread(str(path)), repeat)
            same = np.array_equal(ours, ref[None] if ref.ndim == 2 else np.moveaxis(ref, -1, 0))
            print(f"{name:36s} {t_ours:8.3f} {t_ref:10.3f} {t_ref / t_ours:8.2f} {m_ours / 2**20:8.1f} {m_ref / 2**20:8.1f} {m_ref / m_ours:6.2f} {same!s:>6s}")


if __name__ == "__main__":
    main()
