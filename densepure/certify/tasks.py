"""What is computed per image: Cohen's PREDICT, Cohen's CERTIFY, or sequential certification of a radius.

Each task is a frozen, validated value with two duties: the engine policy that samples what it needs
(:meth:`policy`), and the result record made from the counts that policy collected (:meth:`record`).
Neither takes a sigma of its own: the noise level of the radius is the one the engine drew with
(``engine.smoothing``), passed in by the runner, so a certificate cannot be computed for another noise.

* :class:`PredictTask` - ``n`` draws in phase PREDICT; the top class, or an abstention by the binomial
  test. No radius (its rows have ``radius`` None and go to files in Cohen's predict.py format).
* :class:`CertifyTask` - ``n0`` selection draws pick the class, ``n`` fresh estimation draws bound its
  probability; radius ``sigma * Phi^-1(p_A_lower)`` (Cohen et al. 2019).
* :class:`SequentialTask` - ``n0`` selection draws, then estimation draws until the plan's test decides
  whether the requested radius is certified (:mod:`densepure.certify.sequential`).
* :class:`AnytimeTask` - ``n0`` selection draws, then a budget of estimation draws; the radius is the
  anytime-valid one (:class:`~densepure.certify.confseq.AnytimeRadius`), reported as it grows and valid
  whenever sampling stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from densepure.certify.boundary import DEFAULT_METHOD, AnyPlan, build_plan
from densepure.certify.confseq import AnytimeCertificate
from densepure.certify.policies import AnytimePolicy, SequentialPolicy
from densepure.certify.records import ImageRecord, ResultRow
from densepure.certify.sequential import SequentialMethod, SequentialResult
from densepure.certify.stats import certify_from_counts, predict_from_counts, validate_alpha, validate_sample_count
from densepure.engine.policy import FixedPolicy, Policy
from densepure.errors import ConfigError
from densepure.noise import NoisePhase

Counts = Mapping[NoisePhase, np.ndarray]


def _tuple(counts: np.ndarray | None) -> tuple[int, ...]:
    return () if counts is None else tuple(int(c) for c in counts)


def _row(idx: int, label: int, predicted: int, radius: float | None, seconds: float) -> ResultRow:
    return ResultRow(idx=idx, label=int(label), predict=int(predicted),
                     radius=None if radius is None else float(radius),
                     correct=bool(label >= 0 and predicted == label), time=seconds)


@dataclass(frozen=True)
class PredictTask:
    """Cohen's PREDICT: ``n`` draws, failure probability ``alpha``."""

    n: int
    alpha: float = 0.001

    def __post_init__(self) -> None:
        validate_sample_count("n", self.n)
        validate_alpha(self.alpha)

    def max_draws(self) -> int:
        """The most draws one image takes."""
        return self.n

    def policy(self, num_classes: int, sigma: float) -> Policy:
        return FixedPolicy(num_classes, {NoisePhase.PREDICT: self.n})

    def record(self, idx: int, label: int, seconds: float, counts: Counts, sigma: float,
               result: SequentialResult | None = None) -> ImageRecord:
        pred = predict_from_counts(counts[NoisePhase.PREDICT], self.alpha)
        return ImageRecord(row=_row(idx, label, pred.label, None, seconds), n0=0, n=self.n,
                           estimation_counts=_tuple(counts[NoisePhase.PREDICT]), extra={"p_value": pred.p_value})


@dataclass(frozen=True)
class CertifyTask:
    """Cohen's CERTIFY: ``n0`` selection draws, ``n`` estimation draws, failure probability ``alpha``."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001

    def __post_init__(self) -> None:
        validate_sample_count("n0", self.n0)
        validate_sample_count("n", self.n)
        validate_alpha(self.alpha)

    def max_draws(self) -> int:
        """The most draws one image takes."""
        return self.n0 + self.n

    def policy(self, num_classes: int, sigma: float) -> Policy:
        return FixedPolicy(num_classes, {NoisePhase.SELECTION: self.n0, NoisePhase.ESTIMATION: self.n})

    def record(self, idx: int, label: int, seconds: float, counts: Counts, sigma: float,
               result: SequentialResult | None = None) -> ImageRecord:
        sel, est = counts[NoisePhase.SELECTION], counts[NoisePhase.ESTIMATION]
        cert = certify_from_counts(sel, est, sigma, self.alpha)
        return ImageRecord(row=_row(idx, label, cert.label, cert.radius, seconds), n0=self.n0, n=self.n,
                           selection_counts=_tuple(sel), estimation_counts=_tuple(est),
                           extra={"p_a_lower": cert.p_a_lower})


@dataclass(frozen=True)
class SequentialTask:
    """Sequential certification of ``radius``: ``n0`` selection draws, at most ``n_max`` estimation draws,
    decided by ``method``'s test (:mod:`densepure.certify.boundary`; ``GEOMETRIC`` reproduces runs made
    before the exact boundary test became the default)."""

    n0: int
    radius: float
    alpha: float = 0.001
    n_max: int = 100_000
    method: SequentialMethod = DEFAULT_METHOD

    def __post_init__(self) -> None:
        validate_sample_count("n0", self.n0)
        validate_sample_count("n_max", self.n_max)
        validate_alpha(self.alpha)
        if isinstance(self.radius, bool) or not isinstance(self.radius, (int, float)) or not self.radius >= 0:
            raise ConfigError(f"radius must be a number >= 0, got {self.radius!r}")
        object.__setattr__(self, "method", SequentialMethod.parse(self.method))

    def plan(self, sigma: float) -> AnyPlan:
        """The looks and boundaries, fixed before sampling, for the engine's ``sigma``."""
        return build_plan(self.method, self.radius, sigma, self.alpha, n_max=self.n_max)

    def max_draws(self) -> int:
        """The most draws one image takes."""
        return self.n0 + self.n_max

    def policy(self, num_classes: int, sigma: float) -> Policy:
        return SequentialPolicy(num_classes, self.n0, self.plan(sigma))

    def record(self, idx: int, label: int, seconds: float, counts: Counts, sigma: float,
               result: SequentialResult | None = None) -> ImageRecord:
        if result is None:
            raise ConfigError("a sequential record needs the test's result")
        radius = result.radius_requested if result.certified else 0.0
        extra = {"decision": result.decision.value, "n_used": result.n_used, "p_a_lower": result.p_a_lower,
                 "p_a_upper": result.p_a_upper, "sequential": self.method.value}
        return ImageRecord(row=_row(idx, label, result.label, radius, seconds), n0=self.n0, n=result.n_used,
                           selection_counts=_tuple(counts[NoisePhase.SELECTION]),
                           estimation_counts=_tuple(counts[NoisePhase.ESTIMATION]), extra=extra)


@dataclass(frozen=True)
class AnytimeTask:
    """``n0`` selection draws, ``budget`` estimation draws, failure probability ``alpha``; the radius is the
    largest one the betting confidence sequence certified (valid at any stopping time, slightly below
    CERTIFY's at the same n: :class:`~densepure.certify.confseq.AnytimeRadius`)."""

    n0: int
    budget: int
    alpha: float = 0.001

    def __post_init__(self) -> None:
        validate_sample_count("n0", self.n0)
        validate_sample_count("budget", self.budget)
        validate_alpha(self.alpha)

    def max_draws(self) -> int:
        """The most draws one image takes."""
        return self.n0 + self.budget

    def policy(self, num_classes: int, sigma: float) -> Policy:
        return AnytimePolicy(num_classes, self.n0, self.budget, sigma, self.alpha)

    def record(self, idx: int, label: int, seconds: float, counts: Counts, sigma: float,
               result: AnytimeCertificate | None = None) -> ImageRecord:
        if not isinstance(result, AnytimeCertificate):
            raise ConfigError("an anytime record needs the policy's final certificate")
        return ImageRecord(row=_row(idx, label, result.label, result.radius, seconds), n0=self.n0, n=result.n,
                           selection_counts=_tuple(counts[NoisePhase.SELECTION]),
                           estimation_counts=_tuple(counts[NoisePhase.ESTIMATION]),
                           extra={"p_a_lower": result.p_a_lower, "anytime": True})


Task = PredictTask | CertifyTask | SequentialTask | AnytimeTask
