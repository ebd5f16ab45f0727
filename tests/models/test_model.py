"""cpsnake.models (Cellpose-SAM family): parity with cellpose.vit.CPSAM, architecture inference, strict and safe
loading.

Reference: cellpose 4.2.1.1's ``CPSAM`` always builds its encoder through
``segment_anything.sam_model_registry["vit_l"]``. For fast tests we temporarily point that registry entry
at a small SAM (segment-anything's own ``_build_sam`` with a narrow, shallow encoder, SAM geometry:
16x16 patches, 64x64 tokens, windowed blocks with 14-token rel-pos tables and one global block), so
cellpose's own ``CPSAM.__init__`` does the published adaptation (8x8 kernel, 32x32 position tokens,
global attention) and its ``forward`` is the reference. The full ViT-L comparison is marked slow.
"""

from __future__ import annotations

import importlib
from functools import partial

import pytest
import torch
from reference import cellpose
from segment_anything.modeling.image_encoder import Attention as SAMAttention

from cpsnake.errors import CpsnakeError
from cpsnake.models.cpsam import (
    ARCHITECTURES,
    CPSAMNet,
    RelPosSDPAttention,
    build_cpsam,
    from_sam_checkpoint,
    infer_architecture,
    set_attention,
)
from cpsnake.models.registry import load_model
from cpsnake.models.state import save_model

build_sam_module = importlib.import_module("segment_anything.build_sam")
sam_registry = build_sam_module.sam_model_registry

SMALL_SAM = partial(
    build_sam_module._build_sam,
    encoder_embed_dim=64,
    encoder_depth=3,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[1],
)


def randomize(state: dict, seed: int, scale: float = 0.2) -> dict:
    """Seeded random values for every tensor but the fixed W2 / diameters (rel-pos and pos_embed start at 0).

    The scale matters: at 0.05 the attention is nearly uniform and the blocks nearly linear, so swapping
    the rel-pos tables of Y and X changed the output by only 4e-6 of its range; at 0.2 the same bug
    changes it by 2e-3 and a tanh-approximated GELU by 3e-5, while float rounding stays near 2e-7.
    """
    g = torch.Generator().manual_seed(seed)
    return {
        k: v if k in ("W2", "diam_labels", "diam_mean") else torch.randn(v.shape, generator=g) * scale
        for k, v in state.items()
    }


def small_reference(monkeypatch, sam_builder=lambda checkpoint=None: SMALL_SAM(checkpoint=None)):
    """cellpose's CPSAM built around a small SAM encoder (see module docstring), eval mode."""
    monkeypatch.setitem(sam_registry, "vit_l", sam_builder)
    ref = cellpose("cellpose.vit").CPSAM()
    monkeypatch.undo()
    return ref.eval()


PARITY_REL = 2e-6  # of the reference output's range; measured float rounding 1e-7 to 3e-7 (small variants)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = PARITY_REL) -> float:
    """Max abs difference, asserted <= ``rel`` of the reference output's range; returns it.

    The tolerance sits about ten times above the float rounding measured between SAM's attention (what
    cellpose runs) and our fused attention, and below what plausible bugs give with :func:`randomize`'s
    weights: Y/X rel-pos tables swapped (2e-3 of the range), tanh-approximated GELU (3e-5). The old
    bound, 1e-3 of the range, let both pass.
    """
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    span = (ref.max() - ref.min()).item()
    assert span > 0 and err <= rel * span, f"max abs difference {err:.3g} = {err / span:.3g} of the range {span:.3g}"
    return err


def tiles(n: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, 256, 256), generator=torch.Generator().manual_seed(seed))


def test_small_variant_file_matches_cellpose(tmp_path, monkeypatch):
    ref = small_reference(monkeypatch)
    state = randomize(ref.state_dict(), seed=1)
    ref.load_state_dict(state)
    torch.save(state, tmp_path / "small.pt")
    net = load_model(tmp_path / "small.pt")  # no architecture flags: inferred from the tensors
    assert list(net.state_dict()) == list(ref.state_dict())
    assert all(type(blk.attn) is RelPosSDPAttention for blk in net.encoder.blocks)
    assert all(type(blk.attn) is SAMAttention for blk in ref.encoder.blocks)  # the reference runs SAM's
    x = tiles(2)
    with torch.no_grad():
        out_ref, second = ref(x)  # cellpose returns (flows, zeros(B, 256)); we return flows only
        out = net(x)
        assert second.shape == (2, 256)
        assert out.shape == (2, 3, 256, 256)
        x = x[:1]
        assert_close(out, out_ref)
        for c in (1, 2):  # fewer channels: first C channels of the patch kernel, as cellpose
            assert_close(net(x[:, :c]), ref(x[:, :c])[0])


def test_fewer_channels_equal_zero_padding():
    net = build_cpsam("tiny", depth=1).eval()
    with torch.no_grad():
        net.encoder.patch_embed.proj.weight.normal_()
        x = tiles(1, c=2)
        padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        assert torch.allclose(net(x), net(padded), atol=1e-5)
        assert not torch.allclose(net(x), net(x[:, :1]), atol=1e-3)  # the second channel does matter


def test_inferred_architecture_of_the_small_reference(monkeypatch):
    state = small_reference(monkeypatch).state_dict()
    kw = infer_architecture(state)
    assert kw["embed_dim"] == 64 and kw["depth"] == 3 and kw["num_heads"] == 2 and kw["out_chans"] == 256
    assert kw["patch_size"] == 8 and kw["tokens"] == 32 and kw["rel_pos_tokens"] == (14, 64, 14)


@pytest.mark.parametrize("arch", ["tiny", "vit_b"])
def test_factory_shapes(arch):
    net = build_cpsam(arch) if arch == "tiny" else build_cpsam(arch, depth=1)
    kw = ARCHITECTURES[arch]
    assert net.encoder.patch_embed.proj.weight.shape == (kw["embed_dim"], 3, 8, 8)
    assert net.encoder.pos_embed.shape == (1, 32, 32, kw["embed_dim"])
    assert net.out.weight.shape == (192, kw["out_chans"], 1, 1) and net.W2.shape == (192, 3, 8, 8)
    assert all(blk.window_size == 0 for blk in net.encoder.blocks)
    assert all(type(blk.attn) is RelPosSDPAttention for blk in net.encoder.blocks)


@pytest.mark.parametrize("table", [32, 14])  # rel-pos rows made for 32 tokens, or 14 (interpolated)
def test_sdpa_attention_equals_sam_attention(table):
    """RelPosSDPAttention == segment-anything's Attention: 32x32 = 1024 tokens, global, random rel-pos."""
    torch.manual_seed(0)
    sam = SAMAttention(48, num_heads=3, qkv_bias=True, use_rel_pos=True, input_size=(table, table))
    with torch.no_grad():
        sam.rel_pos_h.normal_(0, 0.5)
        sam.rel_pos_w.normal_(0, 0.5)
    ours = SAMAttention(48, num_heads=3, qkv_bias=True, use_rel_pos=True, input_size=(table, table))
    ours.__class__ = RelPosSDPAttention
    ours.load_state_dict(sam.state_dict())
    assert list(ours.state_dict()) == ["rel_pos_h", "rel_pos_w", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    x = torch.randn(2, 32, 32, 48, requires_grad=True)
    w = torch.randn(2, 32, 32, 48)  # random cotangent
    grads = []
    for attn in (sam, ours):
        y = attn(x)
        grads.append((y, *torch.autograd.grad((y * w).sum(), [x, attn.rel_pos_h, attn.qkv.weight])))
    (y0, gx0, gr0, gq0), (y1, gx1, gr1, gq1) = grads
    assert y0.abs().max() > 0.1 and gx0.abs().max() > 0.1 and gr0.abs().max() > 0.1  # not trivially zero
    assert torch.allclose(y1, y0, atol=1e-5, rtol=0), (y1 - y0).abs().max()
    assert torch.allclose(gx1, gx0, atol=1e-5, rtol=0), (gx1 - gx0).abs().max()
    assert torch.allclose(gr1, gr0, atol=1e-5 * gr0.abs().max().item(), rtol=0), (gr1 - gr0).abs().max()
    assert torch.allclose(gq1, gq0, atol=1e-5 * gq0.abs().max().item(), rtol=0), (gq1 - gq0).abs().max()


def test_training_gradients_equal_sam_attention_with_layer_drop():
    """Train mode (stochastic depth on): same skip pattern, same loss and gradients with either attention."""
    torch.manual_seed(0)
    net = build_cpsam("tiny", depth=3, rdrop=0.9).train()
    with torch.no_grad():
        for blk in net.encoder.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.1)
            blk.attn.rel_pos_w.normal_(0, 0.1)
    x = tiles(1)
    results = {}
    for kind in ("sam", "sdpa"):
        set_attention(net.encoder, kind)
        net.zero_grad()
        torch.manual_seed(5)  # same per-sample skip draws both times
        loss = net(x).square().mean()
        loss.backward()
        results[kind] = (loss.item(), {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad})
    (l0, g0), (l1, g1) = results["sam"], results["sdpa"]
    assert abs(l1 - l0) <= 1e-5 * abs(l0)
    assert g0["encoder.blocks.0.attn.rel_pos_h"].abs().max() > 0  # rel-pos tables are trained
    for name in g0:
        scale = g0[name].abs().max().item()
        assert torch.allclose(g1[name], g0[name], atol=1e-4 * scale + 1e-12, rtol=0), name


def test_sdpa_attention_runs_in_bfloat16():
    """The rel-pos mask follows q's dtype (SDPA requires it); bf16 output stays near the float32 one."""
    torch.manual_seed(0)
    net = build_cpsam("tiny", depth=1).eval()
    with torch.no_grad():
        net.encoder.blocks[0].attn.rel_pos_h.normal_(0, 0.1)
        ref = net(tiles(1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = net(tiles(1))
        half = net.to(torch.bfloat16)(tiles(1).to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    for out in (auto, half):
        assert torch.allclose(out.float(), ref, atol=0.05 * ref.abs().max().item(), rtol=0)


def test_set_attention_rejects_unknown_kind():
    with pytest.raises(ValueError, match="expected 'sdpa' or 'sam'"):
        set_attention(build_cpsam("tiny", depth=1).encoder, "flash")


def test_unknown_architecture_is_an_error():
    with pytest.raises(CpsnakeError, match="unknown, expected one of vit_h, vit_l, vit_b, tiny"):
        build_cpsam("vit_x")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_cpsam("tiny", embed_dim=48, depth=2, num_heads=2, out_chans=32).eval()
    save_model(net, tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # atomic: no temporary left
    loaded = load_model(tmp_path / "m.pt")
    assert isinstance(loaded, CPSAMNet) and not loaded.training
    assert len(loaded.encoder.blocks) == 2 and loaded.encoder.neck[0].weight.shape[0] == 32
    x = tiles(1)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    # the same weights give the same file bytes (so the same sha256) whatever the file is called
    save_model(loaded, tmp_path / "other_name.pt")
    assert (tmp_path / "other_name.pt").read_bytes() == (tmp_path / "m.pt").read_bytes()


def test_dataparallel_prefix_is_accepted(tmp_path):
    net = build_cpsam("tiny", depth=1)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "dp.pt")
    assert len(load_model(tmp_path / "dp.pt").encoder.blocks) == 1


@pytest.fixture
def tiny_state():
    return build_cpsam("tiny", depth=2).state_dict()


def test_missing_key_is_an_error(tmp_path, tiny_state):
    del tiny_state["out.bias"]
    torch.save(tiny_state, tmp_path / "m.pt")
    with pytest.raises(CpsnakeError, match=r"m\.pt: found missing keys out\.bias"):
        load_model(tmp_path / "m.pt")


def test_extra_key_is_an_error(tmp_path, tiny_state):
    tiny_state["decoder.weight"] = torch.zeros(3)
    torch.save(tiny_state, tmp_path / "m.pt")
    with pytest.raises(CpsnakeError, match=r"unexpected keys decoder\.weight"):
        load_model(tmp_path / "m.pt")


def test_wrong_shape_is_an_error(tmp_path, tiny_state):
    tiny_state["encoder.blocks.1.mlp.lin1.weight"] = torch.zeros(10, 192)
    torch.save(tiny_state, tmp_path / "m.pt")
    with pytest.raises(CpsnakeError, match=r"wrong shapes .*blocks\.1\.mlp\.lin1\.weight \(10, 192\) vs \(768, 192\)"):
        load_model(tmp_path / "m.pt")


def test_not_a_cellpose4_file_is_an_error(tmp_path, tiny_state):
    del tiny_state["W2"]
    torch.save(tiny_state, tmp_path / "cp3.pt")
    with pytest.raises(CpsnakeError, match="found no 'W2' key"):
        load_model(tmp_path / "cp3.pt")


def test_truncated_file_is_one_clear_error(tmp_path, tiny_state):
    torch.save(tiny_state, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CpsnakeError) as info:
        load_model(tmp_path / "cut.pt")
    msg = str(info.value)
    assert str(tmp_path / "cut.pt") in msg and "corrupt or truncated" in msg and "\n" not in msg
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CpsnakeError, match="junk.pt: cannot read"):
        load_model(tmp_path / "junk.pt")


class _Payload:
    """Unpickling this would create a file: proof that no arbitrary code runs."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_pickle_with_objects_is_refused(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"W2": torch.zeros(1), "x": _Payload(target)}, tmp_path / "evil.pt")
    with pytest.raises(CpsnakeError, match=r"evil\.pt: refused, the file holds arbitrary Python objects"):
        load_model(tmp_path / "evil.pt")
    assert not target.exists()


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(CpsnakeError, match="no such weights file"):
        load_model(tmp_path / "nope.pt")


def test_forward_rejects_wrong_tile_shape():
    net = build_cpsam("tiny", depth=1)
    with pytest.raises(CpsnakeError, match=r"found shape \(1, 4, 256, 256\), expected \(B, C<=3, 256, 256\)"):
        net(torch.zeros(1, 4, 256, 256))
    with pytest.raises(CpsnakeError, match="found shape"):
        net(torch.zeros(1, 3, 128, 128))


def test_from_sam_checkpoint_matches_cellpose_adaptation(tmp_path, monkeypatch):
    sam = SMALL_SAM(checkpoint=None)
    state = randomize(sam.state_dict(), seed=2)
    torch.save(state, tmp_path / "sam_small.pth")
    # reference: cellpose's CPSAM.__init__ adapting the SAM encoder loaded from that checkpoint
    ref = small_reference(monkeypatch, lambda checkpoint=None: SMALL_SAM(checkpoint=str(tmp_path / "sam_small.pth")))
    net = from_sam_checkpoint(tmp_path / "sam_small.pth").eval()
    assert all(type(blk.attn) is RelPosSDPAttention for blk in net.encoder.blocks)
    ours, theirs = net.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)
    fresh = ("out.weight", "out.bias", "encoder.patch_embed.proj.bias")
    for k in theirs:
        if k not in fresh:
            assert torch.equal(ours[k], theirs[k]), k
    assert torch.equal(
        ours["encoder.patch_embed.proj.weight"], state["image_encoder.patch_embed.proj.weight"][:, :, ::2, ::2]
    )
    assert torch.equal(ours["encoder.pos_embed"], state["image_encoder.pos_embed"][:, ::2, ::2])
    # deliberate difference: cellpose swaps in a new Conv2d, so its patch bias is random; we keep SAM's
    assert torch.equal(ours["encoder.patch_embed.proj.bias"], state["image_encoder.patch_embed.proj.bias"])
    with torch.no_grad():
        net.encoder.patch_embed.proj.bias.copy_(ref.encoder.patch_embed.proj.bias)
    net.out.load_state_dict(ref.out.state_dict())  # readouts are freshly initialised on both sides
    with torch.no_grad():
        assert_close(net(tiles(1)), ref(tiles(1))[0])


def test_from_sam_checkpoint_rejects_a_cellpose_file(tmp_path, tiny_state):
    torch.save(tiny_state, tmp_path / "cp.pt")
    with pytest.raises(CpsnakeError, match="no 'image_encoder.\\*' keys"):
        from_sam_checkpoint(tmp_path / "cp.pt")


@pytest.mark.slow
def test_vit_l_file_matches_cellpose(tmp_path):
    """Full size: cellpose's ViT-L CPSAM with seeded random weights, saved, loaded by us, same output."""
    torch.manual_seed(0)
    ref = cellpose("cellpose.vit").CPSAM().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in ref.named_parameters():  # SAM zero-initialises these; make them count
            if "rel_pos" in name or name == "encoder.pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    torch.save(ref.state_dict(), tmp_path / "cpsam_random.pt")
    net = load_model(tmp_path / "cpsam_random.pt")
    assert list(net.state_dict()) == list(ref.state_dict())
    assert infer_architecture(net.state_dict())["rel_pos_tokens"] == ARCHITECTURES["vit_l"]["rel_pos_tokens"]
    x = tiles(1, seed=4)
    with torch.no_grad():
        out_ref = ref(x)[0]
        del ref
        assert_close(net(x), out_ref)
