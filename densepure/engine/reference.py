"""The plain reference path: one chain at a time, no sharing, no early exit.

This is the slow, obviously-correct version of DensePure's purification (ALGORITHM §3-§5) that
every fast path is tested against. ``denoiser`` is anything with ``eps_and_var(x, t_model)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from densepure.diffusion import (
    GridTables,
    NoiseSchedule,
    ReverseGrid,
    model_time_tensor,
    predict_x0_at,
    reverse_step,
    start_point,
)


class Denoiser(Protocol):
    def eps_and_var(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@torch.no_grad()
def run_chain(
    denoiser: Denoiser,
    x: torch.Tensor,
    delta: torch.Tensor,
    sigma: float,
    grid: ReverseGrid,
    noises: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run one reverse chain per row of ``x`` from the start ``sqrt(a)(2(x+delta)-1)``.

    ``noises[i]`` is the standard-normal ``z`` of step i (``(B,C,H,W)``; the last may be None).
    Returns the purified ``x0`` in [-1, 1] and the per-step ``x0_hat`` list.
    """
    tables = GridTables(grid, x.device)
    y = start_point(x, delta, sigma)
    history = []
    for i in range(grid.num_steps):
        c = tables.gather(torch.full((x.shape[0],), i, dtype=torch.long, device=x.device))
        eps, v = denoiser.eps_and_var(y, c.model_time)
        y, x0 = reverse_step(y, eps, v, c, noises[i] if grid.has_noise[i] else None)
        history.append(x0)
    return y, history


@torch.no_grad()
def onestep_x0(denoiser: Denoiser, y: torch.Tensor, schedule: NoiseSchedule, tau: int) -> torch.Tensor:
    """One-step denoising: clipped ``x0_hat`` of ``y`` read as a forward sample at discrete ``tau``."""
    eps, _ = denoiser.eps_and_var(y, model_time_tensor(schedule, tau, y.shape[0], y.device))
    return predict_x0_at(y, eps, float(schedule.alphas_cumprod[int(tau)]))
