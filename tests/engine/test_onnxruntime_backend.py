"""The onnxruntime backends behind the DenoiserBackend / ClassifierBackend seam, against the torch backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densepure.engine.backends import TorchClassifier, TorchDenoiser
from densepure.engine.backends.onnxruntime_backend import (
    IoMode,
    OnnxRuntimeClassifier,
    OnnxRuntimeDenoiser,
    OrtProvider,
    default_providers,
    select_providers,
)
from densepure.errors import ArtifactError, BackendError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript: pip install 'densepure[onnx]'")


from export_helpers import tiny_classifier  # noqa: E402

# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(golden_improved_export):
    """The session's export of the golden tiny UNet and a tiny CNN (tests/conftest.py): (unet, classifier)."""
    return golden_improved_export.results[0].onnx_path, golden_improved_export.results[1].onnx_path


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def active(backend):
    """The backend, activated for the rest of the test (backends refuse calls outside `with`)."""
    return backend.__enter__()


@pytest.mark.parametrize("io_mode", [IoMode.BINDING, IoMode.COPY])
def test_denoiser_matches_torch_backend(exported, improved_tiny, io_mode):
    model, _ = improved_tiny
    backend = OnnxRuntimeDenoiser(exported[0], io_mode=io_mode)
    assert (backend.channels, backend.image_size) == (3, 32)
    gen = torch.Generator().manual_seed(7)
    x, t = torch.randn(5, 3, 32, 32, generator=gen), torch.rand(5, generator=gen) * 1000
    with backend:
        assert backend.active
        eps, v = backend.eps_and_var(x, t)
        eps1, _ = backend.eps_and_var(x[:1], t[:1])  # another batch size through the dynamic axis
    assert not backend.active and backend._session.session is None
    want_eps, want_v = active(TorchDenoiser(model)).eps_and_var(x, t)
    assert eps.dtype == v.dtype == torch.float32 and eps.device == torch.device("cpu")
    assert _rel(eps, want_eps) < 1e-4 and _rel(v, want_v) < 1e-4 and _rel(eps1, want_eps[:1]) < 1e-4


def test_denoiser_reproduces_golden_outputs(exported, improved_tiny):
    _, data = improved_tiny
    eps, v = active(OnnxRuntimeDenoiser(exported[0])).eps_and_var(torch.from_numpy(data["x"]),
                                                                  torch.from_numpy(data["t"]))
    out = torch.from_numpy(data["out"])
    assert _rel(eps, out[:, :3]) < 1e-4 and _rel(v, out[:, 3:]) < 1e-4


def test_io_binding_writes_into_preallocated_outputs(exported):
    """The binding path hands torch's own buffers to onnxruntime: identical results to the copy path."""
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3.0, 900.0])
    bound = active(OnnxRuntimeDenoiser(exported[0], io_mode=IoMode.BINDING)).eps_and_var(x, t)
    copied = active(OnnxRuntimeDenoiser(exported[0], io_mode=IoMode.COPY)).eps_and_var(x, t)
    assert all(torch.equal(a, b) for a, b in zip(bound, copied, strict=True))
    noncontig = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, other strides
    again = active(OnnxRuntimeDenoiser(exported[0])).eps_and_var(noncontig, t)
    assert torch.equal(again[0], bound[0])


def test_classifier_matches_torch_backend(exported):
    clf = tiny_classifier()
    backend = active(OnnxRuntimeClassifier(exported[1]))
    assert backend.num_classes == 7 and backend.image_shape == (3, 32, 32)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    got = backend.logits(x)
    assert got.dtype == torch.float32 and got.shape == (6, 7)
    assert _rel(got, active(TorchClassifier(clf, 7, (3, 32, 32))).logits(x)) < 1e-4


def test_bad_inputs_rejected(exported):
    den, clf = active(OnnxRuntimeDenoiser(exported[0])), active(OnnxRuntimeClassifier(exported[1]))
    t = torch.zeros(2)
    with pytest.raises(BackendError, match=r"\(B, C, H, W\)"):
        den.eps_and_var(torch.zeros(3, 32, 32), t)
    with pytest.raises(BackendError, match="x must be"):
        den.eps_and_var(torch.zeros(2, 1, 32, 32), t)
    with pytest.raises(BackendError, match="t_model"):
        den.eps_and_var(torch.zeros(2, 3, 32, 32), t.double())
    with pytest.raises(BackendError, match="t_model"):
        den.eps_and_var(torch.zeros(2, 3, 32, 32), torch.zeros(3))
    with pytest.raises(BackendError, match=r"x must be \(B, 3, 32, 32\)"):
        clf.logits(torch.zeros(2, 3, 16, 16))
    with pytest.raises(BackendError, match="backend runs on"):
        clf.logits(torch.zeros(2, 3, 32, 32, device="meta"))


def test_artifacts_checked_through_manifests(exported, tmp_path):
    with pytest.raises(ArtifactError, match="expected a unet"):
        OnnxRuntimeDenoiser(exported[1])
    with pytest.raises(ArtifactError, match="manifest not found"):
        OnnxRuntimeClassifier(tmp_path / "missing.onnx")
    copy = tmp_path / "clf.onnx"
    copy.write_bytes(exported[1].read_bytes() + b"\0")  # edited graph, original manifest
    (tmp_path / "clf.onnx.manifest.json").write_text(exported[1].with_name(exported[1].name + ".manifest.json")
                                                     .read_text())
    with pytest.raises(ArtifactError, match="sha256"):
        active(OnnxRuntimeClassifier(copy))


def test_provider_selection():
    cpu, cuda = torch.device("cpu"), torch.device("cuda:1")
    assert default_providers(cpu) == (OrtProvider.CPU,)
    assert default_providers(cuda) == (OrtProvider.CUDA, OrtProvider.CPU)
    everything = [p.value for p in OrtProvider]
    assert select_providers([OrtProvider.CPU], everything, cpu) == [("CPUExecutionProvider", {})]
    chosen = dict(select_providers([OrtProvider.TENSORRT, OrtProvider.CUDA], everything, cuda, "/c"))
    assert chosen["CUDAExecutionProvider"]["device_id"] == "1"
    assert chosen["CUDAExecutionProvider"]["use_tf32"] == "0"  # fp32 graphs compute in fp32 (its default is TF32)
    assert chosen["TensorrtExecutionProvider"]["trt_engine_cache_path"] == "/c"
    with pytest.raises(BackendError, match="available: CPUExecutionProvider"):
        select_providers([OrtProvider.CUDA], ["CPUExecutionProvider"], cuda)
    with pytest.raises(BackendError, match="CPU device"):
        select_providers([OrtProvider.CUDA], everything, cpu)
    with pytest.raises(BackendError, match="CUDA device needs"):
        select_providers([OrtProvider.CPU], everything, cuda)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_unavailable_provider_names_the_available_ones(exported):
    backend = OnnxRuntimeDenoiser(exported[0], providers=[OrtProvider.CUDA])
    with pytest.raises(BackendError, match="CPUExecutionProvider"):
        active(backend)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs a CUDA device and onnxruntime-gpu")  # a decorator: no export just to skip
def test_cuda_io_binding_matches_cpu(exported):
    x, t = torch.randn(4, 3, 32, 32), torch.rand(4) * 1000
    want = active(OnnxRuntimeDenoiser(exported[0])).eps_and_var(x, t)
    with OnnxRuntimeDenoiser(exported[0], device="cuda") as gpu:
        got = gpu.eps_and_var(x.cuda(), t.cuda())
    assert got[0].device.type == "cuda" and got[0].dtype == torch.float32
    assert np.allclose(got[0].cpu().numpy(), want[0].numpy(), rtol=1e-3, atol=1e-3)
