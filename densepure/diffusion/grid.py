"""DensePure's coarse b-step reverse grid ("fast sampling", ALGORITHM §4), as float64 tables.

With ``t*`` from :mod:`densepure.diffusion.tstar`, the b timesteps are
``tau_i = round(t* - i t*/b)`` (Python rounding, halves to even), descending. On the ascending grid
``g = [0, tau_{b-1}, ..., tau_0]`` coarse index ``k`` stands for ``g[k+1]`` and

* ``beta'_k = min(1 - abar(g[k+1]) / abar(g[k]), 0.999)``, ``abar'_k = prod_{i<=k} (1 - beta'_i)``,
* posterior variance ``beta'_k (1 - abar'_{k-1}) / (1 - abar'_k)``, clipped at k=0 to the k=1 value,
* mean coefficients ``coef1_k``, ``coef2_k`` (Ho et al. 2020, eq. 7).

Reverse step ``i = 0..b-1`` uses coarse index ``k = b-1-i`` and feeds the model the *original*
timestep ``tau_i`` rescaled to the checkpoint's convention. The tables are stored indexed by the
reverse step ``i`` so the engine can gather them per row with one index tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from densepure.diffusion.schedules import MAX_BETA, NoiseSchedule
from densepure.errors import ConfigError


def coarse_timesteps(t_star: float, b: int) -> np.ndarray:
    """``(b,)`` int64 descending timesteps ``round(t* - i t*/b)``, i = 0..b-1."""
    b = validate_steps(b)
    return np.array([round(t_star - i * t_star / b) for i in range(b)], dtype=np.int64)


def validate_steps(b: int) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
        raise ConfigError(f"b (reverse steps) must be an integer >= 1, got {b!r}")
    if b < 1:
        raise ConfigError(f"b (reverse steps) must be >= 1, got {b}")
    return int(b)


@dataclass(frozen=True, eq=False)
class ReverseGrid:
    """Per-reverse-step float64 tables; every array has shape ``(b,)`` and index ``i`` = step i.

    ``has_noise[i]`` is False only for the last step (k = 0), whose output is ``x0_hat`` exactly.
    """

    taus: np.ndarray
    model_times: np.ndarray
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    coef1: np.ndarray
    coef2: np.ndarray
    log_betas: np.ndarray
    logvar_clipped: np.ndarray
    has_noise: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.taus.shape[0])


def build_reverse_grid(schedule: NoiseSchedule, t_star: float, b: int) -> ReverseGrid:
    """The coarse grid for ``b`` reverse steps from ``t_star`` on ``schedule``.

    Raises ConfigError if ``b > t*`` (timesteps would collide or reach 0) or t* is off the schedule.
    """
    b = validate_steps(b)
    if not np.isfinite(t_star) or t_star <= 0 or t_star > schedule.num_timesteps - 1 + 0.5:
        raise ConfigError(f"t* must be in (0, {schedule.num_timesteps - 1}], got {t_star}")
    taus = coarse_timesteps(t_star, b)
    ascending = np.concatenate([[0], taus[::-1]])
    if np.any(np.diff(ascending) <= 0):
        raise ConfigError(f"b={b} reverse steps do not fit below t*={t_star:.4g}: choose b <= {int(t_star)}")
    abar = schedule.alpha_bar(ascending)
    betas_k = np.minimum(1.0 - abar[1:] / abar[:-1], MAX_BETA)
    abar_k = np.cumprod(1.0 - betas_k)
    abar_prev_k = np.concatenate([[1.0], abar_k[:-1]])
    var_k = betas_k * (1.0 - abar_prev_k) / (1.0 - abar_k)
    # index 0 takes var_1 (guided-diffusion's "clipped" log-variance); with b=1 step k=0 adds no
    # noise, so its variance is never used and log(beta'_0) stands in.
    clipped = np.concatenate([[var_k[1]], var_k[1:]]) if b >= 2 else betas_k.copy()
    coef1 = betas_k * np.sqrt(abar_prev_k) / (1.0 - abar_k)
    coef2 = (1.0 - abar_prev_k) * np.sqrt(1.0 - betas_k) / (1.0 - abar_k)
    by_step = np.arange(b - 1, -1, -1)  # step i -> coarse index k = b-1-i
    return ReverseGrid(
        taus=taus,
        model_times=schedule.model_time(taus),
        betas=betas_k[by_step],
        alphas_cumprod=abar_k[by_step],
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar_k)[by_step],
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar_k - 1.0)[by_step],
        coef1=coef1[by_step],
        coef2=coef2[by_step],
        log_betas=np.log(betas_k)[by_step],
        logvar_clipped=np.log(clipped)[by_step],
        has_noise=(by_step > 0),
    )


def onestep_grid(schedule: NoiseSchedule, tau: int) -> ReverseGrid:
    """A one-step "grid" for one-step denoising at discrete timestep ``tau``: ``x0_hat`` with the
    schedule's own ``alphas_cumprod[tau]`` (DensePure's re-implementation of DDS and the official
    DDS code both read the discrete table), no noise, ``coef1 = 1``, ``coef2 = 0``."""
    tau = int(tau)
    if not 1 <= tau < schedule.num_timesteps:
        raise ConfigError(f"one-step timestep must be in [1, {schedule.num_timesteps - 1}], got {tau}")
    abar = float(schedule.alphas_cumprod[tau])
    one = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    return ReverseGrid(
        taus=np.array([tau], dtype=np.int64), model_times=schedule.model_time(np.array([tau])),
        betas=one(schedule.betas[tau]), alphas_cumprod=one(abar),
        sqrt_recip_alphas_cumprod=one(abar ** -0.5), sqrt_recipm1_alphas_cumprod=one((1.0 / abar - 1.0) ** 0.5),
        coef1=one(1.0), coef2=one(0.0), log_betas=one(np.log(schedule.betas[tau])),
        logvar_clipped=one(np.log(schedule.betas[tau])), has_noise=np.array([False]),
    )
