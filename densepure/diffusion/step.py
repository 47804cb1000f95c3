"""The reverse step (ALGORITHM §5) and the start points, as pure tensor functions.

Nothing here calls a model: the caller passes the model's outputs ``eps`` and ``v`` (the learned
variance interpolation, in [-1, 1]) together with per-row coefficients, so that one batch can hold
rows of different chains at different steps. Shapes: ``y, eps, v, z`` are ``(B, C, H, W)``; every
coefficient is ``(B,)`` and broadcast over the other dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from densepure.diffusion.grid import ReverseGrid
from densepure.diffusion.schedules import NoiseSchedule
from densepure.diffusion.tstar import start_scale


@dataclass(frozen=True)
class StepCoefficients:
    """Per-row coefficients of one reverse step; every field is a ``(B,)`` tensor."""

    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    coef1: torch.Tensor
    coef2: torch.Tensor
    log_beta: torch.Tensor
    logvar_clipped: torch.Tensor
    noise_mask: torch.Tensor
    model_time: torch.Tensor


class GridTables:
    """A :class:`ReverseGrid` moved once to a device, gathered per row by step index."""

    def __init__(self, grid: ReverseGrid, device: torch.device, dtype: torch.dtype = torch.float32):
        def put(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(device=device, dtype=dtype)

        self.grid = grid
        self.device = torch.device(device)
        self._tables = {
            "sqrt_recip_alphas_cumprod": put(grid.sqrt_recip_alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": put(grid.sqrt_recipm1_alphas_cumprod),
            "coef1": put(grid.coef1),
            "coef2": put(grid.coef2),
            "log_beta": put(grid.log_betas),
            "logvar_clipped": put(grid.logvar_clipped),
            "noise_mask": put(grid.has_noise.astype(np.float64)),
            # the timestep input is always float32, whatever the compute dtype
            "model_time": torch.as_tensor(grid.model_times, dtype=torch.float32).to(device),
        }

    def gather(self, step: torch.Tensor) -> StepCoefficients:
        """Coefficients for rows whose reverse-step index is ``step`` (``(B,)`` int64 on the device)."""
        return StepCoefficients(**{name: table[step] for name, table in self._tables.items()})


def _rows(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def predict_x0(y: torch.Tensor, eps: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """``clip(sqrt(1/abar') y - sqrt(1/abar' - 1) eps, -1, 1)``."""
    x0 = _rows(c.sqrt_recip_alphas_cumprod, y) * y - _rows(c.sqrt_recipm1_alphas_cumprod, y) * eps
    return x0.clamp(-1.0, 1.0)


def step_mean_std(
    y: torch.Tensor, eps: torch.Tensor, v: torch.Tensor, c: StepCoefficients
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The deterministic parts of a reverse step: ``(mean, std, x0_hat)`` with
    ``y_next = mean + std * z``.

    ``logvar = frac log beta' + (1-frac) logvar_clipped`` with ``frac = (v+1)/2`` (Nichol & Dhariwal
    2021, eq. 15); ``std = noise_mask * exp(logvar/2)``, so rows of the last step have ``std = 0``
    and ``mean = x0_hat`` exactly (coef1 = 1, coef2 = 0). All arithmetic is in ``y.dtype``.
    """
    x0 = predict_x0(y, eps, c)
    mean = _rows(c.coef1, y) * x0 + _rows(c.coef2, y) * y
    frac = (v.to(y.dtype) + 1.0) / 2.0
    logvar = frac * _rows(c.log_beta, y) + (1.0 - frac) * _rows(c.logvar_clipped, y)
    return mean, _rows(c.noise_mask, y) * torch.exp(0.5 * logvar), x0


def reverse_step(
    y: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
    c: StepCoefficients,
    z: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step ``y -> mean + [k>0] exp(logvar/2) z``; returns ``(y_next, x0_hat)``.

    Rows whose ``noise_mask`` is 0 (the last step) return ``x0_hat`` exactly; ``z`` may then be None.
    """
    mean, std, x0 = step_mean_std(y, eps, v, c)
    if z is None:
        if bool(torch.any(c.noise_mask != 0)):
            raise ValueError("z is required when any row takes a noisy step")
        return mean, x0
    return mean + std * z.to(y.dtype), x0


def predict_x0_at(y: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """``x0_hat`` for rows that all share one ``alpha_bar`` (one-step denoising)."""
    return (y * alpha_bar ** -0.5 - eps * (1.0 / alpha_bar - 1.0) ** 0.5).clamp(-1.0, 1.0)


def noisy_input(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The noisy image in the models' [-1, 1] space, ``2(x + delta) - 1`` (Gaussian smoothing's
    classifier input). ``x`` in [0,1] and ``delta ~ N(0, sigma^2)`` (already scaled), ``(B,C,H,W)``."""
    return 2.0 * (x + delta) - 1.0


def start_point(x: torch.Tensor, delta: torch.Tensor, sigma: float) -> torch.Tensor:
    """DensePure's start ``y = sqrt(a) (2(x + delta) - 1)`` with ``a = 1/(1+4 sigma^2)``.

    ``x`` in [0,1] and ``delta ~ N(0, sigma^2)`` (already scaled by sigma), both ``(B,C,H,W)``.
    """
    return math.sqrt(start_scale(sigma)) * noisy_input(x, delta)


def dds_forward_sample(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Official DDS start: ``sqrt(abar_t)(2x-1) + sqrt(1-abar_t) eps`` with ``eps ~ N(0, I)``."""
    return math.sqrt(alpha_bar) * (2.0 * x - 1.0) + math.sqrt(1.0 - alpha_bar) * eps


def model_time_tensor(schedule: NoiseSchedule, tau: float, batch: int, device: torch.device) -> torch.Tensor:
    """``(batch,)`` float32 timestep input ``tau * 1000/T`` (never int, never fp16)."""
    value = float(schedule.model_time(tau))
    return torch.full((batch,), value, dtype=torch.float32, device=device)
