"""Benchmark: Cellpose-SAM forward with segment-anything's attention vs cpsnake's SDPA attention.

    python benchmarks/bench_model.py [--arch tiny vit_b] [--batch 8] [--repeats 3] [--threads N] [--vit-l]

cellpose 4 runs the network with segment-anything's ``Attention`` in every block; cpsnake swaps in
:class:`cpsnake.model.RelPosSDPAttention` (same parameters). This times one network, same weights, both
ways in one run (:func:`cpsnake.model.set_attention` flips the blocks), eval mode, no autograd, on
``--batch`` random 256x256 tiles. Prints seconds per batch (best of ``--repeats`` after one untimed
warm-up of one tile each, the two kinds alternated so background load hits both alike), the ratio SAM / SDPA (> 1: SDPA is faster) and the
largest absolute difference of the outputs. Weights are random, with random (non-zero) relative-position
tables so that term is exercised. ``--vit-l`` adds one ViT-L batch of a single tile each way.
"""

from __future__ import annotations

import argparse
import time

import torch

from cpsnake.model import build_cpsam, set_attention


def random_net(arch: str, seed: int = 0) -> torch.nn.Module:
    """``build_cpsam(arch)`` in eval mode with random rel-pos tables (SAM initialises them to zero)."""
    torch.manual_seed(seed)
    net = build_cpsam(arch).eval()
    with torch.no_grad():
        for blk in net.encoder.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.1)
            blk.attn.rel_pos_w.normal_(0, 0.1)
    return net


def run(net: torch.nn.Module, x: torch.Tensor, kind: str) -> tuple[float, torch.Tensor]:
    set_attention(net.encoder, kind)
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = net(x)
    return time.perf_counter() - t0, y


def bench(arch: str, batch: int, repeats: int) -> None:
    net = random_net(arch)
    x = torch.randn(batch, 3, net.tile, net.tile, generator=torch.Generator().manual_seed(1))
    best = {"sam": float("inf"), "sdpa": float("inf")}
    out = {}
    if repeats > 1:  # one untimed warm-up each (allocator, kernel selection)
        for kind in ("sam", "sdpa"):
            run(net, x[:1], kind)
    for _ in range(repeats):
        for kind in ("sam", "sdpa"):
            t, out[kind] = run(net, x, kind)
            best[kind] = min(best[kind], t)
    diff = (out["sam"] - out["sdpa"]).abs().max().item()
    scale = out["sam"].abs().max().item()
    print(f"{arch:6s} batch {batch:2d}: SAM attention {best['sam']:.3f} s/batch, SDPA {best['sdpa']:.3f} s/batch, "
          f"ratio SAM/SDPA {best['sam'] / best['sdpa']:.2f}x, max abs diff {diff:.2e} (output max {scale:.2f})",
          flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["tiny"], help="architectures (tiny, vit_b, vit_l, vit_h)")
    ap.add_argument("--batch", type=int, default=8, help="tiles per batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per kind (best is printed)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--vit-l", action="store_true", help="also one ViT-L batch of 1 tile each way (~3 GB)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for arch in args.arch:
        bench(arch, args.batch, args.repeats)
    if args.vit_l:
        bench("vit_l", 1, 1)


if __name__ == "__main__":
    main()
