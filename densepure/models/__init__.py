"""Models: the diffusion UNet, presets of the official checkpoints, checkpoint I/O."""

from densepure.models.checkpoint import load_into, read_state_dict, save_state_dict
from densepure.models.presets import (
    PRESETS,
    DiffusionPreset,
    build_unet,
    get_preset,
    register_preset,
    resolve_checkpoint,
)
from densepure.models.unet import UNetModel
from densepure.models.unet_config import UNetConfig

__all__ = [
    "PRESETS",
    "DiffusionPreset",
    "UNetConfig",
    "UNetModel",
    "build_unet",
    "get_preset",
    "load_into",
    "read_state_dict",
    "register_preset",
    "resolve_checkpoint",
    "save_state_dict",
]
