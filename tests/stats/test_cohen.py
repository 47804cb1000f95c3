"""Cohen et al. (ICML 2019) CERTIFY / PREDICT statistics on counts: formulas, edge cases, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from densepure.errors import ConfigError, InputError
from densepure.stats.cohen import (
    ABSTAIN,
    Certificate,
    Prediction,
    certify_from_counts,
    lower_confidence_bound,
    max_certifiable_radius,
    predict_from_counts,
    radius,
    upper_confidence_bound,
    validate_alpha,
    validate_sample_count,
    validate_sigma,
)


def _random_cases(seed: int, count: int) -> list[tuple[int, int, float]]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        n = int(rng.integers(1, 200_000))
        n_a = int(rng.integers(0, n + 1)) if rng.random() < 0.5 else int(rng.integers(n // 2, n + 1))
        alpha = float(10 ** rng.uniform(-6, math.log10(0.49)))
        cases.append((n_a, n, alpha))
    return cases


def _statsmodels_beta_lower(count: int, nobs: int, alpha: float) -> float:
    """``statsmodels.stats.proportion.proportion_confint(count, nobs, alpha, method="beta")[0]``,
    re-derived in float64: the two-sided Clopper-Pearson interval puts alpha/2 in each tail."""
    if count == 0:
        return 0.0
    return float(special.betaincinv(count, nobs - count + 1, alpha / 2))


def _sign_test_pvalue(n1: int, n2: int) -> float:
    """Exact two-sided binomial test of n1 >= n2 successes in n1 + n2 trials at p = 1/2, by hand:
    the null distribution is symmetric, so the p-value is min(1, 2 P(X >= n1))."""
    total = n1 + n2
    tail = sum(math.comb(total, k) for k in range(n1, total + 1))
    return min(1.0, 2 * tail / 2**total)


# ---------------------------------------------------------------------------- confidence bounds
def test_lower_bound_is_the_beta_quantile_and_matches_statsmodels_definition():
    for n_a, n, alpha in _random_cases(seed=0, count=300):
        got = lower_confidence_bound(n_a, n, alpha)
        expected = 0.0 if n_a == 0 else stats.beta.ppf(alpha, n_a, n - n_a + 1)
        # rel 1e-10: the bound is rounded down by up to a few parts in 1e11 so that it never exceeds the
        # exact quantile (test_clopper_pearson_bounds_never_cross_the_exact_quantile)
        assert got == pytest.approx(expected, rel=1e-10, abs=0.0)
        # Cohen's code calls proportion_confint(alpha=2 * alpha): the one-sided bound at alpha.
        assert got == pytest.approx(_statsmodels_beta_lower(n_a, n, 2 * alpha), rel=1e-10, abs=0.0)


def test_upper_bound_is_the_beta_quantile():
    for n_a, n, alpha in _random_cases(seed=1, count=300):
        got = upper_confidence_bound(n_a, n, alpha)
        expected = 1.0 if n_a == n else stats.beta.ppf(1 - alpha, n_a + 1, n - n_a)
        assert got == pytest.approx(expected, rel=1e-10, abs=0.0)  # rounded up (see the lower bound)


def test_bound_edge_cases():
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert upper_confidence_bound(100, 100, 0.001) == 1.0
    # All hits: Beta(n, 1) has cdf p**n, so the lower bound is alpha ** (1/n).
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-12)
    # No hits: upper bound 1 - alpha ** (1/n), by symmetry.
    assert upper_confidence_bound(0, 100, 0.001) == pytest.approx(1 - 0.001 ** (1 / 100), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 100_000), frac=st.floats(0.0, 1.0), alpha=st.floats(1e-8, 0.49))
def test_bounds_bracket_the_point_estimate(n, frac, alpha):
    n_a = round(frac * n)
    lower = lower_confidence_bound(n_a, n, alpha)
    upper = upper_confidence_bound(n_a, n, alpha)
    assert 0.0 <= lower <= n_a / n <= upper <= 1.0


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 100_000), frac=st.floats(0.0, 1.0), alpha=st.floats(1e-8, 0.49))
def test_bounds_are_monotone_in_n_a(n, frac, alpha):
    n_a = min(round(frac * n), n - 1)
    assert lower_confidence_bound(n_a, n, alpha) < lower_confidence_bound(n_a + 1, n, alpha)
    assert upper_confidence_bound(n_a, n, alpha) < upper_confidence_bound(n_a + 1, n, alpha)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 100_000), frac=st.floats(0.01, 1.0), a1=st.floats(1e-8, 0.49), a2=st.floats(1e-8, 0.49))
def test_lower_bound_grows_with_alpha(n, frac, a1, a2):
    n_a = max(1, round(frac * n))
    small, large = sorted((a1, a2))
    assert lower_confidence_bound(n_a, n, small) <= lower_confidence_bound(n_a, n, large)


@settings(max_examples=100, deadline=None)
@given(p1=st.floats(0.5, 1.0), p2=st.floats(0.5, 1.0), sigma=st.floats(0.01, 10.0))
def test_radius_is_monotone_in_p(p1, p2, sigma):
    lo, hi = sorted((p1, p2))
    assert 0.0 <= radius(lo, sigma) <= radius(hi, sigma)


def test_radius_formula():
    assert radius(0.5, 0.25) == 0.0
    assert radius(stats.norm.cdf(1.5), 0.5) == pytest.approx(0.75, rel=1e-12)
    assert radius(1.0, 0.5) == math.inf


def test_max_certifiable_radius_matches_the_paper_numbers():
    assert round(max_certifiable_radius(100_000, 0.001, 1.0), 4) == 3.8115
    assert round(max_certifiable_radius(10_000, 0.001, 1.0), 4) == 3.1986
    assert max_certifiable_radius(10_000, 0.001, 0.5) == pytest.approx(0.5 * 3.1985775, rel=1e-7)
    # It is what CERTIFY returns when every estimation sample hits.
    cert = certify_from_counts(np.array([100, 0]), np.array([10_000, 0]), 0.25, 0.001)
    assert cert.radius == pytest.approx(max_certifiable_radius(10_000, 0.001, 0.25), rel=1e-10)


# ---------------------------------------------------------------------------- CERTIFY
def test_certify_radius_formula_on_random_counts():
    rng = np.random.default_rng(2)
    for _ in range(300):
        k = int(rng.integers(2, 12))
        selection = rng.multinomial(100, rng.dirichlet(np.ones(k) * 0.3))
        estimation = rng.multinomial(int(rng.integers(1, 20_000)), rng.dirichlet(np.ones(k) * 0.3))
        sigma = float(rng.choice([0.12, 0.25, 0.5, 1.0]))
        alpha = float(rng.choice([0.001, 0.01, 0.05]))
        cert = certify_from_counts(selection, estimation, sigma, alpha)
        c_hat = int(np.argmax(selection))
        n_a, n = int(estimation[c_hat]), int(estimation.sum())
        p_lower = 0.0 if n_a == 0 else stats.beta.ppf(alpha, n_a, n - n_a + 1)
        assert (cert.n_a, cert.n) == (n_a, n)
        assert cert.p_a_lower == pytest.approx(p_lower, rel=1e-10, abs=0.0)  # rounded down: exactness tests
        if p_lower < 0.5:
            assert (cert.label, cert.radius, cert.abstained) == (ABSTAIN, 0.0, True)
        else:
            assert (cert.label, cert.abstained) == (c_hat, False)
            assert cert.radius == pytest.approx(sigma * stats.norm.ppf(p_lower), rel=1e-10, abs=1e-12)


def test_certify_abstains_below_one_half():
    # 540 / 1000 hits: the point estimate is above 1/2 but the 99.9% lower bound is not.
    cert = certify_from_counts(np.array([10, 90]), np.array([460, 540]), 0.5, 0.001)
    assert cert.p_a_lower < 0.5 < 540 / 1000
    assert cert == Certificate(label=ABSTAIN, radius=0.0, p_a_lower=cert.p_a_lower, n_a=540, n=1000)
    assert cert.abstained


def test_certify_with_no_hits_abstains_as_a_value():
    # The selection picked class 0; the fresh samples never voted for it.
    cert = certify_from_counts(np.array([60, 40, 0]), np.array([0, 500, 500]), 0.25, 0.001)
    assert cert.abstained and cert.radius == 0.0 and cert.p_a_lower == 0.0 and cert.n_a == 0


def test_certify_selects_on_selection_counts_only_with_lowest_index_ties():
    # The estimation argmax (class 2) is ignored: c_hat comes from the independent selection.
    cert = certify_from_counts(np.array([3, 50, 50]), np.array([0, 990, 10]), 0.5, 0.001)
    assert cert.label == 1 and cert.n_a == 990
    cert = certify_from_counts(np.array([3, 50, 50]), np.array([0, 10, 990]), 0.5, 0.001)
    assert cert.abstained and cert.n_a == 10


def test_certify_rejects_malformed_counts():
    good = np.array([5, 5])
    with pytest.raises(InputError, match="same number of classes"):
        certify_from_counts(good, np.array([1, 2, 3]), 0.5, 0.001)
    with pytest.raises(InputError, match="integer dtype"):
        certify_from_counts(np.array([1.0, 2.0]), good, 0.5, 0.001)
    with pytest.raises(InputError, match=">= 0"):
        certify_from_counts(np.array([-1, 2]), good, 0.5, 0.001)
    with pytest.raises(InputError, match="1-D"):
        certify_from_counts(np.ones((2, 2), dtype=int), good, 0.5, 0.001)
    with pytest.raises(InputError, match="at least one sample"):
        certify_from_counts(good, np.array([0, 0]), 0.5, 0.001)


# ---------------------------------------------------------------------------- PREDICT
@pytest.mark.parametrize(
    ("counts", "alpha", "label", "n1", "n2"),
    [
        ([0, 60, 40], 0.05, ABSTAIN, 60, 40),  # p = 0.0569 > 0.05
        ([0, 61, 39], 0.05, 1, 61, 39),  # p = 0.0352 <= 0.05
        ([0, 61, 39], 0.01, ABSTAIN, 61, 39),
        ([7, 30, 30], 0.05, ABSTAIN, 30, 30),  # a tie: p = 1
        ([0, 0, 20], 0.001, 2, 20, 0),  # p = 2 / 2**20
        ([9, 1], 0.05, 0, 9, 1),  # p = 22 / 1024 = 0.0215
        ([8, 2], 0.05, ABSTAIN, 8, 2),  # p = 112 / 1024 = 0.109
        ([5], 0.05, ABSTAIN, 5, 0),  # one class: p = 2 / 32 = 0.0625
        ([6], 0.05, 0, 6, 0),  # p = 2 / 64 = 0.03125
    ],
)
def test_predict_hand_computed_cases(counts, alpha, label, n1, n2):
    pred = predict_from_counts(np.array(counts), alpha)
    assert (pred.label, pred.n1, pred.n2) == (label, n1, n2)
    assert pred.p_value == pytest.approx(_sign_test_pvalue(n1, n2), rel=1e-9)
    assert pred.abstained == (label == ABSTAIN)


def test_predict_ties_list_the_lowest_label_first():
    pred = predict_from_counts(np.array([0, 40, 3, 40]), 0.05)
    assert pred == Prediction(label=ABSTAIN, n1=40, n2=40, p_value=1.0)
    pred = predict_from_counts(np.array([0, 5, 100, 5]), 0.001)
    assert (pred.label, pred.n1, pred.n2) == (2, 100, 5)


def test_predict_matches_the_exact_sign_test_on_random_counts():
    rng = np.random.default_rng(3)
    for _ in range(200):
        counts = rng.multinomial(int(rng.integers(1, 300)), rng.dirichlet(np.ones(4)))
        alpha = float(rng.choice([0.001, 0.01, 0.05, 0.1]))
        pred = predict_from_counts(counts, alpha)
        top2 = np.sort(counts)[::-1][:2]
        p_value = _sign_test_pvalue(int(top2[0]), int(top2[1]))
        assert pred.p_value == pytest.approx(p_value, rel=1e-9)
        assert pred.abstained == (p_value > alpha)
        if not pred.abstained:
            assert pred.label == int(np.argmax(counts))


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("sigma", [0.0, -0.25, math.nan, math.inf, True, "0.5"])
def test_invalid_sigma_raises(sigma):
    with pytest.raises(ConfigError, match="sigma must be"):
        validate_sigma(sigma)
    with pytest.raises(ConfigError, match="sigma must be"):
        certify_from_counts(np.array([1, 0]), np.array([1, 0]), sigma, 0.001)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7, -0.1, math.nan, None])
def test_invalid_alpha_raises(alpha):
    with pytest.raises(ConfigError, match=r"alpha must be in \(0, 0.5\), got"):
        validate_alpha(alpha)
    with pytest.raises(ConfigError, match="alpha must be"):
        lower_confidence_bound(1, 2, alpha)
    with pytest.raises(ConfigError, match="alpha must be"):
        predict_from_counts(np.array([3, 1]), alpha)


def test_error_messages_say_what_was_received():
    with pytest.raises(ConfigError, match=r"^alpha must be in \(0, 0.5\), got 0.7$"):
        validate_alpha(0.7)
    with pytest.raises(ConfigError, match=r"got -0.25$"):
        validate_sigma(-0.25)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("n", [0, -3, 1.5, True, None])
def test_invalid_sample_count_raises(n):
    with pytest.raises(ConfigError, match="n0 must be an integer >= 1"):
        validate_sample_count("n0", n)
    assert validate_sample_count("n0", np.int64(7)) == 7


def test_invalid_hits_and_probabilities_raise():
    with pytest.raises(InputError, match="n_a must be an integer in"):
        lower_confidence_bound(11, 10, 0.001)
    with pytest.raises(InputError, match="n_a must be an integer in"):
        upper_confidence_bound(-1, 10, 0.001)
    with pytest.raises(ConfigError, match="n must be"):
        lower_confidence_bound(0, 0, 0.001)
    with pytest.raises(InputError, match="p_a_lower must be in"):
        radius(0.3, 0.5)
    with pytest.raises(InputError, match="p_a_lower must be in"):
        radius(math.nan, 0.5)


# ---------------------------------------------------------------------------- exactness against mpmath
def _binomial_tail(n: int, k: int, p: float):
    """P(Binomial(n, p) >= k) in mpmath at 50 digits, summing the shorter side term by term (exact up to
    that precision: I_p(k, n - k + 1) for the Clopper-Pearson lower bound)."""
    import mpmath

    with mpmath.workdps(50):
        p = mpmath.mpf(p)
        if k <= 0:
            return mpmath.mpf(1)
        lo, hi, complement = (k, n, False) if n - k + 1 <= k else (0, k - 1, True)
        term = mpmath.binomial(n, lo) * p**lo * (1 - p) ** (n - lo)
        total = term
        for j in range(lo, hi):
            term = term * (n - j) / (j + 1) * p / (1 - p)
            total += term
        return 1 - total if complement else total


def _exactness_cases() -> list[tuple[int, int, float]]:
    rng = np.random.default_rng(27)
    cases = [(n, n, 0.001) for n in (1, 2, 10, 1000, 100_000)] + [(1, 1, 1e-8), (99_990, 100_000, 1e-8)]
    for n, count in ((1, 4), (3, 8), (10, 12), (50, 12), (400, 12), (1000, 10), (10_000, 5), (100_000, 3)):
        for _ in range(count):
            n_a = int(rng.integers(max(1, n // 2), n + 1))
            cases.append((n_a, n, float(rng.choice([1e-8, 1e-5, 0.0005, 0.001, 0.01, 0.05, 0.2]))))
    return cases


def test_clopper_pearson_bounds_never_cross_the_exact_quantile():
    """Lower bound L: P(Bin(n, L) >= n_a) <= alpha, i.e. L <= the exact quantile; upper U: P(Bin(n, U) <= n_a)
    <= alpha. Both within 1e-9 (relative, in probability) of the exact level: not needlessly loose. SciPy's
    own inverse is above the exact lower quantile in about half of these cases; the rounding rests on SciPy's
    betainc being within 2^-36 (relative) of the exact CDF there, measured on the same cases."""
    scipy_above, worst = 0, 0.0
    for n_a, n, alpha in _exactness_cases():
        lower = lower_confidence_bound(n_a, n, alpha)
        level = _binomial_tail(n, n_a, lower)
        assert level <= alpha and level >= alpha * (1 - 1e-9), (n_a, n, alpha, float(level))
        raw = float(special.betaincinv(n_a, n - n_a + 1, alpha))
        exact = _binomial_tail(n, n_a, raw)
        scipy_above += exact > alpha
        worst = max(worst, abs(float((special.betainc(n_a, n - n_a + 1, raw) - exact) / exact)))
        if n_a < n:
            upper = upper_confidence_bound(n_a, n, alpha)
            miss = 1 - _binomial_tail(n, n_a + 1, upper)  # P(Bin(n, U) <= n_a)
            assert miss <= alpha and miss >= alpha * (1 - 1e-9), (n_a, n, alpha, float(miss))
    assert scipy_above >= 10  # the defect this rounding removes is real on these cases
    assert worst < 2.0**-36 / 20, worst
