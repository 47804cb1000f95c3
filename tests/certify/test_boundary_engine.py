"""Engine exactness with the new stopping rule: the same decisions and counts for any batch sizes.

The engine's sequential policy and the plain path build their state machine with
``SequentialTest(plan, label)``; until they call ``plan.start(label)`` (the lead's wiring for issue
19) the test routes that name to ``plan.start``, so the real engine drives a BoundaryTest.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import densepure.engine.policy as policy_module
from densepure.certify import procedures
from densepure.certify.base import BaseClassifier, Mode, SmoothingConfig
from densepure.certify.boundary import BoundaryPlan
from densepure.engine.backends import TorchClassifier
from densepure.engine.engine import Engine, EngineConfig
from densepure.engine.policy import SequentialPolicy
from densepure.models.classifiers import Classifier, Preprocess
from densepure.noise import NoisePhase

CLASSES, SIGMA, N0 = 3, 0.5, 4


class PatchSign(nn.Module):
    """Labels that depend on the noise: argmax of random projections of 2x2 patch means."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(CLASSES, 3 * 4 * 4, generator=g), requires_grad=False)

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 2).flatten(1) @ self.w.T


@pytest.fixture
def routed(monkeypatch):
    def start(plan, label):
        return plan.start(label)

    # raising=False: once the call sites use plan.start(label) the name may be gone, and this is a no-op.
    monkeypatch.setattr(policy_module, "SequentialTest", start, raising=False)
    monkeypatch.setattr(procedures, "SequentialTest", start, raising=False)


def test_engine_decisions_equal_the_plain_path_for_any_batch_sizes(routed):
    clf = Classifier(PatchSign(), Preprocess()).eval()
    torch.manual_seed(2)
    images = torch.rand(4, 3, 8, 8) * 0.4 + 0.3
    plan = BoundaryPlan.exact(0.05, SIGMA, 0.1, n_max=80)
    plain = BaseClassifier(SmoothingConfig(Mode.GAUSSIAN, SIGMA, 1, 1), clf, CLASSES, seed=6, batch_size=8)
    expected = [procedures.certify_sequential(plain, images[i], i, N0, plan) for i in range(len(images))]
    decided = [(e.result.decision.value, e.result.n_used) for e in expected]
    assert {d for d, _ in decided} == {"certified", "not_certified"} and max(n for _, n in decided) > 8, decided
    for rows, capacity, slots in [(1, 1, 1), (3, 5, 2), (7, 16, 3), (64, 128, 4)]:
        config = EngineConfig(unet_rows=rows, classifier_rows=rows, draw_capacity=capacity, image_slots=slots)
        engine = Engine(mode="gaussian", sigma=SIGMA, chains=1, steps=1, num_classes=CLASSES,
                        classifier=TorchClassifier(clf, CLASSES), seed=6, image_shape=(3, 8, 8),
                        device=torch.device("cpu"), config=config)
        got = dict(engine.run((i, images[i], SequentialPolicy(CLASSES, N0, plan)) for i in range(len(images))))
        for i, e in enumerate(expected):
            assert got[i].result == e.result
            assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], e.counts_estimation)
