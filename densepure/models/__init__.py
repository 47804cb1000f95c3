"""Models: the diffusion UNet, presets of the official checkpoints, checkpoint I/O.

The names below are loaded on first use (PEP 562): the presets and the UNet's configuration need no
torch, so ``densepure presets`` lists them without importing it.
"""

from __future__ import annotations

from densepure.lazy import lazy_exports

# module -> the names it defines
_EXPORTS = {
    "checkpoint": ("load_into", "read_state_dict", "save_state_dict"),
    "presets": ("PRESETS", "DiffusionPreset", "build_unet", "get_preset", "register_preset", "resolve_checkpoint"),
    "unet": ("UNetModel",),
    "unet_config": ("UNetConfig",),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
