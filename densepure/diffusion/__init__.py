"""Pure diffusion math: schedules, t*, the coarse reverse grid and the reverse step.

This sub-package imports nothing else of densepure's except :mod:`densepure.errors`.
"""

from densepure.diffusion.grid import ReverseGrid, build_reverse_grid, coarse_timesteps, onestep_grid
from densepure.diffusion.schedules import NoiseSchedule, ScheduleKind, cosine_alpha_bar
from densepure.diffusion.smoothing import Mode, NoiseKind, SmoothingConfig, StartKind
from densepure.diffusion.step import (
    GridTables,
    StepCoefficients,
    dds_forward_sample,
    model_time_tensor,
    noisy_input,
    predict_x0,
    predict_x0_at,
    reverse_step,
    start_point,
    step_mean_std,
)
from densepure.diffusion.tstar import TStarRule, dds_noise_sigma, start_scale, t_star, validate_sigma

__all__ = [
    "GridTables",
    "Mode",
    "NoiseKind",
    "NoiseSchedule",
    "ReverseGrid",
    "ScheduleKind",
    "SmoothingConfig",
    "StartKind",
    "StepCoefficients",
    "TStarRule",
    "build_reverse_grid",
    "coarse_timesteps",
    "onestep_grid",
    "cosine_alpha_bar",
    "dds_noise_sigma",
    "dds_forward_sample",
    "model_time_tensor",
    "noisy_input",
    "predict_x0",
    "predict_x0_at",
    "reverse_step",
    "start_point",
    "start_scale",
    "step_mean_std",
    "t_star",
    "validate_sigma",
]
