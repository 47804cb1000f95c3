"""Engine exactness with the sequential stopping rules: the same decisions and counts for any batch
sizes, pool sizes and look-ahead, equal to the plain path's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import CLASSES, PatchSign

from densepure.certify import policies, procedures
from densepure.certify.tasks import SequentialTask
from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.engine.reference import ReferenceSampler
from densepure.models.classifiers import Classifier, Preprocess
from densepure.noise import NoisePhase
from densepure.stats.sequential import SequentialMethod

SIGMA, N0 = 0.5, 4


@pytest.mark.parametrize("method", list(SequentialMethod))
def test_engine_decisions_equal_the_plain_path_for_any_batch_sizes(method, monkeypatch):
    clf = Classifier(PatchSign(), Preprocess()).eval()
    torch.manual_seed(2)
    images = torch.rand(4, 3, 8, 8) * 0.4 + 0.3
    task = SequentialTask(N0, 0.05, 0.1, n_max=80, method=method)
    smoothing = SmoothingConfig(Mode.GAUSSIAN, SIGMA)
    plain = ReferenceSampler(smoothing, clf, CLASSES, seed=6, batch_size=8)
    expected = [procedures.certify_sequential(plain, images[i], i, task) for i in range(len(images))]
    decided = [(e.result.decision.value, e.result.n_used) for e in expected]
    assert {d for d, _ in decided} == {"certified", "not_certified"} and max(n for _, n in decided) > 8, decided
    configs = [(1, 1, 1, 0.0, 1, True), (3, 5, 2, 0.5, 16, True), (7, 16, 3, 2.0, 4, True),
               (64, 128, 4, 0.5, 16, True), (64, 128, 4, 0.5, 16, False), (7, 16, 3, 2.0, 4, None)]
    for rows, capacity, slots, factor, minimum, ahead in configs:
        monkeypatch.setattr(policies, "LOOKAHEAD", factor)
        monkeypatch.setattr(policies, "MIN_LOOKAHEAD", minimum)
        config = EngineConfig(unet_rows=rows, classifier_rows=rows, draw_capacity=capacity, image_slots=slots,
                              lookahead=ahead)
        engine = Engine(smoothing, Backends(None, TorchClassifier(clf, CLASSES, (3, 8, 8))), (3, 8, 8), "cpu", config)
        requests = (ImageRequest(i, images[i], task.policy(CLASSES, SIGMA), 6, noise_id=i) for i in range(len(images)))
        got = {r.key: r.policy for r in engine.run(requests)}
        for i, e in enumerate(expected):
            assert got[i].result == e.result, (rows, factor, i)
            assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], e.counts_estimation)


@pytest.mark.parametrize("lookahead", [True, False])
def test_without_look_ahead_nothing_is_thrown_away_and_the_decisions_are_the_same(lookahead):
    """``EngineConfig(lookahead=False)``: each sequential image computes exactly the estimation draws its
    test reads (``issued == n_used``); with the default look-ahead, draws past the stopping look ran in
    empty batch rows; the decisions and counts are the same."""
    clf = Classifier(PatchSign(), Preprocess()).eval()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 0.4 + 0.3
    task = SequentialTask(N0, 0.05, 0.1, n_max=80)
    results = {}
    for ahead in (True, False):
        config = EngineConfig(unet_rows=64, classifier_rows=64, draw_capacity=128, image_slots=4, lookahead=ahead)
        engine = Engine(SmoothingConfig(Mode.GAUSSIAN, SIGMA),
                        Backends(None, TorchClassifier(clf, CLASSES, (3, 8, 8))), (3, 8, 8), "cpu", config)
        assert engine.scheduler.lookahead is ahead
        requests = [ImageRequest(i, images[i], task.policy(CLASSES, SIGMA), 6, noise_id=i) for i in range(3)]
        results[ahead] = {r.key: r.policy for r in engine.run(requests)}
    assert EngineConfig().lookahead is True
    done = results[lookahead]
    wasted = sum(p.issued_est - p.result.n_used for p in done.values())
    assert (wasted > 0) is lookahead, wasted
    for i, policy in done.items():
        assert policy.result == results[not lookahead][i].result
        assert np.array_equal(policy.counts[NoisePhase.ESTIMATION], results[not lookahead][i].counts[NoisePhase.ESTIMATION])
