"""The engine step loop makes no host synchronisation beyond its budget: one asynchronous upload per
batch and one wait for a classifier batch's labels (read one round late), and no reads of tensor values.

On a GPU each read of a device tensor's value (``.item()``, ``bool(t)``, ``.tolist()``, a pageable copy)
makes the host wait for every queued kernel. The executor routes its transfers through counted wrappers
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
        for i in range(3):
            engine.submit(ImageRequest(i, images[i], FixedPolicy(CLASSES, phases), seed=7, noise_id=i))
        engine.step()  # admission (the images' own copies) happens in the first step
        syncs = engine.executor.syncs
        syncs.uploads = syncs.waits = 0
        for name in READS:
            value_reads[name] = 0
        while not engine.idle:
            engine.step()
            steps += 1
        done = engine.collect()
    assert len(done) == 3 and steps >= 4
    batches_per_step = 2 if mode is not Mode.GAUSSIAN else 1
    assert syncs.uploads <= batches_per_step * steps, (syncs.uploads, steps)
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
        for i in range(2):
            engine.submit(ImageRequest(i, images[i], FixedPolicy(CLASSES, phases), seed=7, noise_id=i))
        engine.step()
        steps, flagged = 0, 0
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
