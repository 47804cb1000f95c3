"""Betting confidence sequences and the anytime-valid radius: closed forms, monotonicity, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from densepure.errors import InputError
from densepure.stats.cohen import ABSTAIN, certify_from_counts, lower_confidence_bound
from densepure.stats.confseq import (
    AnytimeRadius,
    betting_lower_bound,
    betting_upper_bound,
    certify_counts,
    futile_counts,
    log_wealth_above,
    log_wealth_below,
)

TEST_LEVEL = 1e-3  # probability that a valid procedure fails a statistical check below


@pytest.mark.parametrize(("n_a", "n", "m"), [(5, 10, 0.3), (90, 100, 0.8), (0, 7, 0.4), (7, 7, 0.6), (950, 1000, 0.9)])
def test_wealth_is_the_average_of_constant_bets(n_a, n, m):
    """K_above(m) = integral over u in [0, 1] of (1 - u + u/m)^S (1 - u)^F (module docstring)."""
    value, _ = integrate.quad(lambda u: (1 - u + u / m) ** n_a * (1 - u) ** (n - n_a), 0, 1, epsrel=1e-12, limit=200)
    assert float(log_wealth_above(n_a, n, m)) == pytest.approx(math.log(value), rel=1e-9, abs=1e-12)
    assert float(log_wealth_below(n - n_a, n, 1 - m)) == pytest.approx(math.log(value), rel=1e-12)


def test_wealth_is_monotone_in_the_price_and_the_hits():
    m = np.linspace(0.05, 0.95, 91)
    for n_a, n in [(1, 1), (30, 50), (499, 500)]:
        assert np.all(np.diff([float(log_wealth_above(n_a, n, x)) for x in m]) < 0)  # decreasing in m
    hits = np.arange(201)
    assert np.all(np.diff(log_wealth_above(hits, 200, 0.8)) > 0)  # increasing in the hits


def test_boundaries_match_the_wealth():
    looks = np.array([1, 5, 40, 333, 5000])
    for t, threshold in [(0.8413, math.log(1000)), (0.5, math.log(20))]:
        up, down = certify_counts(looks, t, threshold), futile_counts(looks, t, threshold)
        for n, c, f in zip(looks, up, down, strict=True):
            s = np.arange(n + 1)
            assert c == (np.flatnonzero(log_wealth_above(s, n, t) >= threshold)[:1].tolist() or [n + 1])[0]
            assert f == (np.flatnonzero(log_wealth_below(s, n, t) >= threshold)[-1:].tolist() or [-1])[0]


def test_lower_bound_is_the_edge_of_the_rejected_set():
    alpha = 0.001
    for n_a, n in [(1, 1), (60, 100), (9900, 10_000), (100_000, 100_000)]:
        lower = betting_lower_bound(n_a, n, alpha)
        assert 0 < lower < n_a / n
        assert float(log_wealth_above(n_a, n, lower)) >= math.log(1 / alpha)  # excluded: never above the root
        assert float(log_wealth_above(n_a, n, lower * (1 + 1e-9))) < math.log(1 / alpha)
    assert betting_lower_bound(0, 50, alpha) == 0.0
    assert betting_upper_bound(60, 100, alpha) == pytest.approx(1 - betting_lower_bound(40, 100, alpha))


def _ever_excludes(p: float, alpha: float, reps: int, n: int, seed: int, bound) -> int:
    """How many of ``reps`` Bernoulli(p) streams of length n get ``bound(S_k, k) > p`` at some k."""
    rng = np.random.default_rng(seed)
    hits = np.cumsum(rng.random((reps, n)) < p, axis=1)
    return int(np.any(bound(hits, np.arange(1, n + 1)), axis=1).sum())


def test_the_sequence_covers_at_every_time_and_peeking_at_fixed_n_bounds_does_not():
    p, alpha, reps, n = 0.9, 0.05, 4000, 400
    # L_k > p  <=>  K_above(p) >= 1/alpha at (S_k, k) (monotone in m), so the event is checked on the wealth.
    anytime = _ever_excludes(p, alpha, reps, n, 1, lambda s, k: log_wealth_above(s, k, p) >= math.log(1 / alpha))
    peeking = _ever_excludes(p, alpha, reps, n, 1,
                             lambda s, k: special.betaincinv(np.maximum(s, 1), k - s + 1, alpha) > p)
    print(f"P(some L_k > p): betting {anytime / reps:.4f}, Clopper-Pearson at every k {peeking / reps:.4f}")
    assert stats.binomtest(anytime, reps, alpha, alternative="greater").pvalue >= TEST_LEVEL
    assert stats.binomtest(peeking, reps, alpha, alternative="greater").pvalue < TEST_LEVEL


def test_anytime_radius_only_grows_and_abstains_below_one_half():
    cert = AnytimeRadius(sigma=0.5, alpha=0.001, label=3)
    assert cert.certificate.label == ABSTAIN and cert.certificate.radius == 0.0
    assert cert.update(6, 10).label == ABSTAIN  # 6/10 cannot exclude p <= 1/2
    radii = [cert.update(n_a, n).radius for n_a, n in [(95, 100), (150, 200), (1140, 1200), (1180, 1300)]]
    assert radii == sorted(radii) and radii[0] > 0 and cert.certificate.label == 3
    assert radii[1] == radii[0]  # 150/200 alone would give less: the running maximum keeps the earlier bound
    assert radii[3] == radii[2] and cert.certificate.p_a_lower == betting_lower_bound(1140, 1200, 0.001)
    with pytest.raises(InputError, match="cumulative"):
        cert.update(1170, 1400)  # hits went down
    with pytest.raises(InputError, match="cumulative"):
        cert.update(1290, 1400)  # more new hits than new draws
    with pytest.raises(InputError, match="label"):
        AnytimeRadius(0.5, 0.001, -1)


@pytest.mark.parametrize(("n_a", "n", "anytime", "certify"),
                         [(100_000, 100_000, 3.7423, 3.8115), (10_000, 10_000, 3.1177, 3.1986),
                          (9900, 10_000, 2.1773, 2.2124)])
def test_anytime_radius_against_certify_at_the_same_budget(n_a, n, anytime, certify):
    """The numbers quoted in the AnytimeRadius docstring: CERTIFY is larger at its one fixed n."""
    radius = AnytimeRadius(1.0, 0.001, 0).update(n_a, n).radius
    cohen = certify_from_counts(np.array([1, 0]), np.array([n_a, n - n_a]), 1.0, 0.001).radius
    assert radius == pytest.approx(anytime, abs=1e-4) and cohen == pytest.approx(certify, abs=1e-4)
    assert radius < cohen


def _stopped_above_truth(p: float, bar: float, hits: np.ndarray, looks: np.ndarray, excludes) -> int:
    """Runs that stop once the bound passes ``bar`` (or at the budget) holding a bound above p.

    ``excludes(hits, looks, m)`` says where the bound at (S_n, n) is above m. The closer the bar is to
    p, the more the stopping rule exploits the bound's excursions (bar = p: stop at the first error)."""
    stop_rows = excludes(hits, looks, bar)
    stop = np.where(stop_rows.any(axis=1), stop_rows.argmax(axis=1), looks.size - 1)
    above = np.cumsum(excludes(hits, looks, p), axis=1)[np.arange(hits.shape[0]), stop] > 0  # running max > p
    return int(above.sum())


def test_anytime_radius_is_valid_when_the_stopping_time_chases_the_radius():
    """A client that stops as soon as the radius looks big enough still gets a wrong one at rate <= alpha;
    with Clopper-Pearson bounds recomputed at each look (valid only at a fixed n) it does not."""
    p, alpha, reps, budget = 0.95, 0.05, 4000, 600
    looks = np.arange(10, budget + 1, 10)
    hits = np.cumsum(np.random.default_rng(5).random((reps, budget)) < p, axis=1)[:, looks - 1]

    def betting(s, n, m):  # L_n > m  <=>  K_above(m) >= 1/alpha at (S_n, n): the wealth decreases in m
        return log_wealth_above(s, n, m) >= math.log(1 / alpha)

    def clopper_pearson(s, n, m):
        return special.betaincinv(np.maximum(s, 1), n - s + 1, alpha) > m

    wrong = _stopped_above_truth(p, p - 0.001, hits, looks, betting)
    broken = _stopped_above_truth(p, p - 0.001, hits, looks, clopper_pearson)
    print(f"radius above the truth at the stop: betting {wrong / reps:.4f}, Clopper-Pearson {broken / reps:.4f}")
    assert stats.binomtest(wrong, reps, alpha, alternative="greater").pvalue >= TEST_LEVEL
    assert stats.binomtest(broken, reps, alpha, alternative="greater").pvalue < TEST_LEVEL


def test_clopper_pearson_is_tighter_at_its_fixed_n():
    for n_a, n in [(50, 60), (800, 1000), (9990, 10_000)]:
        assert betting_lower_bound(n_a, n, 0.001) < lower_confidence_bound(n_a, n, 0.001)
