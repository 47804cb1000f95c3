"""Statistics of randomized smoothing on class counts: Cohen et al.'s CERTIFY and PREDICT.

Pure numpy / scipy on counts; no torch, no sampling. The engine draws the noisy samples, counts the
base classifier's votes, and hands the counts here.

Source: J. Cohen, E. Rosenfeld, J. Z. Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019, Section 3.2 (Pseudocode for certification and prediction) and Theorem 1.
The one-sided (1 - alpha) Clopper-Pearson bound used here equals the lower end of statsmodels'
``proportion_confint(n_a, n, alpha=2 * alpha, method="beta")`` used by the reference code.

Conventions: a label of ``-1`` means abstention. Abstention is a value, never an exception;
exceptions are for invalid settings (:class:`~densepure.errors.ConfigError`) and malformed counts
(:class:`~densepure.errors.InputError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from densepure.errors import ConfigError, InputError
from densepure.validation import is_int as _is_int
from densepure.validation import is_real as _is_real
from densepure.validation import validate_sigma

ABSTAIN: int = -1
"""The label returned when CERTIFY or PREDICT abstains."""


# --------------------------------------------------------------------------------------------
# Validation: each public function validates its inputs once, with these helpers.
# --------------------------------------------------------------------------------------------
def validate_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float; raise ConfigError unless 0 < alpha < 0.5."""
    if not _is_real(alpha) or not (0.0 < alpha < 0.5):
        raise ConfigError(f"alpha must be in (0, 0.5), got {alpha!r}")
    return float(alpha)


MAX_DRAWS = (1 << 40) - 1  # the noise counters' draw field has 40 bits (densepure.noise)


def validate_sample_count(name: str, n: int) -> int:
    """Return ``n`` as an int; raise ConfigError unless it is an integer in [1, MAX_DRAWS]."""
    if not _is_int(n) or n < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {n!r}")
    if n > MAX_DRAWS:
        raise ConfigError(f"{name} must be at most 2**40 - 1 = {MAX_DRAWS:,} (the noise counters' draw field), "
                          f"got {n:,}")
    return int(n)


def _validate_hits(n_a: int, n: int) -> tuple[int, int]:
    n = validate_sample_count("n", n)
    if not _is_int(n_a) or not (0 <= n_a <= n):
        raise InputError(f"n_a must be an integer in [0, n={n}], got {n_a!r}")
    return int(n_a), n


def _validate_counts(name: str, counts: np.ndarray) -> np.ndarray:
    """Counts must be a non-empty 1-D array of non-negative integers with a positive total."""
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D array of class counts, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must have an integer dtype, got {arr.dtype}")
    if np.any(arr < 0):
        raise InputError(f"{name} must be >= 0, got minimum {int(arr.min())}")
    if int(arr.sum()) < 1:
        raise InputError(f"{name} must contain at least one sample, got a total of 0")
    return arr.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------
# Confidence bounds and radii.
# --------------------------------------------------------------------------------------------
_CDF_MARGIN = 2.0**-36  # relative: 1.5e-11, ~180x the largest error of SciPy's betainc in the tests (7.9e-14)


def _beta_quantile_below(a: np.ndarray, b: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile of ``Beta(a, b)`` (integer ``a, b >= 1``), rounded down: never above the exact one.

    SciPy's ``betaincinv`` lands within a few ulps of the quantile, on either side. Each value is
    moved down (by 1, 2, 4, ... ulps) until SciPy's CDF there is ``<= q (1 - 2^-36)``. If SciPy's CDF
    is within a relative ``2^-36`` of the exact one (it is within ``7.9e-14`` wherever
    tests/certify/test_stats.py compares it with exact binomial tails computed in mpmath), the exact
    CDF is then below ``q``, and the CDF being increasing, the value is below the exact quantile.
    The cost is ``2^-36 q`` of probability: bounds move by at most a few parts in 1e11.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    p = np.asarray(special.betaincinv(a, b, q), dtype=np.float64).copy()
    step = np.spacing(p)
    target = q * (1.0 - _CDF_MARGIN)
    for _ in range(1100):  # p reaches 0 long before: the step doubles
        high = (p > 0.0) & (special.betainc(a, b, p) > target)
        if not high.any():
            return p
        p = np.where(high, np.maximum(p - step, 0.0), p)
        step = np.where(high, 2.0 * step, step)
    raise ArithmeticError(f"no conservative Beta({a}, {b}) quantile found for q={q}")


def lower_confidence_bounds(n_a: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """:func:`lower_confidence_bound` of every count in ``n_a`` (an int array in ``[0, n]``), float64."""
    n_a = np.asarray(n_a, dtype=np.int64)
    safe = np.maximum(n_a, 1)
    return np.where(n_a > 0, _beta_quantile_below(safe, n - safe + 1, alpha), 0.0)


def upper_confidence_bounds(n_a: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """:func:`upper_confidence_bound` of every count in ``n_a``: ``1 - `` the lower bound of the misses,
    rounded up."""
    misses = n - np.asarray(n_a, dtype=np.int64)
    upper = np.nextafter(1.0 - lower_confidence_bounds(misses, n, alpha), 2.0)
    return np.where(misses > 0, np.minimum(upper, 1.0), 1.0)


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    ``Beta.ppf(alpha, n_a, n - n_a + 1)`` (0.0 when ``n_a == 0``): for every true proportion p,
    ``P(lower_confidence_bound(X, n, alpha) > p) <= alpha`` when ``X ~ Binomial(n, p)``.
    Cohen et al. (2019), Sec. 3.2, ``LowerConfBound``. Rounded down, so never above the exact
    quantile (:func:`_beta_quantile_below`; SciPy's own inverse lands above it about half the time,
    by a few ulps).
    """
    alpha = validate_alpha(alpha)
    n_a, n = _validate_hits(n_a, n)
    if n_a == 0:
        return 0.0
    return float(lower_confidence_bounds(np.array([n_a]), n, alpha)[0])


def upper_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: ``Beta.ppf(1 - alpha, n_a + 1, n - n_a)``.

    1.0 when ``n_a == n``. For every p, ``P(upper_confidence_bound(X, n, alpha) < p) <= alpha``.
    Computed as ``1 - `` the lower bound of the ``n - n_a`` misses (``1 - Beta(a, b) ~ Beta(b, a)``),
    rounded up: never below the exact quantile.
    """
    alpha = validate_alpha(alpha)
    n_a, n = _validate_hits(n_a, n)
    if n_a == n:
        return 1.0
    return float(upper_confidence_bounds(np.array([n_a]), n, alpha)[0])


def radius(p_a_lower: float, sigma: float) -> float:
    """Certified L2 radius ``sigma * Phi^-1(p_a_lower)`` (Cohen et al. 2019, Theorem 1).

    Only meaningful for ``p_a_lower >= 0.5`` (below it CERTIFY abstains), so other values raise
    InputError. ``p_a_lower == 1`` gives ``inf``.
    """
    sigma = validate_sigma(sigma)
    if not _is_real(p_a_lower) or not (0.5 <= p_a_lower <= 1.0):
        raise InputError(f"p_a_lower must be in [0.5, 1] (below 0.5 CERTIFY abstains), got {p_a_lower!r}")
    return sigma * float(special.ndtri(p_a_lower))


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can return with ``n`` estimation samples, reached when all hit.

    With ``n_a == n`` the lower bound is ``alpha ** (1 / n)``, so the radius is
    ``sigma * Phi^-1(alpha ** (1/n))``; e.g. n = 100,000, alpha = 0.001 gives 3.8115 sigma.
    Negative when ``alpha ** (1/n) < 1/2``: with so few samples CERTIFY always abstains.
    """
    sigma = validate_sigma(sigma)
    alpha = validate_alpha(alpha)
    n = validate_sample_count("n", n)
    # Phi^-1(1 - q) = -Phi^-1(q) with q = 1 - alpha**(1/n) from expm1: 1 - p would lose digits.
    q = -math.expm1(math.log(alpha) / n)
    return sigma * float(-special.ndtri(q))


# --------------------------------------------------------------------------------------------
# CERTIFY and PREDICT.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certificate:
    """The answer of CERTIFY for one input.

    label: the predicted class of the smoothed classifier g, or -1 (abstain).
    radius: certified L2 radius (0.0 when abstaining).
    p_a_lower: one-sided (1 - alpha) lower bound on P(f(x + delta) = c_hat), in [0, 1].
    n_a, n: estimation hits of the selected class c_hat, and estimation total.
    Guarantee (Cohen et al. 2019, Prop. 2): with probability >= 1 - alpha over the sampling, the
    certificate is an abstention or g(x) == label with a true radius >= radius.
    """

    label: int
    radius: float
    p_a_lower: float
    n_a: int
    n: int

    def __post_init__(self) -> None:
        if not _is_int(self.label) or self.label < ABSTAIN:
            raise InputError(f"label must be an integer >= -1, got {self.label!r}")
        if not (self.radius >= 0.0):
            raise InputError(f"radius must be >= 0, got {self.radius!r}")
        if self.label == ABSTAIN and self.radius != 0.0:
            raise InputError(f"an abstaining certificate has radius 0.0, got {self.radius!r}")
        if not (0.0 <= self.p_a_lower <= 1.0):
            raise InputError(f"p_a_lower must be in [0, 1], got {self.p_a_lower!r}")
        _validate_hits(self.n_a, self.n)

    @property
    def abstained(self) -> bool:
        """True when CERTIFY abstained (p_a_lower < 0.5)."""
        return self.label == ABSTAIN


def certify_from_counts(
    counts_selection: np.ndarray, counts_estimation: np.ndarray, sigma: float, alpha: float
) -> Certificate:
    """CERTIFY (Cohen et al. 2019, Sec. 3.2) from the two independent sets of class counts.

    counts_selection: int array (num_classes,), votes of the n0 selection samples; picks
        ``c_hat = argmax`` (ties: lowest index).
    counts_estimation: int array (num_classes,), votes of n *fresh* samples, independent of the
        selection ones; ``n_a = counts_estimation[c_hat]``.
    Returns an abstention if the (1 - alpha) lower bound p_A on P(f = c_hat) is < 0.5, otherwise
    label c_hat with radius ``sigma * Phi^-1(p_A)``. Guarantee: see :class:`Certificate`.
    """
    sigma = validate_sigma(sigma)
    alpha = validate_alpha(alpha)
    selection = _validate_counts("counts_selection", counts_selection)
    estimation = _validate_counts("counts_estimation", counts_estimation)
    if selection.shape != estimation.shape:
        raise InputError(
            f"counts_selection and counts_estimation must have the same number of classes, "
            f"got {selection.shape[0]} and {estimation.shape[0]}"
        )
    c_hat = int(np.argmax(selection))
    n_a = int(estimation[c_hat])
    n = int(estimation.sum())
    p_a_lower = lower_confidence_bound(n_a, n, alpha)
    if p_a_lower < 0.5:
        return Certificate(label=ABSTAIN, radius=0.0, p_a_lower=p_a_lower, n_a=n_a, n=n)
    return Certificate(label=c_hat, radius=radius(p_a_lower, sigma), p_a_lower=p_a_lower, n_a=n_a, n=n)


@dataclass(frozen=True)
class Prediction:
    """The answer of PREDICT for one input.

    label: the top class, or -1 (abstain). n1 >= n2: counts of the top two classes.
    p_value: two-sided binomial test p-value of n1 successes in n1 + n2 trials at p = 1/2.
    Guarantee (Cohen et al. 2019, Prop. 1): the probability of returning a label other than
    g(x) (rather than abstaining) is at most alpha.
    """

    label: int
    n1: int
    n2: int
    p_value: float

    def __post_init__(self) -> None:
        if not _is_int(self.label) or self.label < ABSTAIN:
            raise InputError(f"label must be an integer >= -1, got {self.label!r}")
        if not (_is_int(self.n1) and _is_int(self.n2) and self.n1 >= self.n2 >= 0):
            raise InputError(f"counts must satisfy n1 >= n2 >= 0, got n1={self.n1!r}, n2={self.n2!r}")
        if not (0.0 <= self.p_value <= 1.0):
            raise InputError(f"p_value must be in [0, 1], got {self.p_value!r}")

    @property
    def abstained(self) -> bool:
        """True when PREDICT abstained."""
        return self.label == ABSTAIN


def predict_from_counts(counts: np.ndarray, alpha: float) -> Prediction:
    """PREDICT (Cohen et al. 2019, Sec. 3.2) from the class counts of n noisy samples.

    counts: int array (num_classes,). Top two classes by count (ties: lowest label first);
    abstain when ``scipy.stats.binomtest(n1, n1 + n2, 0.5).pvalue > alpha`` (two-sided, as in the
    paper; SciPy >= 1.12 removed the old binomial-test function).
    """
    alpha = validate_alpha(alpha)
    arr = _validate_counts("counts", counts)
    order = np.argsort(-arr, kind="stable")
    top = int(order[0])
    n1 = int(arr[top])
    n2 = int(arr[order[1]]) if arr.size > 1 else 0
    p_value = float(stats.binomtest(n1, n1 + n2, 0.5).pvalue)
    label = ABSTAIN if p_value > alpha else top
    return Prediction(label=label, n1=n1, n2=n2, p_value=min(p_value, 1.0))
