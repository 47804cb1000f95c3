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

Noise (:class:`NoiseKind`): ``FLOAT`` draws ``delta = sigma z`` as float32 normals, certified for the
ideal real-number program; ``SOUND`` takes images on the grid ``k / levels`` and draws integer grid
steps from the discretized Gaussian (:mod:`densepure.noise.sound`), so that the certificate is a proof
about the float program that runs (docs/guarantees.md). Every mode has a sound form: the start (or
Gaussian smoothing's classifier input) is made from the grid value ``(x_int + j) / levels``. For
``ONESTEP_DDS`` the steps are drawn at the DDS start's own noise level
(:func:`~densepure.diffusion.tstar.dds_noise_sigma`, >= sigma), the forward noise of its float form
moved onto the grid; the certificate computed with sigma stays conservative, as in float mode.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from densepure.choices import Choice
from densepure.diffusion.grid import ReverseGrid, build_reverse_grid, onestep_grid
from densepure.diffusion.schedules import NoiseSchedule
from densepure.diffusion.tstar import TStarRule, dds_noise_sigma, t_star, t_star_dds, validate_sigma
from densepure.errors import ConfigError


class Mode(Choice, what="mode"):
    """The base classifier whose smoothed version is certified."""

    GAUSSIAN = "gaussian"
    ONESTEP = "onestep"
    ONESTEP_DDS = "onestep-dds"
    DENSEPURE = "densepure"


class NoiseKind(Choice, what="noise"):
    """The smoothing noise: exact integer grid steps of a quantized image (sound) or float32 normals."""

    SOUND = "sound"
    FLOAT = "float"


MAX_LEVELS = 1 << 16  # grids up to 16-bit images; the steps stay far above float32's spacing near 1


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
    schedule is required by every mode but GAUSSIAN. ``noise`` SOUND needs ``levels``, the grid
    ``k / levels`` the images lie on (FLOAT noise reads no grid: its ``levels`` is None). Validated on
    construction; derived values (:meth:`grid`, :attr:`start`, :meth:`noise_sigma`) are pure
    functions of the fields.
    """

    mode: Mode
    sigma: float
    num_chains: int = 1
    steps: int = 2
    t_star_rule: TStarRule = TStarRule.AUTO
    schedule: NoiseSchedule | None = None
    noise: NoiseKind = NoiseKind.FLOAT
    levels: int | None = None

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
        object.__setattr__(self, "noise", NoiseKind.parse(self.noise))
        if self.noise is NoiseKind.FLOAT:
            object.__setattr__(self, "levels", None)
        elif isinstance(self.levels, bool) or not isinstance(self.levels, (int, np.integer)) \
                or not 1 <= self.levels <= MAX_LEVELS:
            raise ConfigError(f"sound noise needs the grid of the images, levels (values k / levels) an integer in "
                              f"[1, {MAX_LEVELS}], got {self.levels!r}")
        else:
            object.__setattr__(self, "levels", int(self.levels))

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

    @property
    def sound(self) -> bool:
        return self.noise is NoiseKind.SOUND

    def noise_sigma(self) -> float:
        """The standard deviation, in [0, 1] pixel units, of the noise the start carries: ``sigma``, or
        for ONESTEP_DDS its start's own level (:func:`~densepure.diffusion.tstar.dds_noise_sigma`)."""
        if self.mode is not Mode.ONESTEP_DDS:
            return self.sigma
        level = dds_noise_sigma(float(self.grid().alphas_cumprod[0]))
        if level < self.sigma:  # t_dds is the first step whose ratio reaches 2 sigma: never
            raise ConfigError(f"the DDS start's noise level {level!r} is below sigma={self.sigma!r}")
        return level

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
