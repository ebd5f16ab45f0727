"""The classic Cellpose family: the residual U-Net with a style vector (Cellpose 1-3, ``cyto3``, ``nuclei``, ...).

The network (Stringer et al. 2021, as cellpose 3.1's ``CPnet``): a U-Net whose blocks are residual (two
pairs of BatchNorm -> ReLU -> conv with a 1x1 projection around them), with the skip connections
*added* to, not concatenated with, the upsampling path, and a *style* vector: the deepest feature
maps averaged over space and scaled to unit length, then added (through a linear map per block) to
the input of every upsampling convolution. Output per pixel: dY, dX, cell probability logit.

Sizes live in the widths ``nbase`` = (input channels, width of level 1, 2, ...): cellpose 3's default
``(2, 32, 64, 128, 256)`` (6.6 M parameters; four levels, three 2x2 max-poolings, so inputs must be
multiples of 8 px) and the kernel size ``sz`` (3). Attribute names are cellpose 3's, so its files
(``torch.save(net.state_dict())``: ``downsample.down.res_down_0.conv.conv_0.0.weight``, ...,
``output.2.weight``, ``diam_mean``, ``diam_labels``) load strictly; :func:`infer_architecture` reads
``nbase``, ``sz`` and ``nout`` from the tensors. ``diam_mean`` is the diameter the model sees cells at
(30 for cyto models, 17 for nuclei), ``diam_labels`` the mean diameter of its training masks.

Axis order: tensors are (B, C, Y, X).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cpsnake.errors import CpsnakeError
from cpsnake.models.state import check_keys

__all__ = ["NBASE", "UNet", "build_unet", "infer_architecture", "from_state", "is_unet_state"]

NBASE = (2, 32, 64, 128, 256)  # cellpose 3's widths: 2 input channels (cytoplasm, nucleus), 4 levels
TILE = 224  # cellpose 3's tile side


def _bn_relu_conv(cin: int, cout: int, sz: int) -> nn.Sequential:
    """BatchNorm -> ReLU -> Conv (keys ``0.*``, ``2.*``), cellpose's momentum 0.05."""
    return nn.Sequential(
        nn.BatchNorm2d(cin, eps=1e-5, momentum=0.05), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, sz, padding=sz // 2)
    )


def _bn_conv(cin: int, cout: int, sz: int) -> nn.Sequential:
    """BatchNorm -> Conv (keys ``0.*``, ``1.*``): the projection of a residual block."""
    return nn.Sequential(nn.BatchNorm2d(cin, eps=1e-5, momentum=0.05), nn.Conv2d(cin, cout, sz, padding=sz // 2))


class ResDown(nn.Module):
    """Two residual pairs of :func:`_bn_relu_conv`; the first pair's shortcut is a 1x1 projection."""

    def __init__(self, cin: int, cout: int, sz: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()  # registered first: cellpose's key order
        for t in range(4):
            self.conv.add_module(f"conv_{t}", _bn_relu_conv(cin if t == 0 else cout, cout, sz))
        self.proj = _bn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.conv[1](self.conv[0](x))
        return x + self.conv[3](self.conv[2](x))


class StyleConv(nn.Module):
    """:func:`_bn_relu_conv` of ``x (+ skip) + full(style)`` (the style broadcast over Y, X)."""

    def __init__(self, cin: int, cout: int, style_channels: int, sz: int) -> None:
        super().__init__()
        self.conv = _bn_relu_conv(cin, cout, sz)
        self.full = nn.Linear(style_channels, cout)

    def forward(self, style: torch.Tensor, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + skip
        return self.conv(x + self.full(style)[:, :, None, None])


class ResUp(nn.Module):
    """Upsampling block: conv, then three style convolutions, the skip added before the first of them."""

    def __init__(self, cin: int, cout: int, style_channels: int, sz: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("conv_0", _bn_relu_conv(cin, cout, sz))
        for t in (1, 2, 3):
            self.conv.add_module(f"conv_{t}", StyleConv(cout, cout, style_channels, sz))
        self.proj = _bn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.conv[1](style, self.conv[0](x), skip)
        return x + self.conv[3](style, self.conv[2](style, x))


class Down(nn.Module):
    """The encoder: one :class:`ResDown` per level, 2x2 max-pooling between levels."""

    def __init__(self, nbase: Sequence[int], sz: int) -> None:
        super().__init__()
        self.down = nn.Sequential()
        for n in range(len(nbase) - 1):
            self.down.add_module(f"res_down_{n}", ResDown(nbase[n], nbase[n + 1], sz))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for n, block in enumerate(self.down):
            feats.append(block(x if n == 0 else F.max_pool2d(feats[-1], 2, stride=2)))
        return feats


class Up(nn.Module):
    """The decoder: :class:`ResUp` blocks from the deepest level up, nearest-neighbour 2x upsampling."""

    def __init__(self, nbaseup: Sequence[int], sz: int) -> None:
        super().__init__()
        self.up = nn.Sequential()
        for n in range(1, len(nbaseup)):
            self.up.add_module(f"res_up_{n - 1}", ResUp(nbaseup[n], nbaseup[n - 1], nbaseup[-1], sz))

    def forward(self, style: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.up[-1](feats[-1], feats[-1], style)
        for n in range(len(self.up) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.up[n](x, feats[n], style)
        return x


class UNet(nn.Module):
    """The Cellpose residual U-Net with style vector.

    Parameters
    ----------
    nbase : widths (input channels, level 1, level 2, ...)
    nout : output channels (3: dY, dX, cellprob logit)
    sz : convolution kernel size
    diam_mean : diameter (px) cells are rescaled to for this network
    """

    def __init__(self, nbase: Sequence[int] = NBASE, nout: int = 3, sz: int = 3, diam_mean: float = 30.0) -> None:
        super().__init__()
        nbase = [int(n) for n in nbase]
        self.nbase, self.nout, self.sz = nbase, int(nout), int(sz)
        self.downsample = Down(nbase, sz)
        nbaseup = nbase[1:] + [nbase[-1]]
        self.upsample = Up(nbaseup, sz)
        self.output = _bn_relu_conv(nbaseup[0], nout, 1)
        self.diam_mean = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)
        self.diam_labels = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)

    @property
    def in_chans(self) -> int:
        return self.nbase[0]

    @property
    def levels(self) -> int:
        """Number of resolution levels; inputs must be multiples of ``2 ** (levels - 1)`` px."""
        return len(self.nbase) - 1

    def forward_with_style(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, Y, X) -> flows (B, nout, Y, X) and the style (B, nbase[-1]), unit length per tile."""
        if x.ndim != 4 or not 1 <= x.shape[1] <= self.in_chans:
            raise CpsnakeError(f"network input: found shape {tuple(x.shape)}, expected (B, C<={self.in_chans}, Y, X)")
        if x.shape[1] < self.in_chans:  # absent channels are zero (cellpose's chan2 = 0)
            x = torch.cat([x, x.new_zeros((x.shape[0], self.in_chans - x.shape[1], *x.shape[2:]))], dim=1)
        feats = self.downsample(x)
        style = F.avg_pool2d(feats[-1], kernel_size=feats[-1].shape[2:]).flatten(1)  # B C Y X -> B C
        style = style / torch.sum(style**2, dim=1, keepdim=True) ** 0.5
        return self.output(self.upsample(style, feats)), style

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, Y, X) -> (B, nout, Y, X): dY, dX, cellprob logits (C <= in_chans; missing channels are zero)."""
        return self.forward_with_style(x)[0]


def build_unet(nbase: Sequence[int] = NBASE, nout: int = 3, sz: int = 3, diam_mean: float = 30.0) -> UNet:
    """A freshly initialised :class:`UNet` (cellpose 3's default sizes unless given)."""
    return UNet(nbase, nout, sz, diam_mean)


_DOWN = re.compile(r"^downsample\.down\.res_down_(\d+)\.proj\.1\.weight$")


def is_unet_state(state: Mapping[str, object]) -> bool:
    """True for a cellpose 1-3 U-Net state dict (its first down block and its output convolution)."""
    return "downsample.down.res_down_0.proj.1.weight" in state and "output.2.weight" in state


def infer_architecture(state: Mapping[str, torch.Tensor], *, source: str = "state dict") -> dict:
    """``nbase``, ``nout`` and ``sz`` of the U-Net stored in ``state`` (keyword arguments of :class:`UNet`)."""
    levels = sorted(int(m.group(1)) for k in state if (m := _DOWN.match(k)))
    if not levels or levels != list(range(len(levels))):
        raise CpsnakeError(
            f"{source}: found down blocks {levels[:6]}, expected downsample.down.res_down_0 .. N; "
            "pass a complete cellpose 3 model file"
        )
    nbase = [int(state["downsample.down.res_down_0.proj.1.weight"].shape[1])]
    nbase += [int(state[f"downsample.down.res_down_{n}.proj.1.weight"].shape[0]) for n in levels]
    conv = state.get("downsample.down.res_down_0.conv.conv_0.2.weight")
    if conv is None:
        raise CpsnakeError(
            f"{source}: found no 'downsample.down.res_down_0.conv.conv_0.2.weight', expected a "
            "cellpose 3 U-Net state dict; pass a complete cellpose 3 model file"
        )
    return {"nbase": nbase, "nout": int(state["output.2.weight"].shape[0]), "sz": int(conv.shape[-1])}


def from_state(state: Mapping[str, torch.Tensor], source: str) -> UNet:
    """A :class:`UNet` holding a cellpose 3 state dict (strict; sizes from the tensors). Eval mode, CPU."""
    kw = infer_architecture(state, source=source)
    expected = "a complete cellpose 3 U-Net state dict"
    with torch.device("meta"):  # shapes only: nothing is allocated for a file describing a huge network
        check_keys(UNet(**kw), state, source, expected=expected)
    net = UNet(**kw)
    net.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, strict=True)
    return net.eval()
