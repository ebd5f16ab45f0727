"""The network families: Cellpose-SAM (:mod:`.cpsam`) and the classic Cellpose U-Net (:mod:`.unet`).

:func:`load_model` loads a file of either family (recognised from its keys, :mod:`.registry`);
:mod:`.state` reads, checks and writes the files.
"""

from cpsnake.models.cpsam import ARCHITECTURES, CPSAMNet, build_cpsam, build_encoder, from_sam_checkpoint, set_attention
from cpsnake.models.registry import FAMILIES, family_of, family_of_net, load_model
from cpsnake.models.state import load_state_dict_file, save_model, save_tensors
from cpsnake.models.unet import UNet, build_unet

__all__ = [
    "ARCHITECTURES",
    "CPSAMNet",
    "FAMILIES",
    "UNet",
    "build_cpsam",
    "build_encoder",
    "build_unet",
    "family_of",
    "family_of_net",
    "from_sam_checkpoint",
    "load_model",
    "load_state_dict_file",
    "save_model",
    "save_tensors",
    "set_attention",
]
