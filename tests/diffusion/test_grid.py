import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densepure.diffusion import NoiseSchedule, build_reverse_grid, coarse_timesteps, cosine_alpha_bar, t_star
from densepure.errors import ConfigError

COSINE = NoiseSchedule("cosine", 4000)
LINEAR = NoiseSchedule("linear", 1000)


def test_golden_timesteps():
    assert coarse_timesteps(t_star(0.25, COSINE), 2).tolist() == [1159, 579]
    assert coarse_timesteps(t_star(0.5, COSINE), 3).tolist() == [1984, 1323, 661]
    assert coarse_timesteps(258, 2).tolist() == [258, 129]


def test_python_rounding_halves_to_even():
    assert coarse_timesteps(5.0, 2).tolist() == [5, 2]  # 2.5 -> 2
    assert coarse_timesteps(7.0, 2).tolist() == [7, 4]  # 3.5 -> 4


def test_grid_float64_rederivation_b3():
    ts = t_star(0.5, COSINE)
    grid = build_reverse_grid(COSINE, ts, 3)
    g = [0, 661, 1323, 1984]
    ab = [cosine_alpha_bar(t, 4000) for t in g]
    betas = [min(1 - ab[k + 1] / ab[k], 0.999) for k in range(3)]
    abar_k = np.cumprod([1 - b for b in betas])
    # step i uses coarse k = 2 - i
    for i in range(3):
        k = 2 - i
        prev = abar_k[k - 1] if k else 1.0
        assert grid.betas[i] == pytest.approx(betas[k], rel=1e-12)
        assert grid.coef1[i] == pytest.approx(betas[k] * np.sqrt(prev) / (1 - abar_k[k]), rel=1e-12)
        assert grid.coef2[i] == pytest.approx((1 - prev) * np.sqrt(1 - betas[k]) / (1 - abar_k[k]), rel=1e-12)
    var1 = betas[1] * (1 - abar_k[0]) / (1 - abar_k[1])
    assert grid.logvar_clipped[2] == pytest.approx(np.log(var1))  # k=0 takes var_1
    assert grid.logvar_clipped[1] == pytest.approx(np.log(var1))
    assert grid.has_noise.tolist() == [True, True, False]
    assert grid.coef1[-1] == pytest.approx(1.0) and grid.coef2[-1] == pytest.approx(0.0)
    np.testing.assert_allclose(grid.model_times, [1984 / 4, 1323 / 4, 661 / 4])


def test_invalid_b():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="b "):
            build_reverse_grid(COSINE, 100.0, bad)
    with pytest.raises(ConfigError, match="do not fit below t"):
        build_reverse_grid(LINEAR, 3.0, 5)


@settings(max_examples=80, deadline=None)
@given(sigma=st.floats(0.05, 1.2), b=st.integers(1, 12), cosine=st.booleans())
def test_grid_properties(sigma, b, cosine):
    schedule = COSINE if cosine else LINEAR
    ts = t_star(sigma, schedule)
    grid = build_reverse_grid(schedule, ts, b)
    assert grid.num_steps == b
    assert np.all(np.diff(grid.taus) < 0) and grid.taus[-1] >= 1 and grid.taus[0] == round(ts)
    assert np.all((grid.betas > 0) & (grid.betas <= 0.999))
    # abar' decreases with the coarse index, i.e. increases along the reverse steps
    assert np.all(np.diff(grid.alphas_cumprod) > 0)
    assert np.all((grid.alphas_cumprod > 0) & (grid.alphas_cumprod <= 1))
    np.testing.assert_allclose(grid.sqrt_recip_alphas_cumprod ** 2 - 1, grid.sqrt_recipm1_alphas_cumprod ** 2, rtol=1e-9)
    if b >= 2:
        assert np.all(grid.logvar_clipped <= grid.log_betas + 1e-12)  # posterior variance <= beta
    # abar' at the first reverse step is the schedule's abar(tau_0) relative to abar(0) (no clipping here)
    if cosine and grid.betas.max() < 0.999:
        expected = cosine_alpha_bar(grid.taus[0], 4000) / cosine_alpha_bar(0, 4000)
        assert grid.alphas_cumprod[0] == pytest.approx(expected, rel=1e-9)
