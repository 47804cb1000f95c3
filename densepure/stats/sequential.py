"""Sequential certification of a requested radius r: stop sampling as soon as the answer is known.

CERTIFY (Cohen et al., ICML 2019) spends all n samples on every input, although a point with
p_A = 0.999 is certified at r = sigma after a hundred. Here the question is narrower, "is g(x)
robust at radius r?", and the estimation samples are examined at a few looks fixed in advance.

Procedure (ALGORITHM.md Sec. 7, last bullet). Before any sampling, fix looks
``n_1 < ... < n_m`` and levels ``alpha_i > 0`` with ``sum(alpha_i) <= alpha`` (a
:class:`SequentialPlan`), and let ``t = Phi(r / sigma)``. The class ``c_hat`` is selected from n0
samples independent of the estimation samples, exactly as in CERTIFY. Estimation samples are then
drawn; at look i, with n_A hits of c_hat among the first n_i samples,

* CERTIFIED       if ``L_i = LowerConfBound(n_A, n_i, alpha_i) >= t``;
* NOT_CERTIFIED   if ``U_i = UpperConfBound(n_A, n_i, alpha_i) < t``, or i is the last look;
* CONTINUE        otherwise (draw up to n_{i+1}).

Guarantee: with probability >= 1 - alpha the result is NOT_CERTIFIED, or g(x) = c_hat with a true
radius >= r. Proof by a union bound. Let p = P(f(x + delta) = c_hat), conditionally on the
selection (the estimation samples are i.i.d. Bernoulli(p) given c_hat, since they are independent
of the selection samples). If p >= t, then p >= 1/2 and Cohen et al.'s Theorem 1 gives
g(x) = c_hat with radius sigma * Phi^-1(p) >= r, so certifying is correct. If p < t, a CERTIFIED
answer needs some look i with ``L_i >= t > p``. Because n_i and alpha_i are fixed in advance,
each ``L_i`` is an ordinary Clopper-Pearson bound on n_i i.i.d. draws, so
``P(L_i > p) <= alpha_i``, and ``P(some L_i > p) <= sum(alpha_i) <= alpha``. That event does not
depend on when sampling stopped: the procedure certifies only at a look where ``L_i >= t``, so its
error event is contained in the union whatever the stopping rule does.

This is why the futility stop (``U_i < t``) spends no alpha: it only ever returns NOT_CERTIFIED,
which is never an error, and it can only remove later chances to certify, i.e. shrink the error
event. Its level affects power only: a truly certifiable point (p >= t) is stopped for futility at
look i with probability ``P(U_i < p) <= alpha_i``. The same union bound also makes the bounds hold
simultaneously at all looks, so the reported ``p_a_lower`` at the stopping look is itself a valid
(1 - alpha) lower bound on p.

The looks and levels must not depend on the data (no "one more look because it was close"): that
is what the frozen plan, built before sampling, enforces.
:class:`SequentialTest` is a pure state machine, independent of how samples are drawn; the engine
drives it, and :func:`run_sequential` is a small driver for tests.
"""

from __future__ import annotations

import abc
import enum
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from densepure.choices import Choice
from densepure.errors import ConfigError, InputError
from densepure.stats.cohen import (
    ABSTAIN,
    _is_int,
    _is_real,
    _validate_hits,
    lower_confidence_bound,
    lower_confidence_bounds,
    max_certifiable_radius,
    upper_confidence_bound,
    upper_confidence_bounds,
    validate_alpha,
    validate_sample_count,
    validate_sigma,
)


class AlphaSpending(enum.Enum):
    """How :meth:`SequentialPlan.geometric` splits alpha over the looks.

    LINEAR: cumulative alpha spent by look i is ``alpha * n_i / n_max`` (Lan-DeMets linear
        spending), i.e. ``alpha_i = alpha * (n_i - n_{i-1}) / n_max``. With growth 2 the last look
        keeps alpha / 2, so points that need all n_max samples lose little against one-shot
        CERTIFY, while early looks, which only need to catch points with a large margin, get
        small levels that cost them little. The default.
    EQUAL: ``alpha / m`` at each of the m looks.
    """

    LINEAR = "linear"
    EQUAL = "equal"


class SequentialMethod(Choice, what="sequential method"):
    """How the looks and the decision rule of a sequential test are built (recorded in the sidecar).

    EXACT: count boundaries from alpha spending with exact binomial probabilities
        (:meth:`densepure.stats.boundary.BoundaryPlan.exact`). The default.
    BETTING: count boundaries where a betting e-process crosses 1/alpha (Ville's inequality; valid
        at any stopping time, :meth:`densepure.stats.boundary.BoundaryPlan.betting`).
    GEOMETRIC: Clopper-Pearson bounds at doubling looks with a union bound (:class:`SequentialPlan`),
        the rule of releases before issue 19, kept to reproduce earlier results.
    """

    EXACT = "exact"
    BETTING = "betting"
    GEOMETRIC = "geometric"


class SequentialDecision(enum.Enum):
    """The decision at a look: keep sampling, or stop with an answer."""

    CONTINUE = "continue"
    CERTIFIED = "certified"
    NOT_CERTIFIED = "not_certified"


class LookPlan:
    """What the plans of looks (:class:`SequentialPlan`, ``boundary.BoundaryPlan``) share: their checked
    ``radius``, ``sigma``, ``alpha`` and ``looks`` (fields of the frozen dataclass subclasses), and what
    follows from them."""

    radius: float
    sigma: float
    alpha: float
    looks: tuple[int, ...]

    def _check_looks(self, unit: str) -> None:
        """Validate radius, sigma, alpha and looks (non-empty, strictly increasing ``unit`` counts >= 1)."""
        object.__setattr__(self, "radius", _validate_radius(self.radius))
        object.__setattr__(self, "sigma", validate_sigma(self.sigma))
        object.__setattr__(self, "alpha", validate_alpha(self.alpha))
        looks = tuple(self.looks)
        if not looks:
            raise ConfigError(f"looks must contain at least one {unit} count, got ()")
        for n in looks:
            validate_sample_count("each look", n)
        if any(b <= a for a, b in itertools.pairwise(looks)):
            raise ConfigError(f"looks must be strictly increasing, got {looks}")
        object.__setattr__(self, "looks", tuple(int(n) for n in looks))

    @property
    def target(self) -> float:
        """``Phi(radius / sigma)``: the value p_A must provably exceed to certify the radius."""
        return float(special.ndtr(self.radius / self.sigma))

    @property
    def n_max(self) -> int:
        """The last look: the most estimation draws the plan can use."""
        return self.looks[-1]


@dataclass(frozen=True)
class SequentialPlan(LookPlan):
    """Looks and per-look levels, fixed before sampling, for certifying radius ``radius``.

    radius: requested L2 radius r >= 0 (finite). sigma: noise level > 0.
    alpha: total failure probability in (0, 0.5). looks: strictly increasing sample counts >= 1.
    alphas: per-look levels, each > 0, ``math.fsum(alphas) <= alpha``.
    At least one look must be able to certify r (all n_i samples hitting), else ConfigError.
    """

    radius: float
    sigma: float
    alpha: float
    looks: tuple[int, ...]
    alphas: tuple[float, ...]

    def __post_init__(self) -> None:
        self._check_looks("sample")
        alphas = tuple(self.alphas)
        if len(alphas) != len(self.looks):
            raise ConfigError(f"alphas must have one level per look ({len(self.looks)}), got {len(alphas)}")
        if any(not _is_real(a) or not (0.0 < a < 0.5) for a in alphas):
            raise ConfigError(f"each per-look alpha must be in (0, 0.5), got {alphas}")
        if math.fsum(alphas) > self.alpha:
            raise ConfigError(f"per-look alphas must sum to <= alpha={self.alpha}, got {math.fsum(alphas)}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in alphas))
        reachable = max(max_certifiable_radius(n, a, self.sigma) for n, a in zip(self.looks, self.alphas, strict=True))
        if reachable < self.radius:
            raise ConfigError(
                f"radius {self.radius} cannot be certified by this plan: the largest reachable radius "
                f"is {reachable:.4f} (sigma={self.sigma}, n_max={self.looks[-1]}); "
                f"raise n_max or lower the radius"
            )

    @property
    def method(self) -> SequentialMethod:
        return SequentialMethod.GEOMETRIC

    def start(self, label: int) -> SequentialTest:
        """A fresh state machine for one input whose selected class is ``label``."""
        return SequentialTest(self, label)

    def count_boundaries(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The plan as count boundaries: (certify_at, futile_at) per look.

        :class:`SequentialTest` certifies at look i exactly when ``n_a >= certify_at[i]`` and stops
        for futility exactly when ``n_a <= futile_at[i]`` (both bounds are increasing in n_a), so
        the plan's operating characteristics can be computed exactly
        (:mod:`densepure.stats.binomial_dp`).
        """
        target, certify_at, futile_at = self.target, [], []
        for n, level in zip(self.looks, self.alphas, strict=True):
            counts = np.arange(n + 1)
            lower = lower_confidence_bounds(counts, n, level)  # the bounds SequentialTest decides on
            upper = upper_confidence_bounds(counts, n, level)
            certify_at.append(int(np.argmax(lower >= target)) if lower[-1] >= target else n + 1)
            futile_at.append(int(np.flatnonzero(upper < target)[-1]) if upper[0] < target else -1)
        return tuple(certify_at), tuple(futile_at)

    @classmethod
    def geometric(
        cls,
        radius: float,
        sigma: float,
        alpha: float,
        n_max: int = 10_000,
        first: int | None = None,
        growth: float = 2.0,
        spending: AlphaSpending = AlphaSpending.LINEAR,
    ) -> SequentialPlan:
        """Looks ``ceil(n_max / growth**k)``, k = 0, 1, ..., kept while >= ``first``.

        Built backwards from n_max so the last ratios are exactly ``growth`` (a look just below
        n_max would waste its level). ``first=None`` keeps only looks at which r can be certified
        (``LowerConfBound(n_i, n_i, alpha_i) >= Phi(r / sigma)``): earlier ones could only stop
        for futility. An explicit ``first`` keeps every look >= first. Alphas per ``spending``.
        """
        target = float(special.ndtr(_validate_radius(radius) / validate_sigma(sigma)))
        alpha = validate_alpha(alpha)
        n_max = validate_sample_count("n_max", n_max)
        if not _is_real(growth) or not math.isfinite(growth) or growth <= 1.0:
            raise ConfigError(f"growth must be a finite number > 1, got {growth!r}")
        if not isinstance(spending, AlphaSpending):
            raise ConfigError(f"spending must be an AlphaSpending, got {spending!r}")
        floor = 1 if first is None else validate_sample_count("first", first)
        if floor > n_max:
            raise ConfigError(f"first must be <= n_max={n_max}, got {first}")
        looks = _backward_geometric(n_max, growth, floor)
        alphas = _split_alpha(looks, alpha, spending)
        if first is None:
            while len(looks) > 1 and lower_confidence_bound(looks[0], looks[0], alphas[0]) < target:
                looks = looks[1:]
                alphas = _split_alpha(looks, alpha, spending)
        return cls(radius=radius, sigma=sigma, alpha=alpha, looks=looks, alphas=alphas)


def _validate_radius(radius: float) -> float:
    if not _is_real(radius) or not math.isfinite(radius) or radius < 0:
        raise ConfigError(f"radius must be a finite number >= 0, got {radius!r}")
    return float(radius)


def _backward_geometric(n_max: int, growth: float, floor: int) -> tuple[int, ...]:
    looks = [n_max]
    k = 1
    while looks[-1] > floor:
        n = math.ceil(n_max / growth**k)
        if n < floor:
            break
        if n < looks[-1]:
            looks.append(n)
        k += 1
    return tuple(reversed(looks))


def _split_alpha(looks: tuple[int, ...], alpha: float, spending: AlphaSpending) -> tuple[float, ...]:
    if spending is AlphaSpending.EQUAL:
        alphas = np.full(len(looks), alpha / len(looks))
    else:
        increments = np.diff(np.asarray((0,) + looks, dtype=np.float64))
        alphas = alpha * increments / looks[-1]
    # Rounding may push the float sum a few ulps over alpha; step each level down until it fits.
    while math.fsum(alphas) > alpha:
        alphas = np.nextafter(alphas, 0.0)
    return tuple(float(a) for a in alphas)


@dataclass(frozen=True)
class SequentialResult:
    """The final answer of a sequential test.

    decision: CERTIFIED or NOT_CERTIFIED (never CONTINUE). label: c_hat when CERTIFIED, else -1.
    radius_requested: r. n_used: estimation samples drawn (the stopping look). n_a: hits among them.
    p_a_lower, p_a_upper: bounds on p_A at the stopping look's level. look: its index (0-based).
    Guarantee: see the module docstring (probability >= 1 - plan.alpha of a correct answer).
    """

    decision: SequentialDecision
    label: int
    radius_requested: float
    n_used: int
    n_a: int
    p_a_lower: float
    p_a_upper: float
    look: int

    def __post_init__(self) -> None:
        if self.decision is SequentialDecision.CONTINUE:
            raise InputError("a SequentialResult is final: decision cannot be CONTINUE")
        if (self.decision is SequentialDecision.CERTIFIED) != (self.label != ABSTAIN):
            raise InputError(f"label must be -1 exactly when not certified, got {self.label!r}")
        _validate_hits(self.n_a, self.n_used)

    @property
    def certified(self) -> bool:
        """True when radius_requested was certified."""
        return self.decision is SequentialDecision.CERTIFIED


class LookTest(abc.ABC):
    """A pure state machine for one input: feed cumulative counts at each planned look, get decisions.

    Usage: ``while test.next_look is not None: ...draw up to next_look...; test.update(n_a, n)``.
    ``update`` must be called with ``n == next_look`` and cumulative hit counts; after a
    CERTIFIED / NOT_CERTIFIED decision ``next_look`` is None and ``result`` is set. Subclasses say how
    a look decides (:meth:`_decide`); this class keeps the bookkeeping and checks the calls.
    """

    plan_type: type = object

    def __init__(self, plan, label: int) -> None:
        if not isinstance(plan, self.plan_type):
            raise ConfigError(f"plan must be a {self.plan_type.__name__}, got {type(plan).__name__}")
        if not _is_int(label) or label < 0:
            raise InputError(f"label (the selected class c_hat) must be an integer >= 0, got {label!r}")
        self._plan, self._label = plan, int(label)
        self._look = self._n_a = self._n = 0
        self._result: SequentialResult | None = None

    @property
    def plan(self):
        return self._plan

    @property
    def next_look(self) -> int | None:
        """The cumulative sample count at which the next decision is due; None once stopped."""
        return None if self._result is not None else self._plan.looks[self._look]

    @property
    def result(self) -> SequentialResult | None:
        """The final result, or None while the test continues."""
        return self._result

    def update(self, n_a: int, n: int) -> SequentialDecision:
        """Decide at the current look from ``n_a`` hits of c_hat among the first ``n`` samples."""
        if self._result is not None:
            raise InputError(f"the test already stopped ({self._result.decision.name}); start a new one")
        if not _is_int(n) or n != self._plan.looks[self._look]:
            raise InputError(f"update must be called at the next look n={self.next_look}, got n={n!r}")
        n_a, n = _validate_hits(n_a, n)
        if n_a < self._n_a or n_a - self._n_a > n - self._n:
            raise InputError(
                f"n_a must be cumulative: between {self._n_a} and {self._n_a + n - self._n}, got {n_a}"
            )
        self._n_a, self._n = n_a, n
        last = self._look == len(self._plan.looks) - 1
        decision, lower, upper = self._decide(self._look, n_a, n, last)
        if decision is SequentialDecision.CONTINUE:
            self._look += 1
            return decision
        self._result = SequentialResult(
            decision=decision,
            label=self._label if decision is SequentialDecision.CERTIFIED else ABSTAIN,
            radius_requested=self._plan.radius,
            n_used=n,
            n_a=n_a,
            p_a_lower=lower,
            p_a_upper=upper,
            look=self._look,
        )
        return decision

    @abc.abstractmethod
    def _decide(self, look: int, n_a: int, n: int, last: bool) -> tuple[SequentialDecision, float, float]:
        """(decision at this look, lower and upper bound on p_A reported with a final result)."""


class SequentialTest(LookTest):
    """A pure state machine for one input: feed cumulative counts at each look, get decisions.

    Usage: ``while test.next_look is not None: ...draw up to next_look...; test.update(n_a, n)``.
    ``update`` must be called with ``n == next_look`` and cumulative hit counts; after a
    CERTIFIED / NOT_CERTIFIED decision ``next_look`` is None and ``result`` is set.
    """

    plan_type = SequentialPlan

    def _decide(self, look: int, n_a: int, n: int, last: bool) -> tuple[SequentialDecision, float, float]:
        level = self._plan.alphas[look]
        lower = lower_confidence_bound(n_a, n, level)
        upper = upper_confidence_bound(n_a, n, level)
        target = self._plan.target
        if lower >= target:
            return SequentialDecision.CERTIFIED, lower, upper
        if last or upper < target:
            return SequentialDecision.NOT_CERTIFIED, lower, upper
        return SequentialDecision.CONTINUE, lower, upper


def run_sequential(sample_fn: Callable[[int], int], plan, label: int) -> SequentialResult:
    """Drive the state machine of ``plan`` (``plan.start(label)``: any sequential plan) to its end.

    sample_fn(k) must draw k *fresh* estimation samples (independent of the selection ones) and
    return how many of them the base classifier assigned to ``label``.
    """
    if not callable(getattr(plan, "start", None)):
        raise ConfigError(f"plan must be a sequential plan (SequentialPlan, BoundaryPlan), got {type(plan).__name__}")
    test = plan.start(label)
    n_a = 0
    n = 0
    while (look := test.next_look) is not None:
        k = look - n
        hits = sample_fn(k)
        if not _is_int(hits) or not (0 <= hits <= k):
            raise InputError(f"sample_fn({k}) must return an integer in [0, {k}], got {hits!r}")
        n_a += int(hits)
        n = look
        test.update(n_a, n)
    result = test.result
    if result is None:  # unreachable: the last look always stops
        raise RuntimeError("sequential test ended without a result")
    return result
