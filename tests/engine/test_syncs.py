"""The engine step loop makes no host synchronisation beyond its budget: one asynchronous upload per
batch and one wait for a classifier batch's labels (read one round late), and no reads of tensor values.

On a GPU each read of a device tensor's value (``.item()``, ``bool(t)``, ``.tolist()``, a pageable copy)
makes the host wait for every queued kernel; so does a copy from pageable host memory, which is why
admitted images are staged in pinned memory (counted as uploads). The executor routes its transfers through counted wrappers
(:mod:`densepure.engine.transfer`); this test holds them to the budget and, with the value reads of
``torch.Tensor`` patched to count, proves no other read happens inside a step.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import CLASSES, SCHEDULE, PatchSign, micro_unet

from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.engine.policy import FixedPolicy
from densepure.models.classifiers import Classifier, Preprocess
from densepure.noise import NoisePhase

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu")


@pytest.fixture
def value_reads(monkeypatch):
    """Counts calls of the tensor methods that read values back to the host."""
    calls = {name: 0 for name in READS}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("mode,k", [(Mode.DENSEPURE, 4), (Mode.ONESTEP, 1), (Mode.GAUSSIAN, 1)])
def test_a_step_stays_inside_its_sync_budget(mode, k, value_reads):
    unet, clf = micro_unet(), Classifier(PatchSign(), Preprocess()).eval()
    dense = mode is Mode.DENSEPURE
    smoothing = SmoothingConfig(mode, 0.5, k, 2 if dense else 1, schedule=SCHEDULE)
    engine = Engine(smoothing, Backends(TorchDenoiser(unet), TorchClassifier(clf, CLASSES, (3, 8, 8))), (3, 8, 8),
                    "cpu", EngineConfig(unet_rows=24, classifier_rows=16, draw_capacity=12, image_slots=2))
    images = torch.rand(3, 3, 8, 8) * 0.5 + 0.25
    phases = {NoisePhase.SELECTION: 4, NoisePhase.ESTIMATION: 12}
    steps = 0
    with engine, torch.inference_mode():
        for i in range(3):  # two slots: the third image is admitted mid-run, as a server admits requests
            engine.submit(ImageRequest(i, images[i], FixedPolicy(CLASSES, phases), seed=7, noise_id=i))
        syncs = engine.executor.syncs  # admission (each image's copy into its slot) is inside the budget
        syncs.uploads = syncs.waits = 0
        for name in READS:  # submit checks the host images' values; steps must read none
            value_reads[name] = 0
        while not engine.idle:
            engine.step()
            steps += 1
        done = engine.collect()
    assert len(done) == 3 and steps >= 4
    batches_per_step = 2 if mode is not Mode.GAUSSIAN else 1
    assert syncs.uploads <= batches_per_step * steps + len(images), (syncs.uploads, steps)
    assert syncs.waits <= steps, (syncs.waits, steps)
    assert sum(value_reads.values()) == 0, value_reads


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_hidden_synchronisation_on_cuda():
    """On a GPU, torch's sync debug mode flags every synchronising call inside the step loop."""
    import warnings

    dev = torch.device("cuda")
    unet, clf = micro_unet().to(dev), Classifier(PatchSign(), Preprocess()).eval().to(dev)
    smoothing = SmoothingConfig(Mode.DENSEPURE, 0.5, 4, 2, schedule=SCHEDULE)
    engine = Engine(smoothing, Backends(TorchDenoiser(unet), TorchClassifier(clf, CLASSES, (3, 8, 8), dev)),
                    (3, 8, 8), dev, EngineConfig(unet_rows=24, classifier_rows=16, draw_capacity=12, image_slots=2))
    images = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    phases = {NoisePhase.ESTIMATION: 12}
    with engine, torch.inference_mode():
        engine.submit(ImageRequest(0, images[0], FixedPolicy(CLASSES, phases), seed=7, noise_id=0))
        engine.step()  # the first step's lazy CUDA initialisations (kernels, allocator) are not counted
        engine.submit(ImageRequest(1, images[1], FixedPolicy(CLASSES, phases), seed=7, noise_id=1))
        steps, flagged = 0, 0  # the second image is admitted inside the counted steps
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                while not engine.idle:
                    engine.step()
                    steps += 1
            flagged = sum("synchroniz" in str(w.message) for w in caught)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert flagged <= steps, f"{flagged} synchronising calls in {steps} steps (budget: one label wait each)"


class _FakeSide:
    """Stands for the executor's side CUDA stream on the CPU."""


def test_a_grown_pool_is_recorded_on_the_side_stream_before_release(monkeypatch):
    """The draw pool a classifier batch on the side stream may still read must not go back to the
    allocator for main-stream reuse until that stream is past it (Tensor.record_stream)."""
    unet, clf = micro_unet(), Classifier(PatchSign(), Preprocess()).eval()
    smoothing = SmoothingConfig(Mode.DENSEPURE, 0.5, 4, 2, schedule=SCHEDULE)
    engine = Engine(smoothing, Backends(TorchDenoiser(unet), TorchClassifier(clf, CLASSES, (3, 8, 8))), (3, 8, 8),
                    "cpu", EngineConfig(unet_rows=24, classifier_rows=16, draw_capacity=64, image_slots=2))
    executor, side, recorded = engine.executor, _FakeSide(), []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: recorded.append((self, stream)))
    executor.side = side
    import numpy as np

    executor._grow(np.array([3]))  # from nothing: no old pool to protect
    assert recorded == []
    first = executor.state
    executor._grow(np.array([20]))
    assert len(recorded) == 1 and recorded[0][0] is first and recorded[0][1] is side
    assert executor.state.shape[0] >= 21 * 4 and torch.equal(executor.state[: first.shape[0]], first)
