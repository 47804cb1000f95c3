"""Sequential certification of a requested radius: plans, the state machine, efficiency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import special

from densepure.errors import ConfigError, InputError
from densepure.stats.cohen import (
    ABSTAIN,
    certify_from_counts,
    lower_confidence_bound,
    max_certifiable_radius,
    upper_confidence_bound,
)
from densepure.stats.sequential import (
    AlphaSpending,
    SequentialDecision,
    SequentialPlan,
    SequentialResult,
    SequentialTest,
    run_sequential,
)

C, N = SequentialDecision.CERTIFIED, SequentialDecision.NOT_CERTIFIED


def _binomial_sampler(p: float, seed: int):
    rng = np.random.default_rng(seed)
    return lambda k: int(rng.binomial(k, p))


# ---------------------------------------------------------------------------- plans
def test_default_geometric_plan():
    plan = SequentialPlan.geometric(radius=0.5, sigma=0.5, alpha=0.001)
    assert plan.looks == (79, 157, 313, 625, 1250, 2500, 5000, 10_000)
    assert plan.n_max == 10_000 and plan.target == pytest.approx(special.ndtr(1.0))
    assert math.fsum(plan.alphas) <= 0.001
    # Linear spending: alpha spent by look i is alpha * n_i / n_max; the last look keeps alpha / 2.
    assert np.cumsum(plan.alphas) == pytest.approx(0.001 * np.array(plan.looks) / 10_000, rel=1e-9)
    assert plan.alphas[-1] == pytest.approx(0.0005)
    # first=None keeps only looks that can certify: the first can, a look at half of it cannot.
    assert lower_confidence_bound(79, 79, plan.alphas[0]) >= plan.target
    assert lower_confidence_bound(40, 40, 0.001 * 40 / 10_000) < plan.target


def test_geometric_plan_options():
    plan = SequentialPlan.geometric(0.5, 0.5, 0.001, first=11, growth=4.0)
    assert plan.looks == (40, 157, 625, 2500, 10_000)
    equal = SequentialPlan.geometric(0.5, 0.5, 0.001, spending=AlphaSpending.EQUAL)
    assert len(set(equal.alphas)) == 1 and math.fsum(equal.alphas) <= 0.001
    # A radius only reachable with all of alpha at n_max degenerates to one CERTIFY-like look.
    plan = SequentialPlan.geometric(3.0, 1.0, 0.001)
    assert plan.looks == (10_000,) and plan.alphas == (0.001,)


def test_linear_spending_sums_to_at_most_alpha_despite_rounding():
    for alpha in (0.1, 0.001, 0.0123456789, 1 / 3 - 1e-9):
        for n_max in (50, 997, 10_000, 123_457):
            plan = SequentialPlan.geometric(0.0, 1.0, alpha, n_max=n_max, first=1, growth=1.7)
            assert math.fsum(plan.alphas) <= alpha
            assert all(b > a for a, b in zip(plan.looks, plan.looks[1:], strict=False))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(radius=-0.1), "radius must be a finite number >= 0, got -0.1"),
        (dict(radius=math.inf), "radius must be"),
        (dict(sigma=0.0), "sigma must be"),
        (dict(alpha=0.5), r"alpha must be in \(0, 0.5\), got 0.5"),
        (dict(looks=()), "at least one"),
        (dict(looks=(100, 100, 1000), alphas=(1e-4, 1e-4, 1e-4)), "strictly increasing"),
        (dict(looks=(1000, 100)), "strictly increasing"),
        (dict(looks=(0, 1000)), "each look must be an integer >= 1, got 0"),
        (dict(looks=(100.0, 1000)), "each look must be an integer"),
        (dict(alphas=(1e-4,)), "one level per look"),
        (dict(alphas=(0.0, 1e-3)), r"each per-look alpha must be in \(0, 0.5\)"),
        (dict(alphas=(6e-4, 6e-4)), "sum to <= alpha"),
        (dict(radius=5.0), "radius 5.0 cannot be certified"),
    ],
)
def test_invalid_plans_raise_config_error(kwargs, message):
    base = dict(radius=0.5, sigma=0.5, alpha=0.001, looks=(100, 1000), alphas=(5e-4, 5e-4))
    with pytest.raises(ConfigError, match=message):
        SequentialPlan(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(growth=1.0), "growth must be a finite number > 1"),
        (dict(n_max=0), "n_max must be an integer >= 1"),
        (dict(first=20_000), "first must be <= n_max"),
        (dict(spending="linear"), "spending must be an AlphaSpending"),
        (dict(alpha=0.7), r"alpha must be in \(0, 0.5\), got 0.7"),
        (dict(sigma=-1.0), "sigma must be"),
    ],
)
def test_invalid_geometric_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SequentialPlan.geometric(**{**dict(radius=0.5, sigma=0.5, alpha=0.001), **kwargs})


# ---------------------------------------------------------------------------- state machine
PLAN = SequentialPlan(radius=0.5, sigma=0.5, alpha=0.01, looks=(100, 1000, 10_000), alphas=(0.001, 0.003, 0.006))


def test_state_machine_walks_the_looks_and_certifies():
    test = SequentialTest(PLAN, label=3)
    assert test.next_look == 100 and test.result is None
    assert test.update(80, 100) is SequentialDecision.CONTINUE  # bounds straddle Phi(1) = 0.841
    assert test.next_look == 1000
    assert test.update(900, 1000) is C
    assert test.next_look is None
    assert test.result == SequentialResult(
        decision=C,
        label=3,
        radius_requested=0.5,
        n_used=1000,
        n_a=900,
        p_a_lower=lower_confidence_bound(900, 1000, 0.003),
        p_a_upper=upper_confidence_bound(900, 1000, 0.003),
        look=1,
    )
    assert test.result.certified


def test_state_machine_stops_for_futility():
    test = SequentialTest(PLAN, label=0)
    assert upper_confidence_bound(60, 100, 0.001) < PLAN.target
    assert test.update(60, 100) is N
    assert test.result.label == ABSTAIN and test.result.n_used == 100 and not test.result.certified


def test_last_look_never_continues():
    test = SequentialTest(PLAN, label=0)
    test.update(84, 100)
    test.update(841, 1000)
    # 8412 / 10000: neither bound excludes the target, but this is the last look.
    assert lower_confidence_bound(8412, 10_000, 0.006) < PLAN.target < upper_confidence_bound(8412, 10_000, 0.006)
    assert test.update(8412, 10_000) is N
    assert test.result.look == 2 and test.next_look is None


def test_update_must_follow_the_plan():
    test = SequentialTest(PLAN, label=0)
    with pytest.raises(InputError, match="next look n=100, got n=50"):
        test.update(40, 50)
    test.update(80, 100)
    with pytest.raises(InputError, match="cumulative"):
        test.update(70, 1000)  # fewer hits than before
    with pytest.raises(InputError, match="cumulative"):
        test.update(80 + 901, 1000)  # more new hits than new samples
    test.update(980, 1000)
    with pytest.raises(InputError, match="already stopped"):
        test.update(10_000, 10_000)
    with pytest.raises(InputError, match="label"):
        SequentialTest(PLAN, label=-1)
    with pytest.raises(ConfigError, match="plan must be a SequentialPlan"):
        SequentialTest("plan", label=0)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 20_000), frac=st.floats(0.0, 1.0), alpha=st.floats(1e-6, 0.2), r_frac=st.floats(0.0, 1.0))
def test_a_one_look_plan_agrees_with_certify(n, frac, alpha, r_frac):
    sigma = 0.5
    r_max = max_certifiable_radius(n, alpha, sigma)
    assume(r_max >= 0.0)  # otherwise even n hits of n cannot certify radius 0
    r = r_frac * r_max
    plan = SequentialPlan(radius=r, sigma=sigma, alpha=alpha, looks=(n,), alphas=(alpha,))
    n_a = round(frac * n)
    decision = SequentialTest(plan, label=0).update(n_a, n)
    cert = certify_from_counts(np.array([1, 0]), np.array([n_a, n - n_a]), sigma, alpha)
    if decision is C:
        assert not cert.abstained and cert.radius >= r - 1e-9
    else:
        assert cert.abstained or cert.radius < r + 1e-9


def test_run_sequential_checks_the_sampler():
    with pytest.raises(InputError, match=r"sample_fn\(100\) must return an integer in \[0, 100\]"):
        run_sequential(lambda k: k + 1, PLAN, label=0)
    with pytest.raises(InputError, match="must return an integer"):
        run_sequential(lambda k: 0.5 * k, PLAN, label=0)
    result = run_sequential(lambda k: k, PLAN, label=1)
    assert result.certified and result.n_used == 100 and result.label == 1


# ---------------------------------------------------------------------------- efficiency
@pytest.mark.parametrize("p_a", [0.99, 0.999])
def test_high_margin_points_certify_with_10x_fewer_draws(p_a):
    plan = SequentialPlan.geometric(radius=0.5, sigma=0.5, alpha=0.001, n_max=10_000)
    sample = _binomial_sampler(p_a, seed=11)
    results = [run_sequential(sample, plan, label=0) for _ in range(400)]
    mean_draws = float(np.mean([r.n_used for r in results]))
    print(f"p_A={p_a}: certified {np.mean([r.certified for r in results]):.3f}, mean draws {mean_draws:.1f}")
    assert all(r.certified for r in results)
    assert mean_draws <= 10_000 / 10


def test_hopeless_points_stop_early_not_certified():
    plan = SequentialPlan.geometric(radius=0.5, sigma=0.5, alpha=0.001, n_max=10_000)
    for p_a, budget in [(0.5, 200), (0.7, 600)]:
        sample = _binomial_sampler(p_a, seed=12)
        results = [run_sequential(sample, plan, label=0) for _ in range(300)]
        mean_draws = float(np.mean([r.n_used for r in results]))
        print(f"p_A={p_a} (target {plan.target:.3f}): mean draws {mean_draws:.1f}")
        assert not any(r.certified for r in results)
        assert mean_draws <= budget
