"""Per-image procedures on the plain path: CERTIFY, PREDICT (Cohen et al. 2019) and sequential
certification, driven one image at a time through a :class:`LabelCounter` (for instance the engine's
:class:`~densepure.engine.reference.ReferenceSampler`). The engine runs the same tasks as policies
(:mod:`densepure.certify.tasks`); these drivers are what its results are tested against.

Selection and estimation are visibly separate: the n0 selection draws use noise phase SELECTION,
the estimation draws use phase ESTIMATION, so the two sets are independent by construction (their
noise keys differ), as CERTIFY's guarantee requires. PREDICT uses its own phase. The radius uses the
counter's own ``smoothing.sigma``: the noise it drew with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from densepure.certify.tasks import CertifyTask, PredictTask, SequentialTask
from densepure.diffusion import SmoothingConfig
from densepure.noise import NoisePhase
from densepure.stats.cohen import Certificate, Prediction, certify_from_counts, predict_from_counts
from densepure.stats.sequential import SequentialDecision, SequentialResult


class LabelCounter(Protocol):
    """Anything that counts base-classifier labels over a range of draws of one image."""

    num_classes: int
    smoothing: SmoothingConfig

    def count(self, x: torch.Tensor, image: int, phase: NoisePhase, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class CertifyOutcome:
    certificate: Certificate
    counts_selection: np.ndarray
    counts_estimation: np.ndarray
    draws: int


@dataclass(frozen=True)
class PredictOutcome:
    prediction: Prediction
    counts: np.ndarray


@dataclass(frozen=True)
class SequentialOutcome:
    result: SequentialResult
    counts_selection: np.ndarray
    counts_estimation: np.ndarray
    draws: int


def certify(counter: LabelCounter, x: torch.Tensor, image: int, task: CertifyTask) -> CertifyOutcome:
    """CERTIFY: select c_hat on n0 draws, bound p_A on n fresh draws, radius sigma * Phi^-1(p_A_lower)."""
    counts0 = counter.count(x, image, NoisePhase.SELECTION, 0, task.n0)
    counts = counter.count(x, image, NoisePhase.ESTIMATION, 0, task.n)
    cert = certify_from_counts(counts0, counts, counter.smoothing.sigma, task.alpha)
    return CertifyOutcome(cert, counts0, counts, task.n0 + task.n)


def predict(counter: LabelCounter, x: torch.Tensor, image: int, task: PredictTask) -> PredictOutcome:
    """PREDICT: the top class over n draws, or abstain when the binomial test cannot separate the top two."""
    counts = counter.count(x, image, NoisePhase.PREDICT, 0, task.n)
    return PredictOutcome(predict_from_counts(counts, task.alpha), counts)


def certify_sequential(counter: LabelCounter, x: torch.Tensor, image: int, task: SequentialTask) -> SequentialOutcome:
    """Is the smoothed classifier robust at ``task.radius``? Stops at the first decisive look.

    Validity (see :mod:`densepure.stats.sequential`): looks and levels are fixed by the plan before
    any draw; the selection uses independent draws (phase SELECTION); the estimation draws are the
    prefix ``0..n_i-1`` of one fixed i.i.d. sequence, so the counts at look i are exactly those a
    fixed-n_i CERTIFY would see.
    """
    counts0 = counter.count(x, image, NoisePhase.SELECTION, 0, task.n0)
    label = int(np.argmax(counts0))
    test = task.plan(counter.smoothing.sigma).start(label)
    counts = np.zeros(counter.num_classes, dtype=np.int64)
    drawn = 0
    while (look := test.next_look) is not None:
        counts += counter.count(x, image, NoisePhase.ESTIMATION, drawn, look)
        drawn = look
        if test.update(int(counts[label]), drawn) is not SequentialDecision.CONTINUE:
            break
    return SequentialOutcome(test.result, counts0, counts, task.n0 + drawn)
