"""Per-image procedures: CERTIFY, PREDICT (Cohen et al. 2019) and sequential certification.

Selection and estimation are visibly separate: the n0 selection draws use noise phase SELECTION,
the estimation draws use phase ESTIMATION, so the two sets are independent by construction (their
noise keys differ), as CERTIFY's guarantee requires. PREDICT uses its own phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from densepure.certify.sequential import SequentialDecision, SequentialPlan, SequentialResult, SequentialTest
from densepure.certify.stats import (
    Certificate,
    Prediction,
    certify_from_counts,
    predict_from_counts,
    validate_alpha,
    validate_sample_count,
)
from densepure.noise import NoisePhase


class LabelCounter(Protocol):
    """Anything that counts base-classifier labels over a range of draws of one image."""

    num_classes: int

    def count(self, x: torch.Tensor, image: int, phase: NoisePhase, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class CertifyParams:
    """Cohen's CERTIFY settings: ``n0`` selection draws, ``n`` estimation draws, failure probability ``alpha``."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001

    def __post_init__(self) -> None:
        validate_sample_count("n0", self.n0)
        validate_sample_count("n", self.n)
        validate_alpha(self.alpha)


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


def certify(counter: LabelCounter, x: torch.Tensor, image: int, params: CertifyParams, sigma: float) -> CertifyOutcome:
    """CERTIFY: select c_hat on n0 draws, bound p_A on n fresh draws, radius sigma * Phi^-1(p_A_lower)."""
    counts0 = counter.count(x, image, NoisePhase.SELECTION, 0, params.n0)
    counts = counter.count(x, image, NoisePhase.ESTIMATION, 0, params.n)
    cert = certify_from_counts(counts0, counts, sigma, params.alpha)
    return CertifyOutcome(cert, counts0, counts, params.n0 + params.n)


def predict(counter: LabelCounter, x: torch.Tensor, image: int, n: int, alpha: float) -> PredictOutcome:
    """PREDICT: the top class over n draws, or abstain when the binomial test cannot separate the top two."""
    validate_sample_count("n", n)
    counts = counter.count(x, image, NoisePhase.PREDICT, 0, n)
    return PredictOutcome(predict_from_counts(counts, alpha), counts)


def certify_sequential(counter: LabelCounter, x: torch.Tensor, image: int, n0: int,
                       plan: SequentialPlan) -> SequentialOutcome:
    """Is the smoothed classifier robust at ``plan.radius``? Stops at the first decisive look.

    Validity (see :mod:`densepure.certify.sequential`): looks and levels are fixed by ``plan`` before
    any draw; the selection uses independent draws (phase SELECTION); the estimation draws are the
    prefix ``0..n_i-1`` of one fixed i.i.d. sequence, so the counts at look i are exactly those a
    fixed-n_i CERTIFY would see.
    """
    validate_sample_count("n0", n0)
    counts0 = counter.count(x, image, NoisePhase.SELECTION, 0, n0)
    label = int(np.argmax(counts0))
    test = SequentialTest(plan, label)
    counts = np.zeros(counter.num_classes, dtype=np.int64)
    drawn = 0
    while (look := test.next_look) is not None:
        counts += counter.count(x, image, NoisePhase.ESTIMATION, drawn, look)
        drawn = look
        if test.update(int(counts[label]), drawn) is not SequentialDecision.CONTINUE:
            break
    return SequentialOutcome(test.result, counts0, counts, n0 + drawn)
