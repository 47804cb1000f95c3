"""Statistical validity of the default sequential test (issue 19): known p, seeded, checked to fail when broken.

A wrong certification is CERTIFIED while the selected class's hit rate is below t = Phi(r / sigma).
Each check is a one-sided exact binomial test of "wrong-certification rate <= alpha" at level 1e-3,
so a valid procedure fails it with probability <= 1e-3 for any seed; the same check must reject a
deliberately broken procedure (the fixed-n Clopper-Pearson bound at full alpha, peeked at every
look), so it has power. The hardest null points sit just below the threshold: p = t - 0.005.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from densepure.errors import ConfigError
from densepure.stats import binomial_dp
from densepure.stats.boundary import DEFAULT_METHOD, BoundaryPlan, build_plan
from densepure.stats.sequential import run_sequential

TEST_LEVEL = 1e-3


def _excess_pvalue(wrong: int, trials: int, alpha: float) -> float:
    return stats.binomtest(wrong, trials, alpha, alternative="greater").pvalue


def _peeking_boundaries(looks: tuple[int, ...], t: float, alpha: float) -> tuple[int, ...]:
    """Certify at a look when the fixed-n (1 - alpha) Clopper-Pearson bound reaches t: no correction."""
    out = []
    for n in looks:
        s = np.arange(n + 1)
        lower = np.where(s > 0, special.betaincinv(np.maximum(s, 1), n - s + 1, alpha), 0.0)
        out.append(int(np.argmax(lower >= t)) if lower[-1] >= t else n + 1)
    return tuple(out)


def _certifications(looks, certify_at, futile_at, p: float, reps: int, seed: int) -> int:
    """Runs (of ``reps``) that certify; counts at the looks drawn as Binomial increments (exact law)."""
    rng = np.random.default_rng(seed)
    hits, running, certified, prev = np.zeros(reps, dtype=np.int64), np.ones(reps, dtype=bool), 0, 0
    for i, n in enumerate(looks):
        hits += rng.binomial(n - prev, p, size=reps)
        prev = n
        up = running & (hits >= certify_at[i])
        certified += int(up.sum())
        running &= ~up & (hits > futile_at[i])
    return certified


def test_wrong_certification_rate_is_at_most_alpha_just_below_the_threshold():
    alpha, reps = 0.001, 20_000
    plan = build_plan(DEFAULT_METHOD, 0.25, 0.25, alpha, n_max=10_000)
    p = plan.target - 0.005
    wrong = _certifications(plan.looks, plan.certify_at, plan.futile_at, p, reps, seed=19)
    exact = binomial_dp.crossing_bound(plan.looks, plan.certify_at, p)
    print(f"default plan at p = t - 0.005: wrong certifications {wrong / reps:.5f} (exact bound {exact:.5f}, "
          f"alpha = {alpha})")
    assert exact <= alpha and binomial_dp.crossing_bound(plan.looks, plan.certify_at, plan.target) <= alpha
    assert _excess_pvalue(wrong, reps, alpha) >= TEST_LEVEL


def test_the_check_rejects_peeking_with_a_fixed_n_bound():
    alpha, reps = 0.001, 20_000
    plan = build_plan(DEFAULT_METHOD, 0.25, 0.25, alpha, n_max=10_000)
    broken = _peeking_boundaries(plan.looks, plan.target, alpha)
    wrong = _certifications(plan.looks, broken, plan.futile_at, plan.target - 0.005, reps, seed=20)
    print(f"Clopper-Pearson at full alpha at each of {len(plan.looks)} looks: wrong certifications {wrong / reps:.5f}")
    assert _excess_pvalue(wrong, reps, alpha) < TEST_LEVEL
    futile_at = tuple(min(f, c - 1) for f, c in zip(plan.futile_at, broken, strict=True))
    with pytest.raises(ConfigError, match="more than alpha"):  # ... and a plan with them refuses to exist
        BoundaryPlan(plan.radius, plan.sigma, alpha, plan.looks, broken, futile_at)


def _selected_runs(plan, p_top: float, reps: int, seed: int, n0: int = 16) -> tuple[int, int]:
    """The full procedure on a 3-class oracle: select c_hat from n0 independent draws, then run the
    real state machine on fresh draws of c_hat. Returns (certifications, wrong ones)."""
    rng = np.random.default_rng(seed)
    probs = np.array([p_top, (1 - p_top) * 0.7, (1 - p_top) * 0.3])
    certified = wrong = 0
    for _ in range(reps):
        c_hat = int(np.argmax(rng.multinomial(n0, probs)))
        result = run_sequential(lambda k, q=probs[c_hat]: int(rng.binomial(k, q)), plan, label=c_hat)
        certified += result.certified
        wrong += result.certified and probs[c_hat] < plan.target
    return certified, wrong


@pytest.mark.slow
def test_the_state_machine_with_selection_is_valid_and_the_broken_one_is_not():
    """Through run_sequential (the real decisions, one input at a time) at alpha = 0.1."""
    alpha, reps = 0.1, 1500
    plan = BoundaryPlan.exact(0.25, 0.25, alpha, n_max=2000)
    _, wrong = _selected_runs(plan, plan.target - 0.005, reps, seed=3)
    print(f"state machine with selection: wrong certifications {wrong / reps:.4f} (alpha = {alpha})")
    assert _excess_pvalue(wrong, reps, alpha) >= TEST_LEVEL
    unchecked = object.__new__(BoundaryPlan)  # the exact check would refuse these boundaries: bypass it
    broken = _peeking_boundaries(plan.looks, plan.target, alpha)
    for name in ("radius", "sigma", "alpha", "looks", "method"):
        object.__setattr__(unchecked, name, getattr(plan, name))
    object.__setattr__(unchecked, "certify_at", broken)
    object.__setattr__(unchecked, "futile_at", tuple(min(f, c - 1) for f, c in zip(plan.futile_at, broken, strict=True)))
    _, wrong_broken = _selected_runs(unchecked, plan.target - 0.005, reps, seed=4)
    print(f"peeking Clopper-Pearson with selection: wrong certifications {wrong_broken / reps:.4f}")
    assert _excess_pvalue(wrong_broken, reps, alpha) < TEST_LEVEL


def test_points_comfortably_above_the_threshold_are_certified():
    plan = BoundaryPlan.exact(0.25, 0.25, 0.1, n_max=2000)
    certified, wrong = _selected_runs(plan, float(special.ndtr(1.3)), 300, seed=5)
    assert wrong == 0 and certified >= 0.97 * 300
