import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densepure.diffusion import NoiseSchedule, ScheduleKind, cosine_alpha_bar
from densepure.errors import ConfigError


def test_linear_matches_guided_diffusion_definition():
    s = NoiseSchedule(ScheduleKind.LINEAR, 1000)
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    # float64 re-derivation of abar_t as a product, one term at a time
    prod, abar = 1.0, []
    for beta in np.linspace(1e-4, 0.02, 1000):
        prod *= 1.0 - beta
        abar.append(prod)
    np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-12)


def test_cosine_discrete_betas_are_ratios_clipped_at_0999():
    s = NoiseSchedule("cosine", 4000)
    t = 1234
    expected = 1 - cosine_alpha_bar(t + 1, 4000) / cosine_alpha_bar(t, 4000)
    assert s.betas[t] == pytest.approx(expected, rel=1e-12)
    assert s.betas.max() == pytest.approx(0.999)  # the last betas are clipped
    assert s.model_time_scale == 0.25


def test_cosine_continuous_is_not_normalised_at_zero():
    assert cosine_alpha_bar(0.0, 4000) == pytest.approx(math.cos(0.008 / 1.008 * math.pi / 2) ** 2)
    assert cosine_alpha_bar(0.0, 4000) < 1.0


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown noise schedule 'sqrt'"):
        NoiseSchedule("sqrt", 1000)
    with pytest.raises(ConfigError, match="num_timesteps"):
        NoiseSchedule("linear", 1)
    with pytest.raises(ConfigError, match="needs num_timesteps >= 21"):
        NoiseSchedule("linear", 20)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(list(ScheduleKind)), T=st.integers(21, 5000))
def test_schedules_are_monotone_and_in_range(kind, T):
    s = NoiseSchedule(kind, T)
    assert np.all((s.betas > 0) & (s.betas <= 0.999))
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    assert 0 < s.alphas_cumprod[-1] < s.alphas_cumprod[0] < 1
    if kind is ScheduleKind.COSINE:
        t = np.arange(T + 1)
        assert np.all(np.diff(cosine_alpha_bar(t, T)) < 0)
