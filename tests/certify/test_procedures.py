"""CERTIFY / PREDICT / sequential drivers with counters whose behaviour is known exactly."""

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from densepure.certify.procedures import certify, certify_sequential, predict
from densepure.certify.tasks import CertifyTask, PredictTask, SequentialTask
from densepure.diffusion import Mode, SmoothingConfig
from densepure.errors import ConfigError
from densepure.noise import NoisePhase
from densepure.stats.sequential import SequentialDecision


class BernoulliCounter:
    """Label 0 with probability p (seeded per phase and draw), else label 1; records its calls."""

    num_classes = 3

    def __init__(self, p, selection_label=0, sigma=0.25):
        self.p, self.selection_label, self.calls = p, selection_label, []
        self.smoothing = SmoothingConfig(Mode.GAUSSIAN, sigma)

    def count(self, x, image, phase, start, stop):
        self.calls.append((phase, start, stop))
        if phase is NoisePhase.SELECTION:
            return np.bincount(np.full(stop - start, self.selection_label), minlength=3)
        rng = np.random.default_rng([int(phase), image])
        hits = rng.random(stop)[start:stop] < self.p
        return np.bincount(np.where(hits, 0, 1), minlength=3)


X = torch.zeros(1, 2, 2)


def test_certify_uses_independent_phases_and_cohen_radius():
    counter = BernoulliCounter(1.0, sigma=0.5)
    out = certify(counter, X, 4, CertifyTask(n0=10, n=1000, alpha=0.001))
    assert [c[0] for c in counter.calls] == [NoisePhase.SELECTION, NoisePhase.ESTIMATION]
    p_lower = beta.ppf(0.001, 1000, 1)  # = 0.001 ** (1/1000)
    assert out.certificate.label == 0 and out.draws == 1010
    assert out.certificate.radius == pytest.approx(0.5 * norm.ppf(p_lower), rel=1e-12)


def test_certify_abstains_when_selected_class_is_rare():
    counter = BernoulliCounter(0.3)
    out = certify(counter, X, 0, CertifyTask(n0=10, n=500, alpha=0.001))
    assert out.certificate.label == -1 and out.certificate.radius == 0.0


def test_predict_abstains_on_a_coin_flip():
    assert predict(BernoulliCounter(0.5), X, 0, PredictTask(200, 0.001)).prediction.label == -1
    assert predict(BernoulliCounter(0.99), X, 0, PredictTask(200, 0.001)).prediction.label == 0


def test_sequential_stops_early_on_a_confident_input_and_reads_prefixes():
    counter = BernoulliCounter(1.0)
    out = certify_sequential(counter, X, 0, SequentialTask(n0=10, radius=0.25, alpha=0.001, n_max=10_000))
    assert out.result.decision is SequentialDecision.CERTIFIED
    assert out.result.n_used < 1000 and out.draws == 10 + out.result.n_used
    est = [c for c in counter.calls if c[0] is NoisePhase.ESTIMATION]
    assert est[0][1] == 0 and all(a[2] == b[1] for a, b in zip(est, est[1:], strict=False))  # contiguous prefix


def test_sequential_gives_up_early_when_hopeless():
    task = SequentialTask(n0=10, radius=0.5, alpha=0.001, n_max=10_000)
    out = certify_sequential(BernoulliCounter(0.6), X, 0, task)
    assert out.result.decision is SequentialDecision.NOT_CERTIFIED and out.result.n_used < 10_000


def test_params_validation():
    with pytest.raises(ConfigError, match="alpha"):
        CertifyTask(alpha=0.7)
    with pytest.raises(ConfigError, match="n0"):
        CertifyTask(n0=0)
    with pytest.raises(ConfigError, match="n must"):
        PredictTask(0)
    with pytest.raises(ConfigError, match="radius"):
        SequentialTask(n0=10, radius=-1.0)
