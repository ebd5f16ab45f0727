"""The Cellpose-SAM family: a SAM ViT image encoder that predicts Cellpose flow fields (cellpose 4).

:class:`CPSAMNet` is segment-anything's ``ImageEncoderViT`` with an 8x8 patch embedding, 32x32 position
tokens and global attention in every block, followed by SAM's neck, a 1x1 readout convolution ``out``
(``out_chans -> 3 * 8 * 8``) and a fixed identity transposed convolution ``W2`` that lays the 192 numbers
of each token back out as an 8x8 pixel patch of (dY, dX, cellprob logits). Its attribute names are the
checkpoint keys of cellpose 4 (``encoder.*``, ``out.weight``, ``out.bias``, ``W2``, ``diam_labels``,
``diam_mean``), so a ``cpsam`` / ``cpsam_v2`` file loads strictly into it.

Sizes live only in :data:`ARCHITECTURES` (name -> keyword arguments of :func:`build_cpsam`):

==========  =========  =====  =====  ====  ===========================================
name        embed_dim  depth  heads  neck  note
==========  =========  =====  =====  ====  ===========================================
vit_h       1280       32     16     256   SAM ViT-H geometry (rel-pos tables 14 / 64)
vit_l       1024       24     16     256   Cellpose-SAM as published (cpsam, cpsam_v2)
vit_b        768       12     12     256   SAM ViT-B geometry
tiny         192        4      3     128   fast CPU model (bundled ``nuclei_small``)
==========  =========  =====  =====  ====  ===========================================

The ``vit_*`` variants keep SAM's relative-position tables (27 rows in windowed blocks, 127 rows in the
four global blocks) because the published weights carry them; segment-anything interpolates them to the
63 rows that 32 tokens need. ``tiny`` is built for 32 tokens directly.

Attention runs through :class:`RelPosSDPAttention`, a subclass of segment-anything's ``Attention`` that
every block gets when the encoder is built (:func:`build_encoder`, hence :func:`build_cpsam`,
:func:`load_model` and :func:`from_sam_checkpoint`). Why: with 1024 tokens per tile, SAM's attention spends
most of the network's CPU time in separate passes over the (heads, 1024, 1024) map: ``q @ k^T``, adding
the decomposed relative-position terms (another full copy), softmax, ``@ v``;
``torch.nn.functional.scaled_dot_product_attention`` fuses
these, taking the same relative-position terms as an additive mask. The parameters (``qkv``, ``proj``,
``rel_pos_h``, ``rel_pos_w``) and so the state-dict keys are SAM's; the result equals SAM's attention up
to float rounding (tests check 1e-5, forward and gradient). :func:`set_attention` switches an encoder back
to SAM's own attention (what cellpose runs), e.g. for a benchmark.

Loading never needs an architecture flag: :func:`infer_architecture` reads it from the tensors
(depth = number of blocks, embed_dim and patch size from the patch-embedding kernel, heads from the
rel-pos head dimension, neck channels, rel-pos table length per block, token grid from ``pos_embed``).

Functions
---------
build_cpsam(arch="vit_l", **overrides) -> CPSAMNet            random initialisation
from_state(state, source) -> CPSAMNet                         cellpose-4 state dict, strict
from_sam_checkpoint(path) -> CPSAMNet                         SAM ``sam_vit_*.pth`` -> Cellpose-SAM start
set_attention(encoder, "sdpa" | "sam") -> encoder             switch the blocks' attention (same weights)

Files load through :func:`cpsnake.models.registry.load_model`, which recognises the family from the keys; a
name from the weights registry becomes a path with :func:`cpsnake.models.weights.resolve`:
``load_model(weights.resolve("cpsam"))``.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

from cpsnake.errors import CpsnakeError
from cpsnake.models.state import check_keys, load_state_dict_file
from cpsnake.models.statefile import infer_architecture

__all__ = [
    "ARCHITECTURES",
    "CPSAMNet",
    "build_cpsam",
    "build_encoder",
    "RelPosSDPAttention",
    "set_attention",
    "infer_architecture",
    "from_state",
    "from_sam_checkpoint",
]

PATCH_SIZE = 8  # pixels per token side in Cellpose-SAM
TILE = 256  # input tile side in pixels (32 x 32 tokens)


def _sam_rel_pos(depth: int, global_blocks: Sequence[int], window: int = 14, grid: int = 64) -> tuple[int, ...]:
    """Token count each block's rel-pos table was made for in SAM: ``grid`` in global blocks, else ``window``."""
    return tuple(grid if i in global_blocks else window for i in range(depth))


# name -> keyword arguments of build_cpsam (the only place sizes live)
ARCHITECTURES: dict[str, dict] = {
    "vit_h": dict(
        embed_dim=1280, depth=32, num_heads=16, out_chans=256, rel_pos_tokens=_sam_rel_pos(32, (7, 15, 23, 31))
    ),
    "vit_l": dict(
        embed_dim=1024, depth=24, num_heads=16, out_chans=256, rel_pos_tokens=_sam_rel_pos(24, (5, 11, 17, 23))
    ),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, out_chans=256, rel_pos_tokens=_sam_rel_pos(12, (2, 5, 8, 11))),
    "tiny": dict(embed_dim=192, depth=4, num_heads=3, out_chans=128),
}


def rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, hw: tuple[int, int]
) -> torch.Tensor:
    """SAM's decomposed relative-position term as an additive attention mask.

    Same arithmetic as segment-anything's ``add_decomposed_rel_pos`` (query grid = key grid = ``hw``),
    but returned on its own instead of added to an attention map.

    Parameters
    ----------
    q : (..., H*W, C) unscaled queries (``...`` = batch, heads)
    rel_pos_h, rel_pos_w : (L, C) tables; interpolated to ``2H-1`` / ``2W-1`` rows if needed
    hw : (H, W) token grid

    Returns
    -------
    (..., H*W, H*W) tensor, dtype of ``q``: ``bias[..., (i, j), (k, l)] = q_ij . Rh[i-k] + q_ij . Rw[j-l]``.
    """
    h, w = hw
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # H H C
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # W W C
    r_q = q.reshape(*q.shape[:-2], h, w, q.shape[-1])
    rel_h = torch.einsum("...hwc,hkc->...hwk", r_q, rh)  # ... H W H(keys)
    rel_w = torch.einsum("...hwc,wkc->...hwk", r_q, rw)  # ... H W W(keys)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(*q.shape[:-2], h * w, h * w)


class RelPosSDPAttention(Attention):
    """segment-anything's ``Attention`` computed with ``F.scaled_dot_product_attention``.

    Same parameters and attribute names (``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``, ``num_heads``,
    ``scale``), so state dicts are unchanged; only :meth:`forward` differs. The relative-position term
    (:func:`rel_pos_bias`) is passed as a float ``attn_mask`` in the dtype of ``q`` (float32, or bfloat16
    under autocast on CUDA). Differentiable (autograd through SDPA and the mask, so ``rel_pos_*`` train).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H, W, dim)."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B heads N C
        bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)  # B heads N C
        x = x.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(x)


def set_attention(encoder: ImageEncoderViT, kind: str = "sdpa") -> ImageEncoderViT:
    """Switch every block's attention, in place, to ``"sdpa"`` (:class:`RelPosSDPAttention`) or ``"sam"``.

    Only the module class changes (the two share all parameters and buffers); returns ``encoder``.
    """
    cls = {"sdpa": RelPosSDPAttention, "sam": Attention}.get(kind)
    if cls is None:
        raise ValueError(f"attention kind {kind!r}: expected 'sdpa' or 'sam'")
    for blk in encoder.blocks:
        blk.attn.__class__ = cls
    return encoder


def build_encoder(
    embed_dim: int,
    depth: int,
    num_heads: int,
    out_chans: int,
    *,
    patch_size: int = PATCH_SIZE,
    tokens: int = TILE // PATCH_SIZE,
    in_chans: int = 3,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    rel_pos_tokens: int | Sequence[int] | None = None,
) -> ImageEncoderViT:
    """A segment-anything ``ImageEncoderViT`` with global attention in every block, run by :class:`RelPosSDPAttention`.

    Parameters
    ----------
    embed_dim, depth, num_heads, out_chans
        Token width, number of blocks, attention heads, neck channels.
    patch_size, tokens
        Patch-embedding kernel = stride; the position embedding is ``(1, tokens, tokens, embed_dim)``,
        so the input tile is ``tokens * patch_size`` pixels square.
    rel_pos_tokens
        Per block (or one value for all), the token count its relative-position tables were made for:
        tables have ``2 * n - 1`` rows (segment-anything interpolates them to the actual grid).
        Default: ``tokens``.
    """
    enc = ImageEncoderViT(
        img_size=tokens * patch_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        out_chans=out_chans,
        qkv_bias=qkv_bias,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=0,  # every block global
    )
    if rel_pos_tokens is None:
        rel_pos_tokens = tokens
    if isinstance(rel_pos_tokens, int):
        rel_pos_tokens = [rel_pos_tokens] * depth
    if len(rel_pos_tokens) != depth:
        raise ValueError(f"rel_pos_tokens has {len(rel_pos_tokens)} entries, expected depth={depth}")
    head_dim = embed_dim // num_heads
    for blk, n in zip(enc.blocks, rel_pos_tokens):
        if n != tokens:
            blk.attn.rel_pos_h = nn.Parameter(torch.zeros(2 * n - 1, head_dim))
            blk.attn.rel_pos_w = nn.Parameter(torch.zeros(2 * n - 1, head_dim))
    return set_attention(enc, "sdpa")


class CPSAMNet(nn.Module):
    """Cellpose-SAM: ``encoder`` (SAM ViT) -> ``out`` (1x1 conv) -> ``W2`` (fixed un-patchify).

    Parameters
    ----------
    encoder : ImageEncoderViT
        Patch kernel ``p x p`` with stride ``p``, position embedding ``(1, T, T, D)``, global attention;
        the input tile is ``T * p`` pixels square (256 for Cellpose-SAM).
    nout : int
        Output channels per pixel (3: dY, dX, cellprob logits).
    rdrop : float
        Training-mode stochastic depth as in cellpose: block ``i`` of ``n`` is skipped, per sample, with
        probability ``rdrop * i / (n - 1)``. No effect in eval mode.
    """

    def __init__(self, encoder: ImageEncoderViT, *, nout: int = 3, rdrop: float = 0.4) -> None:
        super().__init__()
        # registered first so the key order matches cellpose's files
        self.diam_labels = nn.Parameter(torch.tensor([30.0]), requires_grad=False)
        self.diam_mean = nn.Parameter(torch.tensor([30.0]), requires_grad=False)
        self.encoder = encoder
        ps = encoder.patch_embed.proj.kernel_size[0]
        feat = encoder.neck[-2].weight.shape[0]
        self.out = nn.Conv2d(feat, nout * ps * ps, kernel_size=1)
        # identity kernel: channel k of a token -> (output channel, dy, dx) of its p x p pixel patch
        self.W2 = nn.Parameter(torch.eye(nout * ps * ps).reshape(nout * ps * ps, nout, ps, ps), requires_grad=False)
        self.nout = nout
        self.ps = ps
        self.rdrop = rdrop

    @property
    def tile(self) -> int:
        """Input tile side in pixels (256 for Cellpose-SAM)."""
        return self.encoder.pos_embed.shape[1] * self.ps

    @property
    def in_chans(self) -> int:
        return self.encoder.patch_embed.proj.weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flows for a batch of tiles.

        Parameters
        ----------
        x : (B, C, H, W) float tensor, 1 <= C <= 3, H = W = :attr:`tile` (256)
            Normalised image channels. With C < 3 only the first C input channels of the patch kernel
            are used, which equals padding the image with zero channels (what cellpose does).

        Returns
        -------
        (B, 3, H, W) tensor: dY, dX, cellprob logits.
            cellpose's ``CPSAM.forward`` returns a tuple ``(flows, zeros(B, 256))`` (the second item
            kept for backward compatibility); this returns the flows tensor only. Unlike cellpose, the
            patch kernel is used as a parameter (not ``.data``), so fine-tuning can train it.
        """
        if x.ndim != 4 or not 1 <= x.shape[1] <= self.in_chans or tuple(x.shape[-2:]) != (self.tile, self.tile):
            raise CpsnakeError(
                f"network input: found shape {tuple(x.shape)}, expected (B, C<={self.in_chans}, "
                f"{self.tile}, {self.tile}); tile the image and select at most {self.in_chans} channels"
            )
        proj = self.encoder.patch_embed.proj
        x = F.conv2d(x, proj.weight[:, : x.shape[1]], proj.bias, stride=self.ps)
        x = x.permute(0, 2, 3, 1)  # B D T T -> B T T D
        x = x + self.encoder.pos_embed
        blocks = self.encoder.blocks
        if self.training and self.rdrop > 0:
            n = len(blocks)
            skip = torch.rand((len(x), n), device=x.device) < torch.linspace(0, self.rdrop, n, device=x.device)
            skip = skip.to(x.dtype)
            for i, blk in enumerate(blocks):
                m = skip[:, i].view(-1, 1, 1, 1)
                x = x * m + blk(x) * (1 - m)
        else:
            for blk in blocks:
                x = blk(x)
        x = self.encoder.neck(x.permute(0, 3, 1, 2))  # B T T D -> B D T T -> B neck T T
        x = self.out(x)  # B (3*p*p) T T
        return F.conv_transpose2d(x, self.W2, stride=self.ps)  # B 3 (T*p) (T*p)


def build_cpsam(arch: str = "vit_l", **overrides) -> CPSAMNet:
    """A randomly initialised :class:`CPSAMNet` of a named architecture.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES`.
    **overrides
        Replace any keyword of :func:`build_encoder` (e.g. ``depth=2``), plus ``nout`` and ``rdrop``.
    """
    if arch not in ARCHITECTURES:
        raise CpsnakeError(f"architecture {arch!r}: unknown, expected one of {', '.join(ARCHITECTURES)}")
    kw = {**ARCHITECTURES[arch], **overrides}
    net_kw = {k: kw.pop(k) for k in ("nout", "rdrop") if k in kw}
    if "depth" in overrides and "rel_pos_tokens" not in overrides:
        kw.pop("rel_pos_tokens", None)  # a per-block SAM table would not fit the new depth
    return CPSAMNet(build_encoder(**kw), **net_kw)


def from_state(state: Mapping[str, torch.Tensor], source: str) -> CPSAMNet:
    """A :class:`CPSAMNet` holding a cellpose-4 Cellpose-SAM state dict (strict; architecture from the tensors).

    The keys and shapes are checked against a network built on torch's "meta" device first (nothing
    allocated), so a file describing a huge network is refused before it is built. Eval mode, float32, CPU.
    """
    if "W2" not in state:
        raise CpsnakeError(
            f"{source}: found no 'W2' key, expected a cellpose-4 Cellpose-SAM state dict "
            "(a SAM sam_vit_*.pth is converted by from_sam_checkpoint); "
            "use cpsam, cpsam_v2 or a cpsnake-trained model"
        )
    kw = infer_architecture(state, source=source)
    nout = state["W2"].shape[1]
    with torch.device("meta"):  # shapes only
        check_keys(CPSAMNet(build_encoder(**kw), nout=nout), state, source)
    net = CPSAMNet(build_encoder(**kw), nout=nout)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()


def from_sam_checkpoint(path: str | os.PathLike, *, nout: int = 3) -> CPSAMNet:
    """Start a Cellpose-SAM network from a segment-anything checkpoint (``sam_vit_{b,l,h}_*.pth``).

    The ``image_encoder.*`` tensors load strictly into a SAM-geometry encoder (16x16 patches, 64x64
    tokens); then, as published for Cellpose-SAM, the patch kernel is subsampled ``[::2, ::2]`` to 8x8,
    the position embedding ``[::2, ::2]`` to 32x32 tokens, and every block uses global attention.
    The patch-embedding bias keeps SAM's trained value (cellpose 4.2.1.1 replaces the convolution and so
    starts from a random bias; everything else matches its adaptation). The readout ``out`` is freshly
    initialised (``W2`` identity, diameters 30). Returns train mode.
    """
    state = load_state_dict_file(path)
    enc_state = {k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")}
    if not enc_state:
        raise CpsnakeError(
            f"{path}: found no 'image_encoder.*' keys, expected a segment-anything checkpoint "
            "(sam_vit_b/l/h_*.pth); for a cellpose model use load_model"
        )
    kw = infer_architecture(enc_state, prefix="", source=str(path))
    with torch.device("meta"):  # shapes only, before anything is allocated
        check_keys(build_encoder(**kw), enc_state, str(path), prefix="")
    enc = build_encoder(**kw)
    enc.load_state_dict(enc_state, strict=True)
    # 16x16 kernel -> 8x8 by taking every other tap; 64x64 position tokens -> 32x32 likewise
    step = kw["patch_size"] // PATCH_SIZE
    w, b = enc.patch_embed.proj.weight.detach(), enc.patch_embed.proj.bias.detach()
    enc.patch_embed.proj = nn.Conv2d(w.shape[1], w.shape[0], kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
    enc.patch_embed.proj.weight.data = w[:, :, ::step, ::step].contiguous()
    enc.patch_embed.proj.bias.data = b.clone()
    ds = kw["tokens"] // (TILE // PATCH_SIZE)
    enc.pos_embed = nn.Parameter(enc.pos_embed.detach()[:, ::ds, ::ds].contiguous())
    return CPSAMNet(enc, nout=nout)
