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


def test_each_bucket_is_captured_once_however_often_the_call_is_activated(monkeypatch):
    """capture_all runs on every activation (each Engine.run): a captured size must be kept, not
    captured again (re-capture destroys live graphs; see densepure.engine.backends.graphs)."""
    call = BucketedCall(lambda x: (x,), [torch.zeros(1, 3)], (4, 16, 8), torch.device("cpu"), graphs=False)
    call.graphs = True  # the capture bookkeeping only: _capture itself needs CUDA and is replaced
    captured = []

    def capture(size):
        captured.append(size)
        call.captured[size] = object()

    monkeypatch.setattr(call, "_capture", capture)
    call.capture_all()
    call.capture_all()
    assert captured == [16, 8, 4]


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
def test_cuda_graphs_match_eager(dtype):
    dev = torch.device("cuda")
    # the backends' fp32 is exact float32 (TF32 would differ by more than 1e-4): no process-wide flags needed
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


def _digits_engine(dev, graphs: bool):
    from densepure.diffusion import Mode, SmoothingConfig
    from densepure.engine.backends import Backends
    from densepure.engine.engine import Engine, EngineConfig
    from densepure.models import get_preset

    buckets = bucket_sizes(64) if graphs else None
    clf = Classifier(load_digits_classifier(device=dev), Preprocess(), num_classes=10)
    backends = Backends(TorchDenoiser(load_digits_unet(device=dev), buckets=buckets, cuda_graphs=graphs),
                        TorchClassifier(clf, 10, (1, 8, 8), dev, buckets=buckets, cuda_graphs=graphs))
    smoothing = SmoothingConfig(Mode.DENSEPURE, 0.25, 4, 2, schedule=get_preset("digits").schedule)
    return Engine(smoothing, backends, (1, 8, 8), dev,
                  EngineConfig(unet_rows=64, classifier_rows=64, draw_capacity=128, image_slots=4))


def _digits_counts(engine) -> list:
    from densepure.engine.engine import ImageRequest
    from densepure.engine.policy import FixedPolicy
    from densepure.models.digits import load_digits_test_split
    from densepure.noise import NoisePhase

    data, _ = load_digits_test_split()
    phases = {NoisePhase.SELECTION: 8, NoisePhase.ESTIMATION: 100}
    requests = [ImageRequest(i, data[i], FixedPolicy(10, phases), 5, noise_id=i) for i in (0, 7, 120)]
    done = {r.key: r.policy.counts for r in engine.run(requests)}
    return [[done[i][p].tolist() for p in phases] for i in sorted(done)]


@needs_cuda
@pytest.mark.gpu
def test_every_bucketed_call_captures_on_its_own_stream():
    """The UNet's and the classifier's graphs replay at once on two streams: each must have been captured
    on a stream of its own (its own cuBLAS workspace), never on torch.cuda.graph's shared default."""
    engine = _digits_engine(torch.device("cuda"), graphs=True)
    calls = [engine.backends.denoiser.call, engine.backends.classifier.call]
    with engine:
        streams = [call.stream for call in calls]
        assert all(s is not None for s in streams) and streams[0] != streams[1]
        assert torch.cuda.graphs.graph.default_capture_stream not in streams
        assert all(set(call.captured) == set(bucket_sizes(64)) for call in calls)


@needs_cuda
@pytest.mark.gpu
def test_engine_run_twice_with_graphs_gives_identical_counts_and_captures_once():
    dev = torch.device("cuda")
    engine = _digits_engine(dev, graphs=True)
    first = _digits_counts(engine)
    graphs = {id(g) for call in (engine.backends.denoiser.call, engine.backends.classifier.call)
              for g in call.captured.values()}
    second = _digits_counts(engine)
    assert second == first
    again = {id(g) for call in (engine.backends.denoiser.call, engine.backends.classifier.call)
             for g in call.captured.values()}
    assert again == graphs  # the same graph objects: nothing was re-captured
    # (graphed against eager and against the CPU, count for count: the gpu check's exactness stage)
