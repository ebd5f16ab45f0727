"""Small deterministic networks for the tests of tiling and inference, and the wrapper cellpose's forward expects."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TinyConv", "CellposeWrap"]


class TinyConv(torch.nn.Module):
    """Deterministic small network (B, C<=3, 256, 256) -> (B, 3, 256, 256).

    Not flip-equivariant and position-dependent (``pos``), so tile placement, flips and blending all
    show in its output. Like Cellpose-SAM's patch embedding it uses the first C input kernels for C < 3.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, 5, 5, generator=g) * 0.3)
        self.b1 = torch.nn.Parameter(torch.randn(8, generator=g) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(3, 8, 3, 3, generator=g) * 0.3)
        self.pos = torch.nn.Parameter(torch.randn(3, 256, 256, generator=g) * 0.1)

    def forward(self, x):
        h = torch.tanh(F.conv2d(x, self.w1[:, : x.shape[1]], self.b1, padding=2))
        return F.conv2d(h, self.w2, padding=1) + self.pos


class CellposeWrap(torch.nn.Module):
    """What cellpose.core._forward expects: .device, .dtype, and net(X) -> (y, style)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def forward(self, x):
        return self.net(x), torch.zeros((x.shape[0], 256))
