"""The exact dynamic program behind the sequential boundaries: checked against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from densepure.stats import binomial_dp
from densepure.stats.binomial_dp import crossing_bound, design_lower, design_upper, operating_characteristics


def _brute_force(looks, certify_at, futile_at, p):
    """Enumerate every draw sequence: P(certify), P(not certified), E[n], P(ever >= certify_at)."""
    n_max = looks[-1]
    pc = pf = draws = ever = 0.0
    for bits in itertools.product((0, 1), repeat=n_max):
        prob = p ** sum(bits) * (1 - p) ** (n_max - sum(bits))
        s = np.cumsum(bits)
        ever += prob * any(s[n - 1] >= c for n, c in zip(looks, certify_at, strict=True))
        for i, n in enumerate(looks):
            if s[n - 1] >= certify_at[i]:
                pc, draws = pc + prob, draws + prob * n
                break
            if s[n - 1] <= futile_at[i] or i == len(looks) - 1:
                pf, draws = pf + prob, draws + prob * n
                break
    return pc, pf, draws, ever


@pytest.mark.parametrize("seed", range(8))
def test_dynamic_program_equals_enumeration(seed):
    rng = np.random.default_rng(seed)
    n_max = 10
    looks = sorted(rng.choice(np.arange(1, n_max), size=int(rng.integers(1, 6)), replace=False).tolist()) + [n_max]
    certify_at = [int(rng.integers(n // 2, n + 2)) for n in looks]
    futile_at = [min(int(rng.integers(-1, n + 1)), c - 1) for n, c in zip(looks, certify_at, strict=True)]
    p = float(rng.uniform(0.2, 0.95))
    pc, pf, draws, ever = _brute_force(looks, certify_at, futile_at, p)
    oc = operating_characteristics(looks, certify_at, futile_at, p)
    assert oc.certify == pytest.approx(pc, abs=1e-13) and oc.futile == pytest.approx(pf, abs=1e-13)
    assert oc.expected_draws == pytest.approx(draws, abs=1e-11) and oc.unaccounted < 1e-12
    assert crossing_bound(looks, certify_at, p) == pytest.approx(ever, abs=1e-13)


def test_design_spends_at_most_its_budget_and_no_less_than_it_could():
    looks, q = (5, 10, 20, 40, 80), 0.7
    budget = np.array([0.001, 0.003, 0.006, 0.008, 0.01])
    certify_at = design_upper(looks, q, budget)
    for i in range(len(looks)):
        assert crossing_bound(looks[: i + 1], certify_at[: i + 1], q) <= budget[i]
        if certify_at[i] <= looks[i]:  # one hit fewer at look i would overspend
            lowered = certify_at[:i] + (certify_at[i] - 1,)
            assert crossing_bound(looks[: i + 1], lowered, q) > budget[i]
    futile_at = design_lower(looks, q, budget)
    mirrored = design_upper(looks, 1 - q, budget)  # hits <= f  <=>  misses >= n - f
    assert futile_at == tuple(n - c for n, c in zip(looks, mirrored, strict=True))


def test_a_single_look_is_the_binomial_tail():
    n, q, budget = 400, 0.84, 1e-3
    (c,) = design_upper((n,), q, (budget,))
    assert stats.binom.sf(c - 1, n, q) <= budget < stats.binom.sf(c - 2, n, q)
    assert crossing_bound((n,), (c,), q) == pytest.approx(stats.binom.sf(c - 1, n, q), rel=1e-9)


def test_fft_and_direct_convolution_agree(monkeypatch):
    looks = (2000, 5000, 20_000, 60_000)
    certify_at = design_upper(looks, 0.9, (2e-4, 4e-4, 7e-4, 1e-3))
    fft = crossing_bound(looks, certify_at, 0.9)
    monkeypatch.setattr(binomial_dp, "_DIRECT_MAX", 10**12)
    assert crossing_bound(looks, certify_at, 0.9) == pytest.approx(fft, rel=1e-9, abs=1e-18)
    assert fft <= 1e-3


def test_operating_characteristics_rejects_degenerate_p():
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\)"):
        operating_characteristics((10,), (10,), (-1,), 1.0)
