"""Pure diffusion math: schedules, t*, the coarse reverse grid and the reverse step.

This sub-package imports nothing else of densepure's except :mod:`densepure.errors`.

The names below are loaded on first use (PEP 562): the schedules, t* and the smoothing enums need only
numpy, so a light command (``densepure presets``) does not import torch, which only ``step`` needs.
"""

from __future__ import annotations

from densepure.lazy import lazy_exports

# module -> the names it defines
_EXPORTS = {
    "grid": ("ReverseGrid", "build_reverse_grid", "coarse_timesteps", "onestep_grid"),
    "schedules": ("NoiseSchedule", "ScheduleKind", "cosine_alpha_bar"),
    "smoothing": ("Mode", "NoiseKind", "SmoothingConfig", "StartKind"),
    "step": ("GridTables", "StepCoefficients", "dds_forward_sample", "model_time_tensor", "noisy_input", "predict_x0",
             "predict_x0_at", "reverse_step", "start_point", "step_mean_std"),
    "tstar": ("TStarRule", "dds_noise_sigma", "start_scale", "t_star", "validate_sigma"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
