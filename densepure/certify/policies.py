"""The statistical sampling policies certification runs on the engine (the engine defines what a
policy is, :mod:`densepure.engine.policy`; certification implements the ones that need statistics)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from densepure.engine.policy import DrawRequest, FixedPolicy, Policy
from densepure.noise import NoisePhase
from densepure.stats.boundary import AnyPlan
from densepure.stats.confseq import AnytimeCertificate, AnytimeRadius, anytime_looks
from densepure.stats.sequential import SequentialDecision, SequentialResult

LOOKAHEAD = 0.5  # estimation draws may run this fraction beyond the next look (see SequentialPolicy)
MIN_LOOKAHEAD = 16


class SequentialPolicy(Policy):
    """Sequential certification at ``plan.radius`` (see :mod:`densepure.stats.sequential` and
    :mod:`densepure.stats.boundary`): ``n0`` selection draws, then estimation draws until the plan's
    test decides.

    Validity with the engine's batching: the test sees only the counts at its planned looks, and the
    counts at look ``n_i`` are those of estimation draws ``0..n_i-1`` exactly, whatever order their
    labels arrive in. Each draw's label is kept by draw index; a look is evaluated only once the
    selection is complete and every draw below it has its label, in look order. So decisions are a
    function of the i.i.d. label sequence and the plan alone, as the plans' guarantees require, and are
    identical for every batch size and pool size.

    Look-ahead, for latency: when the caller lets it look ahead (``take(..., lookahead=True)``),
    estimation draws are handed out up to ``LOOKAHEAD`` (50 %) beyond the next look (at least
    ``MIN_LOOKAHEAD`` draws, never beyond the plan's ``n_max``), so a dense look schedule does not cost a
    round trip per look; otherwise only up to the next look. Draws beyond the stopping look are computed
    but ignored: the result and the recorded estimation counts are those of draws ``0..n_used-1``. Those
    extra draws change neither which samples the test reads nor when it stops, only the compute spent
    (the engine looks ahead only into room its batches would otherwise leave empty, see the scheduler).
    """

    def __init__(self, num_classes: int, n0: int, plan: AnyPlan):
        super().__init__(num_classes)
        self.n0, self.plan = int(n0), plan
        self.issued_sel = self.issued_est = self.done_sel = 0
        self.test = None
        self.selected = -1
        self.labels = np.full(plan.n_max, -1, dtype=np.int32)  # estimation labels by draw index
        self.hits = 0  # hits of the selected class among draws 0..evaluated-1
        self.evaluated = 0
        self._counts(NoisePhase.SELECTION)
        self._counts(NoisePhase.ESTIMATION)

    def _horizon(self, lookahead: bool) -> int:
        look = self.test.next_look if self.test is not None else self.plan.looks[0]
        ahead = max(MIN_LOOKAHEAD, math.ceil(LOOKAHEAD * look)) if lookahead else 0
        return min(self.plan.n_max, look + ahead)

    def _take(self, limit: int, lookahead: bool) -> list[DrawRequest]:
        if self.result is not None:
            return []
        sel = min(self.n0, self.issued_sel + limit) - self.issued_sel
        out = [DrawRequest(NoisePhase.SELECTION, d) for d in range(self.issued_sel, self.issued_sel + sel)]
        self.issued_sel += sel
        stop = min(self._horizon(lookahead), self.issued_est + limit - len(out))
        out += [DrawRequest(NoisePhase.ESTIMATION, d) for d in range(self.issued_est, stop)]
        self.issued_est = max(self.issued_est, stop)
        return out

    def record(self, request: DrawRequest, label: int, prefix_labels: dict[int, int] | None = None) -> None:
        """Keep estimation labels by draw index (the counts are fixed from the prefix at the stop)."""
        if request.phase is NoisePhase.ESTIMATION:
            self.outstanding -= 1
            if self.result is None:
                self.labels[request.draw] = label
                self._advance()
            return
        super().record(request, label, prefix_labels)

    def _recorded(self, request: DrawRequest) -> None:
        self.done_sel += 1
        if self.done_sel == self.n0:
            self.selected = int(np.argmax(self.counts[NoisePhase.SELECTION]))
            self.test = self.plan.start(self.selected)
            self._advance()

    def _advance(self) -> None:
        """Evaluate every look whose draws have all arrived, in order, until the test stops."""
        while self.test is not None and self.test.result is None:
            look = self.test.next_look
            arrived = self.labels[self.evaluated:look]
            if (arrived < 0).any():
                return
            self.hits += int(np.count_nonzero(arrived == self.selected))
            self.evaluated = look
            if self.test.update(self.hits, look) is not SequentialDecision.CONTINUE:
                used = self.labels[:look]
                self.counts[NoisePhase.ESTIMATION] = np.bincount(used, minlength=self.num_classes).astype(np.int64)
                return

    @property
    def result(self) -> SequentialResult | None:
        return self.test.result if self.test is not None else None

    @property
    def done(self) -> bool:
        """Decided. Look-ahead draws still in flight are dropped by the engine (they are never read)."""
        return self.result is not None and self.done_sel == self.n0

    @property
    def max_draws(self) -> int:
        return max(self.n0, self.plan.n_max)


@dataclass(frozen=True)
class AnytimeResult:
    """An image's final anytime certificate and the cumulative hits of c_hat at each look of
    :func:`~densepure.stats.confseq.anytime_looks` (recorded, so that a verifier replays the sequence)."""

    certificate: AnytimeCertificate
    look_hits: tuple[int, ...]


class AnytimePolicy(FixedPolicy):
    """``n0`` selection draws, then ``budget`` estimation draws, with the anytime-valid radius
    (:class:`~densepure.stats.confseq.AnytimeRadius`) updated as they arrive: :attr:`certificate` is
    the largest radius certified so far, valid whenever sampling stops (a deadline, a client leaving).

    As in :class:`SequentialPolicy`, estimation labels are kept by draw index and the radius is updated
    at a look only once the selection is complete and every draw below the look has its label, in look
    order: the updates read prefixes of the i.i.d. label sequence, whatever the batching.
    """

    def __init__(self, num_classes: int, n0: int, budget: int, sigma: float, alpha: float):
        super().__init__(num_classes, {NoisePhase.SELECTION: n0, NoisePhase.ESTIMATION: budget})
        self.n0, self.budget, self.sigma, self.alpha = int(n0), int(budget), sigma, alpha
        self.labels = np.full(self.budget, -1, dtype=np.int32)  # estimation labels by draw index
        self.looks, self.next_look = anytime_looks(self.budget), 0
        self.done_sel = self.hits = self.evaluated = 0
        self.selected = -1
        self.radius: AnytimeRadius | None = None
        self.look_hits: list[int] = []

    def record(self, request: DrawRequest, label: int, prefix_labels: dict[int, int] | None = None) -> None:
        super().record(request, label, prefix_labels)
        if request.phase is NoisePhase.ESTIMATION:
            self.labels[request.draw] = label
        else:
            self.done_sel += 1
            if self.done_sel == self.n0:
                self.selected = int(np.argmax(self.counts[NoisePhase.SELECTION]))
                self.radius = AnytimeRadius(self.sigma, self.alpha, self.selected)
        self._advance()

    def _advance(self) -> None:
        while self.radius is not None and self.next_look < len(self.looks):
            look = self.looks[self.next_look]
            arrived = self.labels[self.evaluated:look]
            if (arrived < 0).any():
                return
            self.hits += int(np.count_nonzero(arrived == self.selected))
            self.evaluated = look
            self.radius.update(self.hits, look)
            self.look_hits.append(self.hits)
            self.next_look += 1

    @property
    def certificate(self) -> AnytimeCertificate | None:
        """The answer so far (None before the selection is complete)."""
        return self.radius.certificate if self.radius is not None else None

    @property
    def result(self) -> AnytimeResult | None:
        """The final answer, at the budget, with the hits at each look (None until every look is evaluated)."""
        if self.next_look < len(self.looks):
            return None
        return AnytimeResult(self.certificate, tuple(self.look_hits))
