"""The statistical sampling policies certification runs on the engine (the engine defines what a
policy is, :mod:`densepure.engine.policy`; certification implements the ones that need statistics)."""

from __future__ import annotations

import numpy as np

from densepure.certify.sequential import SequentialDecision, SequentialPlan, SequentialResult, SequentialTest
from densepure.engine.policy import DrawRequest, Policy
from densepure.noise import NoisePhase


class SequentialPolicy(Policy):
    """Sequential certification at ``plan.radius`` (see :mod:`densepure.certify.sequential`).

    Selection draws (n0) and estimation draws run concurrently, but estimation draws are never
    handed out beyond the next look, and a look is evaluated only once the selection is complete and
    every estimation draw below the look has its label: the counts at look ``n_i`` are those of
    draws ``0..n_i-1``, as the validity argument requires. Stopping happens only at planned looks.
    """

    def __init__(self, num_classes: int, n0: int, plan: SequentialPlan):
        super().__init__(num_classes)
        self.n0, self.plan = int(n0), plan
        self.issued_sel = self.issued_est = self.done_sel = self.done_est = 0
        self.test: SequentialTest | None = None
        self.selected = -1
        self._counts(NoisePhase.SELECTION)
        self._counts(NoisePhase.ESTIMATION)

    def _take(self, limit: int) -> list[DrawRequest]:
        if self.result is not None:
            return []
        sel = min(self.n0, self.issued_sel + limit) - self.issued_sel
        out = [DrawRequest(NoisePhase.SELECTION, d) for d in range(self.issued_sel, self.issued_sel + sel)]
        self.issued_sel += sel
        look = self.test.next_look if self.test is not None else self.plan.looks[0]
        stop = min(look, self.issued_est + limit - len(out))
        out += [DrawRequest(NoisePhase.ESTIMATION, d) for d in range(self.issued_est, stop)]
        self.issued_est = max(self.issued_est, stop)
        return out

    def _recorded(self, request: DrawRequest) -> None:
        if request.phase is NoisePhase.SELECTION:
            self.done_sel += 1
            if self.done_sel == self.n0:
                self.selected = int(np.argmax(self.counts[NoisePhase.SELECTION]))
                self.test = SequentialTest(self.plan, self.selected)
        else:
            self.done_est += 1
        while (self.test is not None and self.test.result is None
               and self.done_est == self.issued_est == self.test.next_look):
            n_a = int(self.counts[NoisePhase.ESTIMATION][self.selected])
            if self.test.update(n_a, self.done_est) is not SequentialDecision.CONTINUE:
                break

    @property
    def result(self) -> SequentialResult | None:
        return self.test.result if self.test is not None else None

    @property
    def done(self) -> bool:
        return self.result is not None and self.outstanding == 0

    @property
    def max_draws(self) -> int:
        return max(self.n0, self.plan.n_max)
