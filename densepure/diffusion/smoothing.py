"""The smoothing configuration: one frozen object from which the noise AND the certificate derive.

A randomized-smoothing certificate is valid only for the noise that was actually drawn: the radius
``sigma * Phi^-1(p_A)`` must use the very ``sigma`` of the smoothing noise. :class:`SmoothingConfig`
is the single place both come from: the engine draws its noise from ``config.sigma`` and its reverse
grid from ``config.grid()``, and certification computes radii from the engine's own
``engine.smoothing.sigma``, so a mismatch between the two cannot be expressed.

Base classifiers (ALGORITHM §2):

* ``GAUSSIAN`` (Cohen et al.): ``argmax C(x + delta)``, no diffusion model.
* ``ONESTEP`` (Carlini et al., DensePure's variant): the clipped ``x0_hat`` at ``round(t*)`` of the
  start ``sqrt(a)(2(x+delta)-1)``, with exact ``sigma``.
* ``ONESTEP_DDS`` (the official DDS code): noise drawn inside the forward process at ``t_dds``; its
  effective noise is >= sigma, so certificates computed with sigma stay valid (conservative).
* ``DENSEPURE``: K reverse chains of b >= 2 steps from the same start, majority-voted. b = 1 is
  refused: the reference implementation is undefined for it (its clipped posterior log-variance reads
  the second step's variance), and the one-step special case is ``ONESTEP``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from densepure.choices import Choice
from densepure.diffusion.grid import ReverseGrid, build_reverse_grid, onestep_grid
from densepure.diffusion.schedules import NoiseSchedule
from densepure.diffusion.tstar import TStarRule, t_star, t_star_dds, validate_sigma
from densepure.errors import ConfigError


class Mode(Choice, what="mode"):
    """The base classifier whose smoothed version is certified."""

    GAUSSIAN = "gaussian"
    ONESTEP = "onestep"
    ONESTEP_DDS = "onestep-dds"
    DENSEPURE = "densepure"


class StartKind(enum.Enum):
    """How a draw's first model input is made from the clean image ``x`` in [0, 1]."""

    DENSEPURE = "densepure"  # y = sqrt(a)(2(x + delta) - 1), delta = sigma * N(0, I)
    DDS = "dds"  # x_t = sqrt(abar)(2x - 1) + sqrt(1 - abar) eps (official DDS one-step)
    GAUSSIAN = "gaussian"  # no diffusion: the classifier sees 2(x + delta) - 1


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SmoothingConfig:
    """What the base classifier samples: mode, sigma, K chains of b steps, the t* rule and the schedule.

    ``num_chains`` (K) and ``steps`` (b) apply to DENSEPURE only (other modes take K = 1, b = 1); the
    schedule is required by every mode but GAUSSIAN. Validated on construction; derived values
    (:meth:`grid`, :attr:`start`) are pure functions of the fields.
    """

    mode: Mode
    sigma: float
    num_chains: int = 1
    steps: int = 2
    t_star_rule: TStarRule = TStarRule.AUTO
    schedule: NoiseSchedule | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        object.__setattr__(self, "sigma", validate_sigma(self.sigma))
        object.__setattr__(self, "t_star_rule", TStarRule(self.t_star_rule))
        object.__setattr__(self, "num_chains", _positive_int("num_chains (K)", self.num_chains))
        object.__setattr__(self, "steps", _positive_int("steps (b)", self.steps))
        if self.mode is not Mode.DENSEPURE and self.num_chains != 1:
            raise ConfigError(f"num_chains (K) applies to densepure only; got K={self.num_chains} with "
                              f"{self.mode.value}")
        if self.mode is Mode.DENSEPURE and self.steps < 2:
            raise ConfigError(f"densepure needs b >= 2 reverse steps, got b={self.steps}: the reference "
                              "implementation is undefined for b=1; for one denoising step use --mode onestep")
        if self.needs_denoiser and not isinstance(self.schedule, NoiseSchedule):
            raise ConfigError(f"mode {self.mode.value} needs the diffusion model's noise schedule, got "
                              f"{self.schedule!r}")
        if not self.needs_denoiser and self.schedule is not None:
            object.__setattr__(self, "schedule", None)  # gaussian smoothing reads no schedule

    @property
    def needs_denoiser(self) -> bool:
        return self.mode is not Mode.GAUSSIAN

    @property
    def chains(self) -> int:
        """Chains per draw: K for DENSEPURE, 1 otherwise."""
        return self.num_chains if self.mode is Mode.DENSEPURE else 1

    @property
    def start(self) -> StartKind:
        if self.mode is Mode.GAUSSIAN:
            return StartKind.GAUSSIAN
        return StartKind.DDS if self.mode is Mode.ONESTEP_DDS else StartKind.DENSEPURE

    def grid(self) -> ReverseGrid | None:
        """The reverse grid the denoiser runs (None for GAUSSIAN): one step at ``round(t*)`` (ONESTEP),
        at ``t_dds`` (ONESTEP_DDS), or DensePure's b-step coarse grid from ``t*``."""
        if self.mode is Mode.GAUSSIAN:
            return None
        if self.mode is Mode.ONESTEP_DDS:
            return onestep_grid(self.schedule, t_star_dds(self.sigma, self.schedule))
        ts = t_star(self.sigma, self.schedule, self.t_star_rule)
        if self.mode is Mode.ONESTEP:
            return onestep_grid(self.schedule, round(ts))
        return build_reverse_grid(self.schedule, ts, self.steps)
