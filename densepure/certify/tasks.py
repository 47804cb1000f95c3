"""What is computed per image: Cohen's PREDICT, Cohen's CERTIFY, or sequential certification of a radius.

Each task is a frozen, validated value that owns an image's whole lifecycle: the engine policy that
samples what it needs (:meth:`policy`), the result record made from the counts that policy collected
(:meth:`record`), and, once the policy decided, everything written for the image (:meth:`image_result`:
the record and the records of each draw's first ``k`` chains), the one call the dataset runner, the
cluster driver and the server make. It also says what it is to the outside: :attr:`procedure` (its
name, echoed by the server) and :attr:`max_draws` (the most draws one image may take).
Neither takes a sigma of its own: the noise level of the radius is the one the engine drew with
(``engine.smoothing``), passed in by the runner, so a certificate cannot be computed for another noise.

* :class:`PredictTask` - ``n`` draws in phase PREDICT; the top class, or an abstention by the binomial
  test. No radius (its rows have ``radius`` None and go to files in Cohen's predict.py format).
* :class:`CertifyTask` - ``n0`` selection draws pick the class, ``n`` fresh estimation draws bound its
  probability; radius ``sigma * Phi^-1(p_A_lower)`` (Cohen et al. 2019).
* :class:`SequentialTask` - ``n0`` selection draws, then estimation draws until the plan's test decides
  whether the requested radius is certified (:mod:`densepure.stats.sequential`).
* :class:`AnytimeTask` - ``n0`` selection draws, then a budget of estimation draws; the radius is the
  anytime-valid one (:class:`~densepure.stats.confseq.AnytimeRadius`), reported as it grows and valid
  whenever sampling stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from densepure.certify.policies import AnytimePolicy, AnytimeResult, SequentialPolicy
from densepure.engine.policy import FixedPolicy, Policy
from densepure.errors import ConfigError
from densepure.noise import NoisePhase
from densepure.results.records import ImageRecord, ResultRow
from densepure.stats.boundary import DEFAULT_METHOD, AnyPlan, build_plan
from densepure.stats.cohen import certify_from_counts, predict_from_counts, validate_alpha, validate_sample_count
from densepure.stats.sequential import SequentialMethod, SequentialResult

Counts = Mapping[NoisePhase, np.ndarray]


def _tuple(counts: np.ndarray | None) -> tuple[int, ...]:
    return () if counts is None else tuple(int(c) for c in counts)


def _row(idx: int, label: int, predicted: int, radius: float | None, seconds: float) -> ResultRow:
    return ResultRow(idx=idx, label=int(label), predict=int(predicted),
                     radius=None if radius is None else float(radius),
                     correct=bool(label >= 0 and predicted == label), time=seconds)


@dataclass(frozen=True)
class ImageResult:
    """One decided image: its main record, the records of its first ``k`` chains (``prefixes[k]``) and
    the draws it took."""

    record: ImageRecord
    prefixes: Mapping[int, ImageRecord]
    draws: int


class _Lifecycle:
    """What every task does with a decided policy (the tasks below supply ``record``)."""

    def image_result(self, idx: int, label: int, policy: Policy, sigma: float, prefixes: tuple[int, ...] = (),
                     seconds: float | None = None) -> ImageResult:
        """The records of a decided image: ``label`` its true label (-1: unknown), ``sigma`` the noise the
        engine drew with, ``prefixes`` the chain counts k whose records are wanted too (the policy must
        have counted them), ``seconds`` its time (default: the policy's own)."""
        result = getattr(policy, "result", None)
        seconds = policy.seconds if seconds is None else seconds
        record = self.record(idx, label, seconds, policy.counts, sigma, result)  # type: ignore[attr-defined]
        extra = {k: self.record(idx, label, seconds, policy.prefix_counts[k], sigma, result)  # type: ignore[attr-defined]
                 for k in prefixes}
        return ImageResult(record, extra, policy.total_draws)


@dataclass(frozen=True)
class PredictTask(_Lifecycle):
    """Cohen's PREDICT: ``n`` draws, failure probability ``alpha``."""

    n: int
    alpha: float = 0.001

    procedure = "cohen_predict"

    def __post_init__(self) -> None:
        validate_sample_count("n", self.n)
        validate_alpha(self.alpha)

    @property
    def max_draws(self) -> int:
        return self.n

    def policy(self, num_classes: int, sigma: float) -> Policy:
        return FixedPolicy(num_classes, {NoisePhase.PREDICT: self.n})

    def record(self, idx: int, label: int, seconds: float, counts: Counts, sigma: float,
               result: SequentialResult | None = None) -> ImageRecord:
        pred = predict_from_counts(counts[NoisePhase.PREDICT], self.alpha)
        return ImageRecord(row=_row(idx, label, pred.label, None, seconds), n0=0, n=self.n,
                           estimation_counts=_tuple(counts[NoisePhase.PREDICT]), extra={"p_value": pred.p_value})


@dataclass(frozen=True)
class CertifyTask(_Lifecycle):
    """Cohen's CERTIFY: ``n0`` selection draws, ``n`` estimation draws, failure probability ``alpha``."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001

    procedure = "cohen_certify"

    def __post_init__(self) -> None:
        validate_sample_count("n0", self.n0)
        validate_sample_count("n", self.n)
        validate_alpha(self.alpha)

    @property
    def max_draws(self) -> int:
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
class SequentialTask(_Lifecycle):
    """Sequential certification of ``radius``: ``n0`` selection draws, at most ``n_max`` estimation draws,
    decided by ``method``'s test (:mod:`densepure.stats.boundary`; ``GEOMETRIC`` reproduces runs made
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

    @property
    def procedure(self) -> str:
        return f"sequential_{self.method.value}"  # e.g. sequential_exact: the exact-boundary test

    @property
    def max_draws(self) -> int:
        return self.n0 + self.n_max

    def plan(self, sigma: float) -> AnyPlan:
        """The looks and boundaries, fixed before sampling, for the engine's ``sigma``."""
        return build_plan(self.method, self.radius, sigma, self.alpha, n_max=self.n_max)

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
class AnytimeTask(_Lifecycle):
    """``n0`` selection draws, ``budget`` estimation draws, failure probability ``alpha``; the radius is the
    largest one the betting confidence sequence certified (valid at any stopping time, slightly below
    CERTIFY's at the same n: :class:`~densepure.stats.confseq.AnytimeRadius`)."""

    n0: int
    budget: int
    alpha: float = 0.001

    procedure = "anytime_betting"

    def __post_init__(self) -> None:
        validate_sample_count("n0", self.n0)
        validate_sample_count("budget", self.budget)
        validate_alpha(self.alpha)

    @property
    def max_draws(self) -> int:
        return self.n0 + self.budget

    def policy(self, num_classes: int, sigma: float) -> Policy:
        return AnytimePolicy(num_classes, self.n0, self.budget, sigma, self.alpha)

    def record(self, idx: int, label: int, seconds: float, counts: Counts, sigma: float,
               result: AnytimeResult | None = None) -> ImageRecord:
        """The image's record; ``look_hits`` (the cumulative hits at each look) lets a verifier replay the
        confidence sequence (:mod:`densepure.results.verify`)."""
        if not isinstance(result, AnytimeResult):
            raise ConfigError("an anytime record needs the policy's final result")
        cert = result.certificate
        return ImageRecord(row=_row(idx, label, cert.label, cert.radius, seconds), n0=self.n0, n=cert.n,
                           selection_counts=_tuple(counts[NoisePhase.SELECTION]),
                           estimation_counts=_tuple(counts[NoisePhase.ESTIMATION]),
                           extra={"p_a_lower": cert.p_a_lower, "anytime": True, "look_hits": list(result.look_hits)})


Task = PredictTask | CertifyTask | SequentialTask | AnytimeTask
