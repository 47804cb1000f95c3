"""Models: the diffusion UNet, presets of the official checkpoints, checkpoint I/O.

The names below are loaded on first use (PEP 562): the presets and the UNet's configuration need no
torch, so ``densepure presets`` lists them without importing it.
"""

from __future__ import annotations

import importlib

# module -> the names it defines
_EXPORTS = {
    "checkpoint": ("load_into", "read_state_dict", "save_state_dict"),
    "presets": ("PRESETS", "DiffusionPreset", "build_unet", "get_preset", "register_preset", "resolve_checkpoint"),
    "unet": ("UNetModel",),
    "unet_config": ("UNetConfig",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Load an exported name from its module on first use (then it is a plain attribute)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
