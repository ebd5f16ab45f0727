"""Benchmark: cpsnake.engine.infer.run_net vs cellpose 4's core.run_net, same network, same 1000x1000 image.

    python benchmarks/bench_infer.py [--size 1000] [--repeats 3] [--threads 1] [--tiny] [--augment]

Prints seconds per image (median and range of ``--repeats`` runs, the two alternated, after one untimed
warm-up each) for each implementation, the ratio ours / cellpose and the largest absolute difference of
the flows. Networks: a small deterministic conv net (tiling and
blending overhead dominate) and, with ``--tiny``, cpsnake's ``tiny`` Cellpose-SAM (random weights).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from _stats import load, ratio, spread, timed


class SmallConv(torch.nn.Module):
    """(B, C<=3, 256, 256) -> (B, 3, 256, 256); deterministic random weights."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, 5, 5, generator=g) * 0.3)
        self.b1 = torch.nn.Parameter(torch.randn(8, generator=g) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(3, 8, 3, 3, generator=g) * 0.3)

    def forward(self, x):
        h = torch.tanh(F.conv2d(x, self.w1[:, : x.shape[1]], self.b1, padding=2))
        return F.conv2d(h, self.w2, padding=1)


class CellposeWrap(torch.nn.Module):
    """The interface cellpose.core._forward expects: .device, .dtype, net(X) -> (y, style)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def forward(self, x):
        return self.net(x), torch.zeros((x.shape[0], 256))


def bench(name, net, img, repeats, augment):
    from cellpose import core

    from cpsnake.engine import infer

    net.eval()
    wrapped = CellposeWrap(net)
    x = img.transpose(1, 2, 0)[None]  # C Y X -> 1 Y X C
    sides = {
        "ours": lambda: infer.run_net(net, img, batch_size=8, augment=augment, progress=False),
        "cellpose": lambda: core.run_net(wrapped, x, batch_size=8, augment=augment, tile_overlap=0.1, bsize=256)[0][0],
    }
    times = {k: [] for k in sides}
    out = {k: fn() for k, fn in sides.items()}  # warm-up
    for r in range(repeats):
        for k in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            t, out[k] = timed(sides[k])
            times[k].append(t)
    diff = np.abs(out["ours"] - out["cellpose"].transpose(2, 0, 1)).max()
    from cpsnake.engine.tiles import make_tiles

    _, layout = make_tiles(img, augment=augment)
    print(
        f"{name:<12} {img.shape[1]}x{img.shape[2]} C={img.shape[0]} tiles={layout.n_tiles:<4} augment={augment!s:<5} "
        f"ours {spread(times['ours'])}  cellpose {spread(times['cellpose'])}  "
        f"ratio ours/cellpose {ratio(times['ours'], times['cellpose'])}  max|diff| {diff:.2e}",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--tiny", action="store_true", help="also the tiny Cellpose-SAM (slower)")
    p.add_argument("--augment", action="store_true", help="also with flip test-time augmentation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    img = np.random.default_rng(0).random((3, args.size, args.size), dtype=np.float32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} runs each; {load()}")
    for augment in [False, True] if args.augment else [False]:
        bench("small-conv", SmallConv(), img, args.repeats, augment)
        if args.tiny:
            from cpsnake.models.cpsam import build_cpsam

            torch.manual_seed(0)
            bench("tiny-cpsam", build_cpsam("tiny"), img, args.repeats, augment)
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
