"""t*: the diffusion time whose noise level matches the smoothing noise (ALGORITHM §2-§3).

In the model's [-1,1] space the smoothing noise has standard deviation ``2 sigma``; a forward sample
at time t is ``sqrt(abar_t) x + sqrt(1-abar_t) eps``, i.e. noise ratio ``r_t = sqrt(1/abar_t - 1)``.
Scaling ``2(x+delta)-1`` by ``sqrt(a)``, ``a = 1/(1+4 sigma^2)``, makes it a forward sample at the
time whose ``abar = a``. The three rules differ in how that time is rounded onto the schedule.
"""

from __future__ import annotations

import enum
import math

import numpy as np

from densepure.diffusion.schedules import COSINE_OFFSET, NoiseSchedule, ScheduleKind
from densepure.errors import ConfigError
from densepure.validation import validate_sigma


class TStarRule(enum.Enum):
    """How t* is found.

    * ``CLOSED_FORM`` - DensePure's float t* for the continuous cosine schedule.
    * ``NEAREST`` - DensePure's nearest crossing on a discrete schedule (an int).
    * ``DDS`` - the official DDS code (Carlini et al.): first t >= 1 with ``r_t >= 2 sigma``.
    * ``AUTO`` - CLOSED_FORM for cosine, NEAREST otherwise (what DensePure does per checkpoint).
    """

    AUTO = "auto"
    CLOSED_FORM = "closed-form"
    NEAREST = "nearest"
    DDS = "dds"


def start_scale(sigma: float) -> float:
    """``a = 1/(1+4 sigma^2)``: the abar at which the scaled noisy image is a forward sample."""
    sigma = validate_sigma(sigma)
    return 1.0 / (1.0 + 4.0 * sigma * sigma)


def dds_noise_sigma(alpha_bar: float) -> float:
    """The noise level of a DDS start at ``alpha_bar``, in [0, 1] pixel units: ``sqrt(1/abar - 1) / 2``
    (``sqrt(abar)(2x - 1) + sqrt(1 - abar) z = sqrt(abar)(2(x + s z) - 1)`` with this ``s``). The ratio
    :func:`t_star_dds` compares with ``2 sigma``, halved, so it is ``>= sigma`` at ``t_dds``."""
    return float(np.sqrt(1.0 / float(alpha_bar) - 1.0)) / 2.0


def t_star_closed_form(sigma: float, num_timesteps: int, s: float = COSINE_OFFSET) -> float:
    """DensePure's closed form for the cosine schedule (a float):

    ``t* = T (1 - (2(1+s)/pi) asin( sin(pi/(2(1+s))) / sqrt(1+4 sigma^2) ))``.
    """
    sigma = validate_sigma(sigma)
    inner = math.sin(math.pi / (2.0 * (1.0 + s))) / math.sqrt(1.0 + 4.0 * sigma * sigma)
    return num_timesteps * (1.0 - (2.0 * (1.0 + s) / math.pi) * math.asin(inner))


def _noise_ratios(schedule: NoiseSchedule) -> np.ndarray:
    return np.sqrt(1.0 / schedule.alphas_cumprod - 1.0)


def t_star_nearest(sigma: float, schedule: NoiseSchedule) -> int:
    """DensePure's rule on a discrete schedule: the first t with ``r_t < 2 sigma <= r_{t+1}``, then the
    nearer of t and t+1 (t on a tie); ``T-1`` if the schedule never reaches ``2 sigma``."""
    target = 2.0 * validate_sigma(sigma)
    r = _noise_ratios(schedule)
    crossing = np.nonzero((r[:-1] < target) & (target <= r[1:]))[0]
    if crossing.size == 0:
        return schedule.num_timesteps - 1
    t = int(crossing[0])
    return t + 1 if target - r[t] > r[t + 1] - target else t


def t_star_dds(sigma: float, schedule: NoiseSchedule) -> int:
    """The official DDS rule: ``min{t >= 1 : sqrt((1-abar_t)/abar_t) >= 2 sigma}`` on the discrete table."""
    target = 2.0 * validate_sigma(sigma)
    r = _noise_ratios(schedule)
    hits = np.nonzero(r[1:] >= target)[0]
    if hits.size == 0:
        raise ConfigError(
            f"sigma={sigma} is beyond this schedule's largest noise level "
            f"(2*sigma={target:.4g} > max ratio {r[-1]:.4g}); use a smaller sigma"
        )
    return int(hits[0]) + 1


def t_star(sigma: float, schedule: NoiseSchedule, rule: TStarRule = TStarRule.AUTO) -> float:
    """t* for ``sigma`` on ``schedule`` by ``rule`` (float for CLOSED_FORM, an integral value otherwise)."""
    rule = TStarRule(rule)
    if rule is TStarRule.AUTO:
        rule = TStarRule.CLOSED_FORM if schedule.kind is ScheduleKind.COSINE else TStarRule.NEAREST
    if rule is TStarRule.CLOSED_FORM:
        if schedule.kind is not ScheduleKind.COSINE:
            raise ConfigError("the closed-form t* exists only for the cosine schedule; use 'nearest' or 'dds'")
        return t_star_closed_form(sigma, schedule.num_timesteps)
    if rule is TStarRule.NEAREST:
        return float(t_star_nearest(sigma, schedule))
    return float(t_star_dds(sigma, schedule))
