"""Benchmark: cpsnake.engine.normalize.normalize vs cellpose.transforms.normalize_img (4.2.1.1).

Prints, per image size and dtype: wall time (median and range of N runs, the two sides alternated) and
peak extra memory (tracemalloc, numpy allocations) of both, their ratios, and the largest absolute
difference of the outputs. Bit-for-bit equality on real images is checked by check_normalize.py.
Usage: python benchmarks/bench_normalize.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from _stats import load, ratio, spread


def measure(fns, repeat):
    """Time each of ``fns`` ``repeat`` times, alternating them; then one tracemalloc'd call each.

    Returns one (times, peak bytes, output) per function.
    """
    times = [[] for _ in fns]
    for r in range(repeat):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t = time.perf_counter()
            out = fns[i]()
            times[i].append(time.perf_counter() - t)
            del out
    result = []
    for i, fn in enumerate(fns):
        tracemalloc.start()
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        result.append((times[i], peak, out))
    return result


HEADER = f"{'ours s':>26s} {'cellpose s':>26s} {'speed cellpose/ours':>24s} {'ours MB':>8s} {'cp MB':>8s} {'mem x':>6s}"


def row(name, ours, ref, extra):
    (t_ours, m_ours, _), (t_ref, m_ref, _) = ours, ref
    print(
        f"{name:36s} {spread(t_ours, digits=3):>26s} {spread(t_ref, digits=3):>26s} {ratio(t_ref, t_ours):>24s} "
        f"{m_ours / 2**20:8.1f} {m_ref / 2**20:8.1f} {m_ref / m_ours:6.2f} {extra:>10s}"
    )


def main() -> None:
    from cellpose.transforms import normalize_img

    from cpsnake.engine.normalize import normalize

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [
        ("grey uint16 520x696", (1, 520, 696), np.uint16),
        ("grey uint16 3000x3000", (1, 3000, 3000), np.uint16),
        ("grey uint16 4096x4096 (subsampled)", (1, 4096, 4096), np.uint16),
        ("RGB uint8 2048x2048", (3, 2048, 2048), np.uint8),
        ("grey float32 3000x3000", (1, 3000, 3000), np.float32),
    ]
    print(load())
    print(f"{'case':36s} {HEADER} {'max|diff|':>10s}")
    for name, shape, dtype in cases:
        img = (rng.gamma(2.0, 500.0, size=shape)).clip(0, 60000 if dtype != np.uint8 else 255).astype(dtype)
        yxc = np.ascontiguousarray(np.moveaxis(img, 0, -1))  # cellpose's layout, prepared outside the timing
        if dtype == np.float32:  # cellpose scales float32 input in place: give it a fresh copy each time (timed)
            name += " *"
            ref_fn = lambda: normalize_img(yxc.copy(), axis=-1)  # noqa: E731
        else:
            ref_fn = lambda: normalize_img(yxc, axis=-1)  # noqa: E731
        ours, ref = measure([lambda: normalize(img)[0], ref_fn], args.repeat)
        diff = float(np.abs(ours[2] - np.moveaxis(ref[2], -1, 0)).max())
        row(name, ours, ref, f"{diff:.3g}")

    img = (rng.gamma(2.0, 500.0, size=(1, 3000, 3000))).clip(0, 60000).astype(np.uint16)
    yxc = np.ascontiguousarray(np.moveaxis(img, 0, -1))
    ours, ref = measure(
        [lambda: normalize(img, tile_size=200)[0], lambda: normalize_img(yxc, axis=-1, tile_norm_blocksize=200)],
        args.repeat,
    )
    row("tile 200, uint16 3000x3000 **", ours, ref, f"{float(np.abs(ours[2] - np.moveaxis(ref[2], -1, 0)).max()):.3g}")
    print(
        "** tile grids are smoothed differently (ours: sigma 1 along Y and X; cellpose: twice along Y), "
        "so outputs differ"
    )
    print("* cellpose's time and memory include a copy of the input, which it would otherwise overwrite")
    read_images(args.repeat)
    print(f"end: {load()}")


def read_images(repeat: int) -> None:
    """read_image vs cellpose.io.imread on TIFFs written to a temporary folder."""
    import tempfile
    from pathlib import Path

    import tifffile
    from cellpose.io import imread

    from cpsnake.io.inputs import read_image

    rng = np.random.default_rng(1)
    print(f"\n{'read':36s} {HEADER} {'equal':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, dtype in [
            ("grey uint16 4096x4096", (4096, 4096), np.uint16),
            ("RGB uint8 2048x2048 (YXS)", (2048, 2048, 3), np.uint8),
        ]:
            path = Path(tmp) / "x.tif"
            tifffile.imwrite(path, rng.integers(0, 255, shape).astype(dtype))
            ours, ref = measure([lambda: read_image(path)[0], lambda: imread(str(path))], repeat)
            r = ref[2]
            same = np.array_equal(ours[2], r[None] if r.ndim == 2 else np.moveaxis(r, -1, 0))
            row(name, ours, ref, str(same))


if __name__ == "__main__":
    main()
