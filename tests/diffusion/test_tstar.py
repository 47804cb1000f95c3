import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densepure.diffusion import NoiseSchedule, TStarRule, cosine_alpha_bar, start_scale, t_star
from densepure.diffusion.tstar import t_star_dds, t_star_nearest
from densepure.errors import ConfigError

COSINE = NoiseSchedule("cosine", 4000)
LINEAR = NoiseSchedule("linear", 1000)


@pytest.mark.parametrize("sigma,expected", [(0.12, 573.44), (0.25, 1158.51), (0.5, 1984.20), (1.0, 2809.99)])
def test_closed_form_reference_values(sigma, expected):
    assert t_star(sigma, COSINE) == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize("sigma,expected", [(0.12, 70), (0.25, 144), (0.5, 258), (1.0, 396)])
def test_nearest_crossing_reference_values(sigma, expected):
    assert t_star(sigma, LINEAR) == expected
    assert t_star(sigma, LINEAR, TStarRule.NEAREST) == expected


def test_closed_form_makes_the_continuous_alpha_bar_match_the_start_scale():
    # abar(t*) / abar(0) = a: the scaled noisy image is a forward sample at t*
    for sigma in (0.12, 0.25, 0.5, 1.0):
        ts = t_star(sigma, COSINE)
        ratio = cosine_alpha_bar(ts, 4000) / cosine_alpha_bar(0.0, 4000)
        assert ratio == pytest.approx(start_scale(sigma), rel=1e-10)


def test_dds_rule_is_the_first_crossing():
    for sigma in (0.25, 0.5):
        t = t_star_dds(sigma, LINEAR)
        r = np.sqrt((1 - LINEAR.alphas_cumprod) / LINEAR.alphas_cumprod)
        assert r[t] >= 2 * sigma and (t == 1 or r[t - 1] < 2 * sigma)
    assert t_star(0.5, LINEAR, TStarRule.DDS) in (258.0, 259.0)


def test_invalid_inputs():
    for bad in (0.0, -0.25, float("nan"), float("inf"), "x"):
        with pytest.raises(ConfigError, match="sigma must be"):
            t_star(bad, COSINE)
    with pytest.raises(ConfigError, match="closed-form"):
        t_star(0.25, LINEAR, TStarRule.CLOSED_FORM)
    with pytest.raises(ConfigError, match="beyond this schedule"):
        t_star_dds(1000.0, LINEAR)


def test_no_crossing_gives_last_step():
    assert t_star_nearest(1000.0, LINEAR) == 999


@settings(max_examples=60, deadline=None)
@given(s1=st.floats(0.01, 2.0), s2=st.floats(0.01, 2.0))
def test_t_star_is_monotone_in_sigma(s1, s2):
    lo, hi = sorted((s1, s2))
    assert t_star(lo, COSINE) <= t_star(hi, COSINE)
    assert t_star(lo, LINEAR) <= t_star(hi, LINEAR)
    assert t_star_dds(lo, LINEAR) <= t_star_dds(hi, LINEAR)
    assert 0 < t_star(lo, COSINE) < 4000


@settings(max_examples=60, deadline=None)
@given(sigma=st.floats(0.02, 1.5))
def test_nearest_crossing_is_nearest(sigma):
    r = np.sqrt(1 / LINEAR.alphas_cumprod - 1)
    t = int(t_star(sigma, LINEAR))
    # no integer timestep has a noise ratio closer to 2 sigma than t's neighbour choice
    assert abs(r[t] - 2 * sigma) <= min(abs(r[t - 1] - 2 * sigma), abs(r[t + 1] - 2 * sigma)) + 1e-12
    assert math.isclose(start_scale(sigma), 1 / (1 + 4 * sigma**2))
