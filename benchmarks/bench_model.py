"""Benchmark: the Cellpose-SAM network forward, cellpose 4.2.1.1's ``CPSAM`` against cpsnake's, same weights.

    python benchmarks/bench_model.py [--arch vit_b vit_l] [--batch 1] [--repeats 3] [--threads N] [--attention tiny]

Part 1 (``--arch``): cellpose's own ``cellpose.vit.CPSAM`` (segment-anything's attention, what cellpose
runs) is built and given seeded random weights (random rel-pos tables and position embedding too, which
SAM initialises to zero); its state dict is saved and loaded by ``cpsnake.models.registry.load_model`` (fused
SDPA attention). ``vit_l`` is the published architecture; ``vit_b`` is cellpose's CPSAM built around
SAM's ViT-B (cellpose always asks the registry for ``vit_l``: the entry is pointed at ``vit_b`` for the
build). Both networks run on the same ``--batch`` random 256x256 tiles, eval mode, no autograd: one
untimed warm-up each, then ``--repeats`` timed runs, alternating which goes first. Printed: seconds per
batch (median and range), the ratio cellpose / cpsnake (> 1: cpsnake is faster), and the largest
absolute difference of the outputs, also relative to the output range.

Part 2 (``--attention``): architectures without a cellpose counterpart (``tiny``, the bundled model's)
run with segment-anything's attention and with SDPA in the same network (:func:`cpsnake.models.cpsam.set_attention`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _stats import load, ratio, spread, timed


def cellpose_cpsam(arch: str, seed: int = 0) -> torch.nn.Module:
    """cellpose's CPSAM around SAM's ``arch`` encoder, seeded random weights, eval mode."""
    from cellpose.vit import CPSAM
    from segment_anything import sam_model_registry as registry  # the dict cellpose.vit reads

    saved = registry["vit_l"]
    registry["vit_l"] = registry[arch]
    try:
        torch.manual_seed(seed)
        ref = CPSAM().eval()
    finally:
        registry["vit_l"] = saved
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "rel_pos" in name or name == "encoder.pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return ref


def versus_cellpose(arch: str, batch: int, repeats: int) -> None:
    from cpsnake.models.registry import load_model

    ref = cellpose_cpsam(arch)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(ref.state_dict(), Path(tmp) / "cpsam_random.pt")
        ours = load_model(Path(tmp) / "cpsam_random.pt")
    x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    sides = {"cellpose": lambda: ref(x)[0], "cpsnake": lambda: ours(x)}
    times = {k: [] for k in sides}
    out = {}
    with torch.inference_mode():
        for fn in sides.values():
            fn()  # warm-up
        for r in range(repeats):
            for k in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                t, out[k] = timed(sides[k])
                times[k].append(t)
    diff = (out["cpsnake"] - out["cellpose"]).abs().max().item()
    span = (out["cellpose"].max() - out["cellpose"].min()).item()
    print(
        f"{arch} batch {batch}: cellpose CPSAM {spread(times['cellpose'])}, cpsnake {spread(times['cpsnake'])}, "
        f"cellpose/cpsnake {ratio(times['cellpose'], times['cpsnake'])}; max abs diff {diff:.2e} "
        f"({diff / span:.1e} of the output range {span:.2f})",
        flush=True,
    )


def attention_only(arch: str, batch: int, repeats: int) -> None:
    from cpsnake.models.cpsam import build_cpsam, set_attention

    torch.manual_seed(0)
    net = build_cpsam(arch).eval()
    with torch.no_grad():
        for blk in net.encoder.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.1)
            blk.attn.rel_pos_w.normal_(0, 0.1)
    x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    times = {"sam": [], "sdpa": []}
    out = {}
    with torch.inference_mode():
        for kind in times:
            set_attention(net.encoder, kind)
            net(x[:1])  # warm-up
        for r in range(repeats):
            for kind in ["sam", "sdpa"] if r % 2 == 0 else ["sdpa", "sam"]:
                set_attention(net.encoder, kind)
                t, out[kind] = timed(lambda: net(x))
                times[kind].append(t)
    diff = (out["sam"] - out["sdpa"]).abs().max().item()
    print(
        f"{arch} batch {batch}, same network: SAM attention {spread(times['sam'])}, SDPA {spread(times['sdpa'])}, "
        f"SAM/SDPA {ratio(times['sam'], times['sdpa'])}; max abs diff {diff:.2e}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*", default=["vit_l"], help="vs cellpose's CPSAM: vit_b, vit_l (default vit_l)")
    ap.add_argument(
        "--batch", type=int, default=1, help="tiles per batch for --arch (ViT-L: ~15 s per tile on 2 cores)"
    )
    ap.add_argument("--attention", nargs="*", default=["tiny"], help="SAM vs SDPA attention only (default tiny)")
    ap.add_argument("--attention-batch", type=int, default=8, help="tiles per batch for --attention")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import cellpose

    print(f"torch {torch.__version__}, cellpose {cellpose.version}, {torch.get_num_threads()} threads; {load()}")
    for arch in args.arch:
        versus_cellpose(arch, args.batch, args.repeats)
    for arch in args.attention:
        attention_only(arch, args.attention_batch, args.repeats)
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
