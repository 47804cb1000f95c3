"""Pure diffusion math: schedules, t*, the coarse reverse grid and the reverse step.

This sub-package imports nothing else of densepure's except :mod:`densepure.errors`.

The names below are loaded on first use (PEP 562): the schedules, t* and the smoothing enums need only
numpy, so a light command (``densepure presets``) does not import torch, which only ``step`` needs.
"""

from __future__ import annotations

import importlib

# module -> the names it defines
_EXPORTS = {
    "grid": ("ReverseGrid", "build_reverse_grid", "coarse_timesteps", "onestep_grid"),
    "schedules": ("NoiseSchedule", "ScheduleKind", "cosine_alpha_bar"),
    "smoothing": ("Mode", "SmoothingConfig", "StartKind"),
    "step": ("GridTables", "StepCoefficients", "dds_forward_sample", "model_time_tensor", "noisy_input", "predict_x0",
             "predict_x0_at", "reverse_step", "start_point", "step_mean_std"),
    "tstar": ("TStarRule", "start_scale", "t_star", "validate_sigma"),
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
