"""Sequential certification of a radius r with count boundaries at fixed looks (issue 19).

Setting (ALGORITHM.md Sec. 7): the class c_hat is selected from n0 draws; the estimation draws are,
given c_hat, i.i.d. hits of c_hat with probability p = P(f(x + delta) = c_hat), independent of the
selection. Certifying r is correct when p >= t = Phi(r / sigma) (Cohen et al. 2019, Theorem 1), so
a wrong certification needs p < t. A :class:`BoundaryPlan` fixes, before any draw, looks
``n_1 < ... < n_m = n_max`` and integers ``certify_at``, ``futile_at``; with S hits among the first
n_i draws, look i answers CERTIFIED if ``S >= certify_at[i]``, else NOT_CERTIFIED if
``S <= futile_at[i]`` or i = m, else CONTINUE.

Guarantee: for every p < t, ``P(CERTIFIED) <= alpha``, at whichever look the test stops and
whatever made it stop there (the bound covers the event "some look certifies", so any stopping rule
that only stops at looks is covered: optional stopping over the looks).

* Selection. c_hat comes from n0 draws independent of the estimation draws, so given c_hat the
  estimation draws are i.i.d. Bernoulli(p_{c_hat}); the bound holds given every c_hat, hence
  overall. A wrong c_hat has p_{c_hat} < 1/2 <= t and falls under the same bound.
* Monotonicity. Couple the draws as ``X_j = [U_j < p]`` with U_j uniform: the event "some look has
  ``S_{n_i} >= certify_at[i]``" only grows with p, so its probability is largest at p = t.
* Futility spends no alpha. Stopping NOT_CERTIFIED is never an error and only removes later chances
  to certify, so ``P(CERTIFIED) <= P_t(S_{n_i} >= certify_at[i] for some i)`` (futility ignored).
* That probability is computed exactly (:func:`densepure.stats.binomial_dp.crossing_bound`, an
  upper bound with every dropped bit of mass counted as crossing) and checked ``<= alpha`` when the
  plan is built, for every plan, whatever produced its boundaries.
* Looks and batches. Decisions use only the counts at the planned looks, in order. The engine
  (:class:`densepure.engine.policy.SequentialPolicy`) issues estimation draws only up to the next
  look and evaluates a look once the labels of draws ``0..n_i-1`` are all in, and draw j's noise
  depends on (seed, image, phase, j) only, so neither batch sizes nor the order in which a batch's
  labels arrive can change a decision. Skipping looks is safe (it removes chances to certify).
  Deciding at a count that is not a planned look is not covered by the exact computation; the
  BETTING method's boundaries are (Ville's inequality holds at every n).

Two ways to fill the boundaries:

* :meth:`BoundaryPlan.exact` (the default): alpha spending with exact probabilities (Lan & DeMets,
  Biometrika 1983; exact binomial computation as in Jennison & Turnbull 2000, Ch. 12). The level
  spent by look i is ``alpha * F(n_i)`` with F growing uniformly in ``log n`` from ``n_c / 2``
  (n_c = ln(alpha) / ln(t): the fewest draws at which n_c hits of n_c could certify r) to n_max,
  raised to the power 1/2 (``spending_power``) so that small n, where points with a large margin
  decide, get a larger share. Each boundary takes all the level the earlier looks left unused, so
  nothing is lost to the correlation between looks (a union bound loses it) nor to the overshoot of
  a betting wealth (Ville's inequality loses it). Futility boundaries mirror it at level
  ``futility_alpha`` (= alpha), which bounds the chance that a certifiable point (p >= t) is stopped
  early; they also stop as soon as certification has become impossible.
* :meth:`BoundaryPlan.betting`: the look where the betting wealth of :mod:`densepure.stats.confseq`
  (uniform mixture of constant bets, Waudby-Smith & Ramdas 2024) first reaches 1/alpha. A constant
  bet keeps the wealth a function of the counts (``(1 + lambda (1 - t))^hits (1 - lambda t)^misses``),
  so the engine's counts suffice, and Ville's inequality makes it valid at every n; the exact check
  still runs.

Tuning, fixed before the benchmark ran: :func:`default_looks` (every 4 draws up to 64, then 10 %
growth: 93 looks at n_max = 100,000, less those where no count can stop), ``spending_power = 0.5``, spending from ``n_c / 2``,
``futility_alpha = alpha``, ``final_share = 0``. They were chosen among a handful of candidates
(power 0.5-1, start n_c/4-n_c, early spacing 1-16, growth 2-40 %) from *exact* expected draws
(:func:`densepure.stats.binomial_dp.operating_characteristics`) at p in [0.8, 0.9999], r in
{sigma, 2 sigma}, never from the benchmark's random draws. Denser looks barely change the draw
counts (the exact boundaries give sparser looks a larger share of alpha) but cost the engine
parallelism: it cannot issue draws beyond the next look. What the default gives up: points just
above t at the horizon (e.g. p = t + 0.009, n_max = 10,000) are certified less often than by
CERTIFY at n_max or the geometric plan, which keep alpha or alpha / 2 for the last look;
``final_share`` buys that back for a few % more draws everywhere else.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from densepure.errors import ConfigError
from densepure.stats import binomial_dp
from densepure.stats.cohen import (
    _is_int,
    _is_real,
    validate_alpha,
    validate_sample_count,
    validate_sigma,
)
from densepure.stats.confseq import betting_lower_bound, betting_upper_bound, certify_counts, futile_counts
from densepure.stats.sequential import (
    LookPlan,
    LookTest,
    SequentialDecision,
    SequentialMethod,
    SequentialPlan,
    _validate_radius,
)

DEFAULT_METHOD = SequentialMethod.EXACT


def default_looks(n_max: int, step: int = 4, dense_until: int = 64, growth: float = 1.1) -> tuple[int, ...]:
    """Looks every ``step`` draws up to ``dense_until``, then each ``growth`` times the previous (rounded,
    at least ``step`` further), ending exactly at ``n_max``; a last look closer than half a growth
    step to n_max is dropped. n_max = 10,000: 69 looks; 100,000: 93."""
    n_max = validate_sample_count("n_max", n_max)
    step = validate_sample_count("step", step)
    if not _is_real(growth) or not math.isfinite(growth) or growth <= 1.0:
        raise ConfigError(f"growth must be a finite number > 1, got {growth!r}")
    looks = list(range(step, min(dense_until, n_max - 1) + 1, step))
    n = looks[-1] if looks else 0
    while True:
        n = max(n + step, round(n * growth))
        if n >= n_max:
            break
        looks.append(n)
    if looks and looks[-1] > dense_until and n_max < looks[-1] * (1.0 + (growth - 1.0) / 2):
        looks.pop()
    return tuple(looks) + (n_max,)


@dataclass(frozen=True)
class BoundaryPlan(LookPlan):
    """Looks and count boundaries, fixed before sampling, for certifying radius ``radius``.

    radius >= 0, sigma > 0, alpha in (0, 0.5). looks: strictly increasing draw counts >= 1 (last =
    n_max). certify_at[i] in [0, n_i + 1] (n_i + 1: look i cannot certify); futile_at[i] in
    [-1, certify_at[i] - 1] (-1: look i cannot stop for futility). method: how they were built.
    ConfigError unless the exact certification probability at p = Phi(radius / sigma) is <= alpha
    (module docstring) and some look can certify.
    """

    radius: float
    sigma: float
    alpha: float
    looks: tuple[int, ...]
    certify_at: tuple[int, ...]
    futile_at: tuple[int, ...]
    method: SequentialMethod = SequentialMethod.EXACT

    def __post_init__(self) -> None:
        self._check_looks("draw")
        if self.method not in (SequentialMethod.EXACT, SequentialMethod.BETTING):
            raise ConfigError(f"method must be SequentialMethod.EXACT or BETTING, got {self.method!r}")
        for name in ("certify_at", "futile_at"):
            values = tuple(getattr(self, name))
            if len(values) != len(self.looks) or not all(_is_int(v) for v in values):
                raise ConfigError(f"{name} must hold one integer per look ({len(self.looks)}), got {values}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        for n, c, f in zip(self.looks, self.certify_at, self.futile_at, strict=True):
            if not (0 <= c <= n + 1 and -1 <= f < c):
                raise ConfigError(f"at look {n} need 0 <= certify_at <= {n + 1} and -1 <= futile_at < certify_at, "
                                  f"got certify_at={c}, futile_at={f}")
        if all(c > n for n, c in zip(self.looks, self.certify_at, strict=True)):
            raise ConfigError(f"radius {self.radius} cannot be certified by this plan: no look can certify it "
                              f"(sigma={self.sigma}, alpha={self.alpha}, n_max={self.looks[-1]}); "
                              f"raise n_max or lower the radius")
        error = binomial_dp.crossing_bound(self.looks, self.certify_at, self.target)
        if error > self.alpha:
            raise ConfigError(f"these boundaries certify with probability {error:.6g} at p = Phi(r/sigma) = "
                              f"{self.target:.6g}, more than alpha = {self.alpha}")

    def start(self, label: int) -> BoundaryTest:
        """A fresh state machine for one input whose selected class is ``label``."""
        return BoundaryTest(self, label)

    def operating_characteristics(self, p: float) -> binomial_dp.OperatingCharacteristics:
        """Exact P(certified), P(not certified) and expected draws when the hit rate is ``p``."""
        return binomial_dp.operating_characteristics(self.looks, self.certify_at, self.futile_at, p)

    @classmethod
    def exact(cls, radius: float, sigma: float, alpha: float, n_max: int = 10_000, *,
              futility_alpha: float | None = None, looks: tuple[int, ...] | None = None,
              spending_power: float = 0.5, final_share: float = 0.0) -> BoundaryPlan:
        """Alpha-spending boundaries with exact binomial probabilities (module docstring).

        futility_alpha (default alpha): the most probability with which a point at p = t is stopped
        for futility (so any certifiable point, p >= t); it is not part of the validity guarantee.
        looks: default :func:`default_looks` (n_max). final_share in [0, 1): part of alpha kept for
        the last look, as CERTIFY at n_max would use it: more power for points just above t, more
        draws for all others (0.15 costs ~2-4 %). Cached: equal arguments return the same plan.
        """
        if not _is_real(final_share) or not (0.0 <= final_share < 1.0):
            raise ConfigError(f"final_share must be in [0, 1), got {final_share!r}")
        common = _common_args(radius, sigma, alpha, n_max, futility_alpha, looks)
        return _exact_plan(*common, _power(spending_power), float(final_share))

    @classmethod
    def betting(cls, radius: float, sigma: float, alpha: float, n_max: int = 10_000, *,
                futility_alpha: float | None = None, looks: tuple[int, ...] | None = None) -> BoundaryPlan:
        """Certify at the first look where the betting wealth for "p > t" reaches 1/alpha; stop for
        futility where the wealth for "p < t" reaches 1/futility_alpha (:mod:`densepure.stats.confseq`).
        Valid by Ville's inequality at every n, looks or not. Cached like :meth:`exact`."""
        return _betting_plan(*_common_args(radius, sigma, alpha, n_max, futility_alpha, looks))


def _common_args(radius, sigma, alpha, n_max, futility_alpha, looks):
    radius, sigma, alpha = _validate_radius(radius), validate_sigma(sigma), validate_alpha(alpha)
    n_max = validate_sample_count("n_max", n_max)
    beta = alpha if futility_alpha is None else futility_alpha
    if not _is_real(beta) or not (0.0 < beta < 0.5):
        raise ConfigError(f"futility_alpha must be in (0, 0.5), got {futility_alpha!r}")
    looks = default_looks(n_max) if looks is None else _validated_looks(looks, n_max)
    if float(special.ndtr(radius / sigma)) >= 1.0:
        raise ConfigError(f"radius {radius} is beyond what any number of draws can certify at sigma={sigma}")
    return radius, sigma, alpha, n_max, float(beta), looks


def _validated_looks(looks, n_max: int) -> tuple[int, ...]:
    looks = tuple(looks)
    for n in looks:
        validate_sample_count("each look", n)
    if not looks or looks[-1] != n_max or any(b <= a for a, b in itertools.pairwise(looks)):
        raise ConfigError(f"looks must be strictly increasing and end at n_max={n_max}, got {looks}")
    return tuple(int(n) for n in looks)


def _power(power: float) -> float:
    if not _is_real(power) or not (0.0 < power <= 1.0):
        raise ConfigError(f"spending_power must be in (0, 1], got {power!r}")
    return float(power)


def _log_spending(looks: tuple[int, ...], start: float, power: float) -> np.ndarray:
    """Cumulative share of the level by each look: ``(log(n / start) / log(n_max / start))^power``, clipped
    to [0, 1]; the last look always 1."""
    n = np.asarray(looks, dtype=np.float64)
    if start >= n[-1]:
        share = np.zeros_like(n)
    else:
        share = np.clip(np.log(n / start) / math.log(n[-1] / start), 0.0, 1.0) ** power
    share[-1] = 1.0
    return share


def _with_curtailment(looks, certify_at, futile_at) -> tuple[int, ...]:
    """Also stop NOT_CERTIFIED once no later look can be reached: ``S + (n_j - n_i) < certify_at[j]``
    for all j > i. Changes no certification, only ends hopeless runs earlier."""
    out, reach = [0] * len(looks), math.inf  # reach: fewest hits at look i from which a later look can certify
    for i in range(len(looks) - 1, -1, -1):
        f = certify_at[i] - 1 if i == len(looks) - 1 else max(futile_at[i], min(reach, certify_at[i]) - 1)
        out[i] = int(min(f, certify_at[i] - 1, looks[i]))
        if i > 0:
            reach = min(reach, certify_at[i]) - (looks[i] - looks[i - 1])
    return tuple(max(f, -1) for f in out)


def _live(looks, certify_at, futile_at) -> tuple[tuple[int, ...], ...]:
    """Drop looks (but the last) where no count can stop: same decisions, fewer round trips."""
    last = len(looks) - 1
    keep = [i for i, (n, c, f) in enumerate(zip(looks, certify_at, futile_at, strict=True)) if c <= n or f >= 0 or i == last]
    return tuple(tuple(seq[i] for i in keep) for seq in (looks, certify_at, futile_at))


@functools.lru_cache(maxsize=64)
def _exact_plan(radius, sigma, alpha, n_max, beta, looks, power, final_share) -> BoundaryPlan:
    t = float(special.ndtr(radius / sigma))
    n_c = math.log(alpha) / math.log(t)
    certify_share = (1.0 - final_share) * _log_spending(looks, max(1.0, n_c / 2.0), power)
    certify_share[-1] = 1.0
    futile_share = _log_spending(looks, 1.0, power)
    margin = 1.0 - binomial_dp.SAFETY
    certify_at = binomial_dp.design_upper(looks, t, alpha * margin * certify_share)
    futile_at = binomial_dp.design_lower(looks, t, beta * margin * futile_share)
    futile_at = _with_curtailment(looks, certify_at, futile_at)
    return BoundaryPlan(radius, sigma, alpha, *_live(looks, certify_at, futile_at), SequentialMethod.EXACT)


@functools.lru_cache(maxsize=64)
def _betting_plan(radius, sigma, alpha, n_max, beta, looks) -> BoundaryPlan:
    t = float(special.ndtr(radius / sigma))
    n = np.asarray(looks, dtype=np.int64)
    certify_at = tuple(int(c) for c in certify_counts(n, t, math.log(1.0 / alpha)))
    futile_at = tuple(int(f) for f in futile_counts(n, t, math.log(1.0 / beta)))
    futile_at = _with_curtailment(looks, certify_at, futile_at)
    return BoundaryPlan(radius, sigma, alpha, *_live(looks, certify_at, futile_at), SequentialMethod.BETTING)


class BoundaryTest(LookTest):
    """A pure state machine for one input: feed cumulative counts at each look, get decisions.

    The interface of :class:`densepure.stats.sequential.SequentialTest`: while ``next_look`` is not
    None, draw up to it and call ``update(n_a, n)`` with ``n == next_look`` and the cumulative hits of
    c_hat. The final :class:`SequentialResult` reports ``p_a_lower`` / ``p_a_upper`` from the betting
    confidence sequence at level alpha (:func:`densepure.stats.confseq.betting_lower_bound`): each
    valid at any stopping time, but not the statistic the decision used, so a CERTIFIED result may
    carry ``p_a_lower`` below Phi(r / sigma) (the exact test is sharper than the sequence).
    """

    plan_type = BoundaryPlan

    def _decide(self, look: int, n_a: int, n: int, last: bool) -> tuple[SequentialDecision, float, float]:
        if n_a >= self._plan.certify_at[look]:
            decision = SequentialDecision.CERTIFIED
        elif last or n_a <= self._plan.futile_at[look]:
            decision = SequentialDecision.NOT_CERTIFIED
        else:
            return SequentialDecision.CONTINUE, 0.0, 1.0
        alpha = self._plan.alpha
        return decision, betting_lower_bound(n_a, n, alpha), betting_upper_bound(n_a, n, alpha)


AnyPlan = SequentialPlan | BoundaryPlan
"""What a sequential policy accepts: ``plan.start(label)`` gives its state machine."""


def build_plan(method: SequentialMethod, radius: float, sigma: float, alpha: float, n_max: int = 10_000) -> AnyPlan:
    """The plan of ``method`` with its default tuning (what ``--radius`` and the server use)."""
    if method is SequentialMethod.EXACT:
        return BoundaryPlan.exact(radius, sigma, alpha, n_max)
    if method is SequentialMethod.BETTING:
        return BoundaryPlan.betting(radius, sigma, alpha, n_max)
    if method is SequentialMethod.GEOMETRIC:
        return SequentialPlan.geometric(radius, sigma, alpha, n_max=n_max)
    raise ConfigError(f"method must be a SequentialMethod ({', '.join(m.value for m in SequentialMethod)}), "
                      f"got {method!r}")
