"""--compile: in place, static shapes, no Inductor CUDA graphs, no graph breaks around the kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densepure.errors import ConfigError
from densepure.kernels import CompileMode, compile_module
from densepure.models import UNetConfig, UNetModel


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", "fast"])
def test_modes_with_their_own_cuda_graphs_are_refused(mode):
    with pytest.raises(ConfigError, match="compile mode must be one of"):
        compile_module(nn.Linear(2, 2), mode)


def test_shapes_must_be_positive():
    with pytest.raises(ConfigError, match="shapes"):
        compile_module(nn.Linear(2, 2), CompileMode.DEFAULT, shapes=0)


def _tiny_unet() -> UNetModel:
    cfg = UNetConfig(image_size=8, in_channels=1, model_channels=16, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_heads=2, num_groups=4)
    return UNetModel(cfg).eval()


@pytest.mark.slow
def test_unet_traces_as_one_graph(device, triton_kernels):
    """SDPA, the ONNX-export switch and the fused-norm custom op leave dynamo one graph, no breaks."""
    model = _tiny_unet().to(device).set_kernels(triton_kernels)
    x, t = torch.randn(2, 1, 8, 8, device=device), torch.tensor([3.0, 500.0], device=device)
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(x, t)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


class _Seam(nn.Module):
    """A module whose engine-facing method calls ``self(...)``, like ``UNetModel.eps_and_var``."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4)

    def forward(self, x):
        return torch.nn.functional.silu(self.norm(self.conv(x)))

    def halves(self, x):
        out = self(x)
        return out[:, :2], out[:, 2:]


@pytest.mark.slow
def test_compiled_in_place_serves_every_bucket(monkeypatch):
    """Each bucket size compiles once (static shapes); the engine-facing method runs the compiled forward."""
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    monkeypatch.setattr(dynamo_config, "recompile_limit", 2)
    torch._dynamo.reset()
    counters.clear()
    seam = _Seam().eval()
    assert compile_module(seam, "default", shapes=3) is seam and dynamo_config.recompile_limit == 3
    with torch.inference_mode():
        for rows in (1, 3, 8, 3):
            x = torch.randn(rows, 2, 5, 5)
            got = torch.cat(seam.halves(x), dim=1)  # through self(...): the compiled forward
            want = torch.nn.functional.silu(seam.norm(seam.conv(x)))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 3  # one per shape, none for the repeated 3
