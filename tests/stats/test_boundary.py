"""Boundary plans (exact alpha spending, betting) and their state machine: construction, decisions, draws."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import special

from densepure.errors import ConfigError, InputError
from densepure.stats import binomial_dp
from densepure.stats.boundary import DEFAULT_METHOD, BoundaryPlan, BoundaryTest, build_plan, default_looks
from densepure.stats.cohen import ABSTAIN, lower_confidence_bound, upper_confidence_bound
from densepure.stats.confseq import betting_lower_bound, betting_upper_bound
from densepure.stats.sequential import (
    SequentialDecision,
    SequentialMethod,
    SequentialPlan,
    SequentialTest,
    run_sequential,
)

C, N, GO = SequentialDecision.CERTIFIED, SequentialDecision.NOT_CERTIFIED, SequentialDecision.CONTINUE


# ---------------------------------------------------------------------------- looks and plans
@pytest.mark.parametrize("n_max", [1, 3, 4, 5, 63, 64, 65, 100, 999, 10_000, 100_000])
def test_default_looks(n_max):
    looks = default_looks(n_max)
    assert looks[-1] == n_max and all(b > a for a, b in itertools.pairwise(looks))
    assert looks[: min(len(looks) - 1, 16)] == tuple(range(4, 4 * min(len(looks) - 1, 16) + 1, 4))
    assert len(looks) == {10_000: 69, 100_000: 93}.get(n_max, len(looks))


def test_exact_plan_spends_alpha_and_no_more():
    plan = BoundaryPlan.exact(radius=0.25, sigma=0.25, alpha=0.001, n_max=10_000)
    # looks where no count can stop (here: 4, where neither 4 hits nor 0 can decide) are dropped
    assert plan.method is SequentialMethod.EXACT and plan.looks == default_looks(10_000)[1:]
    assert plan.target == pytest.approx(special.ndtr(1.0)) and plan.n_max == 10_000
    error = binomial_dp.crossing_bound(plan.looks, plan.certify_at, plan.target)
    assert 0.999 * 0.001 < error <= 0.001  # the whole level is used, none of it twice
    # n_c = ln(alpha) / ln(t) = 40: no look before it can certify; the first that can needs every draw to hit.
    first = next(i for i, (n, c) in enumerate(zip(plan.looks, plan.certify_at, strict=True)) if c <= n)
    assert plan.looks[first] > math.log(0.001) / math.log(plan.target) and plan.certify_at[first] == plan.looks[first]
    assert BoundaryPlan.exact(0.25, 0.25, 0.001, 10_000) is plan  # cached


def test_futility_boundaries_include_curtailment():
    plan = BoundaryPlan.exact(0.25, 0.25, 0.001, n_max=1000)
    for i, (n, c, f) in enumerate(zip(plan.looks, plan.certify_at, plan.futile_at, strict=True)):
        assert -1 <= f < c
        if i + 1 < len(plan.looks):  # from any count above f, some later look is still reachable
            assert any(f + 1 + (m - n) >= c_later for m, c_later in zip(plan.looks[i + 1 :], plan.certify_at[i + 1 :], strict=False))
    assert plan.futile_at[-1] == plan.certify_at[-1] - 1


def test_a_larger_futility_level_stops_hopeless_points_sooner():
    strict = BoundaryPlan.exact(0.5, 0.25, 0.001, 10_000)
    loose = BoundaryPlan.exact(0.5, 0.25, 0.001, 10_000, futility_alpha=0.05)
    assert loose.operating_characteristics(0.9).expected_draws < strict.operating_characteristics(0.9).expected_draws
    assert loose.certify_at == strict.certify_at


def test_final_share_keeps_alpha_for_the_last_look():
    plan = BoundaryPlan.exact(0.25, 0.25, 0.001, 10_000, final_share=0.3)
    default = BoundaryPlan.exact(0.25, 0.25, 0.001, 10_000)
    near = 0.8413 + 0.009
    assert plan.operating_characteristics(near).certify > default.operating_characteristics(near).certify + 0.05
    assert plan.operating_characteristics(0.99).expected_draws > default.operating_characteristics(0.99).expected_draws


def test_betting_plan_is_the_wealth_crossing():
    plan = BoundaryPlan.betting(0.25, 0.25, 0.001, n_max=10_000)
    assert plan.method is SequentialMethod.BETTING
    # Ville: the exact error is well below alpha (the overshoot the exact plan does not waste).
    assert binomial_dp.crossing_bound(plan.looks, plan.certify_at, plan.target) < 0.6 * 0.001
    assert all(c >= e for c, e in zip(plan.certify_at, BoundaryPlan.exact(0.25, 0.25, 0.001).certify_at, strict=True) if c <= 10_000)


BASE = {"radius": 0.5, "sigma": 0.5, "alpha": 0.01, "looks": (100, 1000), "certify_at": (100, 900),
        "futile_at": (50, 899)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"radius": -1.0}, "radius must be a finite number >= 0, got -1.0"),
        ({"alpha": 0.6}, r"alpha must be in \(0, 0.5\), got 0.6"),
        ({"looks": ()}, "at least one"),
        ({"looks": (1000, 100)}, "strictly increasing"),
        ({"certify_at": (100,)}, "one integer per look"),
        ({"futile_at": (50.0, 899)}, "one integer per look"),
        ({"certify_at": (102, 900)}, r"0 <= certify_at <= 101"),
        ({"futile_at": (100, 899)}, "futile_at < certify_at"),
        ({"certify_at": (101, 1001)}, "cannot be certified by this plan"),
        ({"certify_at": (90, 870), "futile_at": (50, 869)}, r"certify with probability .* more than alpha = 0.01"),
        ({"method": SequentialMethod.GEOMETRIC}, "method must be SequentialMethod.EXACT or BETTING"),
    ],
)
def test_invalid_plans_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BoundaryPlan(**{**BASE, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_max": 0}, "n_max must be an integer >= 1, got 0"),
        ({"futility_alpha": 0.5}, r"futility_alpha must be in \(0, 0.5\)"),
        ({"spending_power": 0.0}, r"spending_power must be in \(0, 1\]"),
        ({"final_share": 1.0}, r"final_share must be in \[0, 1\)"),
        ({"looks": (10, 100)}, "end at n_max=1000"),
        ({"looks": (100, 10, 1000)}, "strictly increasing"),
        ({"radius": 4.0}, "radius 4.0 cannot be certified by this plan"),
        ({"radius": 100.0}, "beyond what any number of draws can certify"),
    ],
)
def test_invalid_builder_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BoundaryPlan.exact(**{"radius": 0.5, "sigma": 0.5, "alpha": 0.001, "n_max": 1000, **kwargs})


def test_build_plan_dispatches_on_the_method():
    assert DEFAULT_METHOD is SequentialMethod.EXACT
    assert isinstance(build_plan(SequentialMethod.EXACT, 0.25, 0.25, 0.001, 1000), BoundaryPlan)
    assert build_plan(SequentialMethod.BETTING, 0.25, 0.25, 0.001, 1000).method is SequentialMethod.BETTING
    geometric = build_plan(SequentialMethod.GEOMETRIC, 0.25, 0.25, 0.001, 1000)
    assert geometric == SequentialPlan.geometric(0.25, 0.25, 0.001, n_max=1000)
    assert geometric.method is SequentialMethod.GEOMETRIC and isinstance(geometric.start(0), SequentialTest)
    with pytest.raises(ConfigError, match="method must be a SequentialMethod"):
        build_plan("exact", 0.25, 0.25, 0.001)


def test_geometric_count_boundaries_are_its_decisions():
    """SequentialTest certifies at look i iff LowerConfBound(n_a, n_i, alpha_i) >= t, and stops for futility
    iff UpperConfBound < t: both monotone in n_a, so each is one count threshold."""
    plan = SequentialPlan.geometric(0.5, 0.5, 0.01, n_max=2000)
    certify_at, futile_at = plan.count_boundaries()
    for n, level, c, f in zip(plan.looks, plan.alphas, certify_at, futile_at, strict=True):
        for n_a in range(max(0, f - 3), min(n, c + 3) + 1):
            assert (lower_confidence_bound(n_a, n, level) >= plan.target) == (n_a >= c)
            assert (upper_confidence_bound(n_a, n, level) < plan.target) == (n_a <= f)


# ---------------------------------------------------------------------------- state machine
PLAN = BoundaryPlan(**BASE)


def test_state_machine_walks_the_looks():
    test = PLAN.start(label=2)
    assert isinstance(test, BoundaryTest) and test.next_look == 100 and test.result is None
    assert test.update(80, 100) is GO and test.next_look == 1000
    assert test.update(905, 1000) is C and test.next_look is None
    result = test.result
    assert result.certified and result.label == 2 and (result.n_used, result.n_a, result.look) == (1000, 905, 1)
    assert result.p_a_lower == betting_lower_bound(905, 1000, 0.01)
    assert result.p_a_upper == betting_upper_bound(905, 1000, 0.01)


@pytest.mark.parametrize(("counts", "decisions"), [
    ([(50, 100)], [N]),  # at the futility boundary
    ([(51, 100), (899, 1000)], [GO, N]),  # the last look never continues
    ([(100, 100)], [C]),
])
def test_state_machine_decisions(counts, decisions):
    test = PLAN.start(label=0)
    assert [test.update(n_a, n) for n_a, n in counts] == decisions
    assert test.result.label == (0 if decisions[-1] is C else ABSTAIN)


def test_update_must_follow_the_plan():
    test = PLAN.start(label=0)
    with pytest.raises(InputError, match="next look n=100, got n=50"):
        test.update(40, 50)
    test.update(80, 100)
    with pytest.raises(InputError, match="cumulative"):
        test.update(70, 1000)
    with pytest.raises(InputError, match="cumulative"):
        test.update(80 + 901, 1000)
    test.update(980, 1000)
    with pytest.raises(InputError, match="already stopped"):
        test.update(1000, 1000)
    with pytest.raises(InputError, match="label"):
        BoundaryTest(PLAN, label=-1)
    with pytest.raises(ConfigError, match="plan must be a BoundaryPlan"):
        BoundaryTest("plan", label=0)


def test_run_sequential_drives_any_plan():
    result = run_sequential(lambda k: k, PLAN, label=4)
    assert result.certified and result.n_used == 100 and result.label == 4
    with pytest.raises(ConfigError, match="must be a sequential plan"):
        run_sequential(lambda k: k, object(), label=0)


def _draw_label(seed: int, draw: int, p: float) -> int:
    """The label of draw j depends only on (seed, j), like the engine's Philox noise."""
    return int(np.random.default_rng([seed, draw]).random() < p)


def test_decisions_do_not_depend_on_batching_or_arrival_order():
    """Draws issued in batches of any size (never beyond the next look), labels arriving shuffled."""
    plan = BoundaryPlan.exact(0.3, 0.5, 0.01, n_max=600)
    for seed in range(6):
        answers = set()
        for batch in (1, 3, 17, 600):
            rng, test, hits, issued = np.random.default_rng(batch), plan.start(1), 0, 0
            while test.next_look is not None:
                stop = min(issued + batch, test.next_look)
                arrivals = rng.permutation(np.arange(issued, stop))
                hits += sum(_draw_label(seed, int(d), 0.8) for d in arrivals)
                issued = stop
                if issued == test.next_look:
                    test.update(hits, issued)
            answers.add(test.result)
        assert len(answers) == 1


# ---------------------------------------------------------------------------- draws (exact, no simulation)
# The betting confidence sequence's mean draws measured in issue 19 (alpha = 0.001, n_max = 100,000).
ISSUE_BETTING_CS = {(1, 0.90): 612, (1, 0.95): 144, (1, 0.99): 62, (1, 0.999): 52, (2, 0.99): 2085,
                    (2, 0.999): 492, (2, 0.9999): 434, (1, 0.85): 38_695}
ISSUE_FUTILITY = {(2, 0.80): 32, (2, 0.85): 51, (2, 0.90): 118}


@pytest.mark.parametrize("r", [1, 2])
def test_expected_draws_beat_the_issue_table(r):
    plan = build_plan(DEFAULT_METHOD, r * 0.25, 0.25, 0.001, n_max=100_000)
    for (rr, p), draws in {**ISSUE_BETTING_CS, **ISSUE_FUTILITY}.items():
        if rr == r:
            oc = plan.operating_characteristics(p)
            limit = draws if p > plan.target else 1.1 * draws
            print(f"r={r} sigma, p={p}: expected draws {oc.expected_draws:.1f} (issue's betting CS {draws})")
            assert oc.expected_draws <= limit and (oc.certify > 0.99) == (p > plan.target)
