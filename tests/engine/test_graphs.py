"""Batch buckets (CPU: the padding path; CUDA: graphs) give the same rows as a direct call."""

import pytest
import torch

from densepure.artifacts.buckets import bucket_sizes, pick_bucket
from densepure.engine.backends import TorchClassifier, TorchDenoiser
from densepure.engine.backends.graphs import BucketedCall
from densepure.engine.memory import rows_that_fit
from densepure.errors import BackendError, ConfigError
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.digits import load_digits_classifier, load_digits_unet

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_bucket_sizes_and_pick():
    assert bucket_sizes(100) == (8, 16, 32, 64, 100)
    assert bucket_sizes(64) == (8, 16, 32, 64)
    assert bucket_sizes(5) == (5,)
    assert pick_bucket((8, 16, 100), 1) == 8
    assert pick_bucket((8, 16, 100), 17) == 100
    with pytest.raises(BackendError, match="exceeds the largest bucket"):
        pick_bucket((8, 16), 17)
    with pytest.raises(ConfigError):
        bucket_sizes(0)


def test_padding_never_reaches_results():
    calls = []

    def fn(x, t):  # row-wise, and records the batch size it ran at
        calls.append(x.shape[0])
        return (x * 2 + t[:, None],)

    call = BucketedCall(fn, [torch.zeros(1, 3), torch.zeros(1)], (4, 8), torch.device("cpu"), graphs=False)
    x, t = torch.randn(5, 3), torch.randn(5)
    (out,) = call(x, t)
    assert calls == [8] and out.shape == (5, 3)
    torch.testing.assert_close(out, x * 2 + t[:, None])
    (out,) = call(x[:4], t[:4])  # exact bucket: no copy
    assert calls[-1] == 4
    with pytest.raises(BackendError):
        call(torch.randn(9, 3), torch.randn(9))
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device"):
        BucketedCall(fn, [torch.zeros(1, 3)], (4,), torch.device("cpu"), graphs=True)


def test_bucketed_backends_match_direct_calls():
    unet, clf = load_digits_unet(), Classifier(load_digits_classifier(), Preprocess(), num_classes=10)
    direct, bucketed = TorchDenoiser(unet), TorchDenoiser(unet, buckets=bucket_sizes(64))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(37, 1, 8, 8, generator=g), torch.randint(1, 999, (37,), generator=g).float()
    with direct, bucketed:
        for a, b in zip(direct.eps_and_var(x, t), bucketed.eps_and_var(x, t), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    c_direct = TorchClassifier(clf, 10, (1, 8, 8))
    c_bucketed = TorchClassifier(clf, 10, (1, 8, 8), buckets=bucket_sizes(64))
    with c_direct, c_bucketed:
        torch.testing.assert_close(c_direct.logits(x.clamp(-1, 1)), c_bucketed.logits(x.clamp(-1, 1)),
                                   rtol=1e-5, atol=1e-5)


def test_a_backend_outside_its_with_block_is_an_error():
    clf = TorchClassifier(Classifier(load_digits_classifier(), Preprocess(), num_classes=10), 10, (1, 8, 8))
    with pytest.raises(BackendError, match="outside its `with` block"):
        clf.logits(torch.zeros(2, 1, 8, 8))
    with clf:
        assert clf.logits(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        with pytest.raises(BackendError, match=r"x must be \(B, 1, 8, 8\)"):
            clf.logits(torch.zeros(2, 1, 4, 4))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_graphs_match_eager(dtype, monkeypatch):
    dev = torch.device("cuda")
    # "fp32" on a GPU must mean fp32: TF32 convolutions and matmuls would differ from eager by more than 1e-4
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    unet = load_digits_unet(device=dev).set_precision(dtype)
    eager = TorchDenoiser(load_digits_unet(device=dev).set_precision(dtype))  # its own UNet: no shared layout
    graphed = TorchDenoiser(unet, channels_last=True, buckets=bucket_sizes(256), cuda_graphs=True)
    x, t = torch.randn(100, 1, 8, 8, device=dev), torch.randint(1, 999, (100,), device=dev).float()
    with graphed:
        assert set(graphed.call.captured) == set(bucket_sizes(256))
        got = graphed.eps_and_var(x, t)
        again = graphed.eps_and_var(x[:10], t[:10])  # another bucket; earlier outputs must survive
    tol = 1e-4 if dtype is torch.float32 else 3e-2
    with eager:
        want = eager.eps_and_var(x, t)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    torch.testing.assert_close(again[0], got[0][:10], rtol=tol, atol=tol)


@needs_cuda
@pytest.mark.gpu
def test_rows_for_memory_on_cuda():
    dev = torch.device("cuda")
    unet = load_digits_unet(device=dev)

    def probe(rows):
        with torch.inference_mode():
            unet(torch.randn(rows, 1, 8, 8, device=dev), torch.ones(rows, device=dev))

    one = rows_that_fit([probe], dev, cap=1 << 20)
    two = rows_that_fit([probe, probe], dev, cap=1 << 20)
    assert one >= 8 and one % 8 == 0 and two % 8 == 0
    assert two <= one // 2 + 8  # two models' pools: twice the memory per row
