"""The three golden DensePure chains and the one-step golden, reproduced from recorded noise."""

import numpy as np
import pytest
import torch
from golden_data import golden_unet, load_golden

from densepure.diffusion import NoiseSchedule, build_reverse_grid, start_point, t_star
from densepure.engine.reference import onestep_x0, run_chain

CASES = [
    ("densepure_cosine4000_sigma0.25_b2", "unet_improved_tiny"),
    ("densepure_cosine4000_sigma0.5_b3", "unet_improved_tiny"),
    ("densepure_linear1000_sigma0.5_b2", "unet_guided_tiny"),
]


@pytest.mark.parametrize("chain,model_name", CASES)
def test_golden_chain(chain, model_name):
    model, mdata = golden_unet(model_name)
    g = load_golden(chain)
    import json

    flags = json.loads(str(mdata["config"]))
    schedule = NoiseSchedule(flags["noise_schedule"], flags["diffusion_steps"])
    sigma, b = float(g["sigma"]), int(g["b"])
    ts = t_star(sigma, schedule)
    assert ts == pytest.approx(float(g["t_star"]), abs=1e-9)
    grid = build_reverse_grid(schedule, ts, b)
    assert grid.taus.tolist() == g["taus"].tolist()
    out, history = run_chain(model, torch.from_numpy(g["x_clean"]), torch.from_numpy(g["delta"]), sigma, grid,
                             [torch.from_numpy(z) for z in g["zs"]])
    for i, x0 in enumerate(history):
        np.testing.assert_allclose(x0.numpy(), g["pred_xstart"][i], atol=2e-5, rtol=0)
    np.testing.assert_allclose(out.numpy(), g["x_out"], atol=2e-5, rtol=0)


def test_golden_onestep(improved_tiny):
    model, _ = improved_tiny
    g = load_golden("onestep_cosine4000_sigma0.25")
    schedule = NoiseSchedule("cosine", 4000)
    ts = t_star(0.25, schedule)
    assert round(ts) == int(g["t_used"])
    y = start_point(torch.from_numpy(g["x_clean"]), torch.from_numpy(g["delta"]), 0.25)
    x0 = onestep_x0(model, y, schedule, round(ts))
    np.testing.assert_allclose(x0.numpy(), g["pred_xstart"], atol=2e-5, rtol=0)
