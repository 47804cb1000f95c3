"""Noise schedules of the two checkpoint families, as float64 tables.

* linear (guided-diffusion, Ho et al. 2020): ``beta`` evenly spaced in
  ``[1e-4 * 1000/T, 0.02 * 1000/T]``.
* cosine (improved-diffusion, Nichol & Dhariwal 2021, eq. 17): the continuous
  ``abar(s) = cos^2((s/T + 0.008)/1.008 * pi/2)`` and its discretisation
  ``beta_t = min(1 - abar(t+1)/abar(t), 0.999)``.

Everything here is pure numpy float64; nothing calls a model.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from densepure.errors import ConfigError

COSINE_OFFSET = 0.008
MAX_BETA = 0.999


class ScheduleKind(enum.Enum):
    """Which family of beta schedule a checkpoint was trained with."""

    LINEAR = "linear"
    COSINE = "cosine"

    @classmethod
    def parse(cls, name: "str | ScheduleKind") -> "ScheduleKind":
        if isinstance(name, ScheduleKind):
            return name
        try:
            return cls(str(name).lower())
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            raise ConfigError(f"unknown noise schedule {name!r}; allowed: {allowed}") from None


def cosine_alpha_bar(t: "np.ndarray | float", num_timesteps: int, s: float = COSINE_OFFSET) -> np.ndarray:
    """Continuous cosine ``abar(t) = cos^2((t/T + s)/(1+s) * pi/2)``, *not* normalised by abar(0).

    ``t`` may be fractional (DensePure's closed-form t* is a float). Returns float64.
    """
    t = np.asarray(t, dtype=np.float64)
    return np.cos((t / num_timesteps + s) / (1.0 + s) * math.pi / 2.0) ** 2


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete diffusion schedule with ``num_timesteps`` steps.

    ``model_time_scale`` is the factor the checkpoint applies to timesteps before its embedding
    (``rescale_timesteps=True`` in the official code: 1000/T; a float, never rounded).
    """

    kind: ScheduleKind
    num_timesteps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ScheduleKind.parse(self.kind))
        if not isinstance(self.num_timesteps, (int, np.integer)) or self.num_timesteps < 2:
            raise ConfigError(f"num_timesteps must be an integer >= 2, got {self.num_timesteps!r}")
        if self.kind is ScheduleKind.LINEAR and 0.02 * 1000.0 / self.num_timesteps >= 1.0:
            raise ConfigError(f"the linear schedule needs num_timesteps >= 21 (beta_T = 20/T < 1), got {self.num_timesteps}")

    @cached_property
    def betas(self) -> np.ndarray:
        """``(T,)`` float64 betas."""
        T = int(self.num_timesteps)
        if self.kind is ScheduleKind.LINEAR:
            scale = 1000.0 / T
            return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
        t = np.arange(T, dtype=np.float64)
        ratio = cosine_alpha_bar(t + 1, T) / cosine_alpha_bar(t, T)
        return np.minimum(1.0 - ratio, MAX_BETA)

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """``(T,)`` float64 ``abar_t = prod_{i<=t} (1 - beta_i)`` (so ``abar[0] = 1 - beta_0``)."""
        return np.cumprod(1.0 - self.betas)

    @property
    def model_time_scale(self) -> float:
        return 1000.0 / float(self.num_timesteps)

    def alpha_bar(self, tau: "np.ndarray | float | int") -> np.ndarray:
        """``abar`` at (integer) timesteps ``tau`` as DensePure's coarse grid uses it (ALGORITHM §4).

        cosine: the continuous formula at ``tau``; linear: the discrete table ``alphas_cumprod[tau]``.
        """
        if self.kind is ScheduleKind.COSINE:
            return cosine_alpha_bar(tau, self.num_timesteps)
        idx = np.asarray(tau)
        if np.any(idx < 0) or np.any(idx >= self.num_timesteps):
            raise ConfigError(f"timestep outside [0, {self.num_timesteps - 1}]: {tau}")
        return self.alphas_cumprod[idx.astype(np.int64)]

    def model_time(self, tau: "np.ndarray | float | int") -> np.ndarray:
        """The timestep value the checkpoint expects: ``tau * 1000/T`` as float64 (cast to float32 at the seam)."""
        return np.asarray(tau, dtype=np.float64) * self.model_time_scale
