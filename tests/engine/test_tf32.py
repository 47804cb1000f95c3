"""``--precision fp32`` is exact float32 on every device; ``tf32`` opts in to TF32 matmuls and convolutions
on CUDA. The torch backends set PyTorch's flags around each model call (never process-wide), so the
flags another library or an earlier job left behind do not decide what a certificate computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densepure.certify.options import JobOptions
from densepure.engine.backends import TorchClassifier, TorchDenoiser
from densepure.engine.backends.select import BackendChoice, BackendKind, ModelIdentity, make_backends
from densepure.errors import ConfigError
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.digits import load_digits_classifier, load_digits_unet
from densepure.precision import EXPORTED_PRECISIONS, Precision, float32_math, tf32_flags


class FlagSpy(nn.Module):
    """Records the TF32 flags each forward runs under."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.linear = nn.Linear(4, classes)
        self.seen: list[dict[str, bool]] = []

    def forward(self, x):
        self.seen.append(tf32_flags())
        return self.linear(x.flatten(1)[:, :4])


@pytest.fixture
def flags_on():
    """The process-wide flags as a library might leave them: TF32 everywhere (restored afterwards;
    pytest's monkeypatch cannot undo attributes of torch.backends.cuda.matmul)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = True
    yield
    matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_tf32_is_a_float32_math_mode_that_is_not_exported():
    assert Precision.parse("tf32") is Precision.TF32 and Precision.TF32.dtype is torch.float32
    assert Precision.TF32.tf32 and not any(p.tf32 for p in Precision if p is not Precision.TF32)
    assert EXPORTED_PRECISIONS == (Precision.FP32, Precision.FP16, Precision.INT8)
    with pytest.raises(ConfigError, match="got precision tf32"):
        BackendChoice(BackendKind.ONNXRUNTIME, "artifacts", Precision.TF32)


def test_float32_math_sets_and_restores_the_flags(flags_on):
    with float32_math(False):
        assert tf32_flags() == {"cuda_matmul": False, "cudnn": False}
        with float32_math(True):
            assert tf32_flags() == {"cuda_matmul": True, "cudnn": True}
        assert tf32_flags() == {"cuda_matmul": False, "cudnn": False}
    assert tf32_flags() == {"cuda_matmul": True, "cudnn": True}


@pytest.mark.parametrize("tf32", [False, True])
def test_backends_run_each_call_under_their_own_flags(tf32, flags_on):
    spy = FlagSpy()
    backend = TorchClassifier(spy, 3, (1, 2, 2), tf32=tf32)
    with backend:
        backend.logits(torch.zeros(5, 1, 2, 2))
    assert spy.seen == [{"cuda_matmul": tf32, "cudnn": tf32}]
    assert tf32_flags() == {"cuda_matmul": True, "cudnn": True}  # restored after the call

    unet = load_digits_unet()
    seen = []
    original = unet.eps_and_var
    unet.eps_and_var = lambda x, t: (seen.append(tf32_flags()), original(x, t))[1]
    with TorchDenoiser(unet, tf32=tf32) as denoiser:
        denoiser.eps_and_var(torch.zeros(2, 1, 8, 8), torch.ones(2))
    assert seen == [{"cuda_matmul": tf32, "cudnn": tf32}]


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.TF32])
def test_make_backends_passes_the_precision_on(precision):
    clf = Classifier(load_digits_classifier(), Preprocess(), num_classes=10)
    choice = BackendChoice(BackendKind.TORCH, precision=precision)
    backends = make_backends(choice, ModelIdentity("digits", (1, 8, 8), 10), torch.device("cpu"),
                             needs_denoiser=True, unet=load_digits_unet(), classifier=clf)
    assert backends.denoiser.tf32 is backends.classifier.tf32 is (precision is Precision.TF32)


def test_the_precision_is_recorded_with_the_results():
    assert JobOptions.build(precision="tf32").record()["precision"] == "tf32"
    assert JobOptions.build().record()["precision"] == "fp32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp32_is_exact_on_cuda_whatever_the_global_flags_and_tf32_is_not(flags_on):
    """A matmul-heavy model against a float64 reference: fp32 within float32 rounding while the process
    allows TF32 everywhere; tf32 visibly coarser where the GPU has TF32 (Ampere and later)."""
    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 10)).to(dev)
    x = torch.randn(64, 1, 32, 32, device=dev)
    with torch.no_grad():
        want = net.double()(x.double().flatten(1)).float()
        net.float()
    errors = {}
    for tf32 in (False, True):
        backend = TorchClassifier(nn.Sequential(nn.Flatten(), net), 10, (1, 32, 32), dev, tf32=tf32)
        with backend:
            errors[tf32] = float((backend.logits(x) - want).abs().max() / want.abs().max())
    assert errors[False] < 1e-5, errors
    if torch.cuda.get_device_capability(dev) >= (8, 0):
        assert errors[True] > 1e-4, errors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fixture", ["improved_tiny", "guided_tiny"])
def test_golden_unets_on_cuda_in_exact_fp32(fixture, request, flags_on):
    """The golden outputs on the GPU (SDPA attention on 4-D heads, channels-last, the backends' exact
    fp32) at the CPU test's tolerance."""
    import copy

    import numpy as np

    model, data = request.getfixturevalue(fixture)
    dev = torch.device("cuda")
    gpu = copy.deepcopy(model).to(dev).to(memory_format=torch.channels_last)
    with torch.no_grad(), float32_math(False):
        out = gpu(torch.from_numpy(data["x"]).to(dev), torch.from_numpy(data["t"]).to(dev))
    np.testing.assert_allclose(out.cpu().numpy(), data["out"], atol=1e-4, rtol=0)
