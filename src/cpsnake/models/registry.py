"""Model families side by side: which family a file is, and one loader for all.

=========  ==============================  ==========================================  ==============
family     module                          recognised by                               tiles
=========  ==============================  ==========================================  ==============
cpsam      :mod:`cpsnake.models.cpsam`     ``W2`` and ``encoder.*`` (cellpose 4)       256 px
unet       :mod:`cpsnake.models.unet`      ``downsample.down.res_down_0.*``, ``output.*``  224 px
           (cellpose 1-3 residual U-Net)   (cellpose 1-3, GUI-trained models included)
=========  ==============================  ==========================================  ==============

:func:`load_model` reads a file (weights-only, checked, see :mod:`cpsnake.models.state`), tells its
family from its keys and builds the network strictly; no flag is needed. A file of neither family is
one error naming the keys found.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from cpsnake.errors import CpsnakeError

__all__ = ["FAMILIES", "family_of", "load_model", "family_of_net"]

FAMILIES = ("cpsam", "unet")


def family_of(state: Mapping[str, object], source: str = "state dict") -> str:
    """``"cpsam"`` or ``"unet"`` from a state dict's keys; a CpsnakeError for anything else."""
    from cpsnake.models.unet import is_unet_state

    if "W2" in state or any(str(k).startswith("encoder.") for k in state):
        return "cpsam"  # an incomplete one is refused by cpsam.from_state, naming what is missing
    if is_unet_state(state):
        return "unet"
    some = ", ".join(list(map(str, state))[:4]) or "no keys"
    raise CpsnakeError(
        f"{source}: found keys {some} ..., expected a Cellpose-SAM model (cellpose 4: W2, encoder.*) or a "
        "cellpose 1-3 U-Net (downsample.down.*, output.*); pass a model file saved by cellpose or cpsnake "
        "(a segment-anything checkpoint is converted by `cpsnake train --sam`)"
    )


def family_of_net(net: torch.nn.Module) -> str:
    """The family of a built network."""
    from cpsnake.models.cpsam import CPSAMNet
    from cpsnake.models.unet import UNet

    if isinstance(net, CPSAMNet):
        return "cpsam"
    if isinstance(net, UNet):
        return "unet"
    raise CpsnakeError(f"a {type(net).__name__} is no model family of cpsnake; expected a CPSAMNet or a UNet")


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network stored in a model file, in eval mode on ``device`` (family from the keys, strict, weights-only).

    A registry name is resolved first by the caller: ``load_model(weights.resolve(name))``.
    """
    from cpsnake.models import cpsam, unet
    from cpsnake.models.state import load_state_dict_file

    state = load_state_dict_file(path)
    family = family_of(state, str(path))
    net = cpsam.from_state(state, str(path)) if family == "cpsam" else unet.from_state(state, str(path))
    return net.to(device).eval()
