"""One request's draws split across devices, with the counts merged exactly.

A :class:`SplitWork` holds each image's sampling policy (the one the request's task made, as the Ray
driver's :class:`~densepure.distributed.work.DrawSplits` does) and runs it round by round: it asks the
policy for the draws it needs now (``take``: all of them for CERTIFY and PREDICT, the selection and the
estimation draws up to the next look, with the look-ahead the server runs, for a sequential test), cuts
them into one share per device with :func:`~densepure.distributed.work.split_draws`, and queues each share
on its device as a *partial* work whose policy is a :class:`~densepure.distributed.work.RangeLabels`: a
fixed set of draw indices that keeps each draw's label. When every share of a round is back, the labels
are recorded into the image's policy in draw order (:func:`~densepure.distributed.work.record_part`), and
the policy decides or asks for the next round.

Exactness: a draw's noise is a function of its identity (seed, image noise id, phase, draw, chain, step),
never of the device or the batch, so a share computes exactly the labels one device would for the same
draw indices; the policy sees the labels of exactly the draws it handed out, so its counts, the looks at
which a sequential test stops, and the certificate are those of the unsplit request. Splitting changes
which device computes a draw, not which draws are read or when sampling stops.
"""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from densepure.distributed.work import RangeLabels, Ranges, record_part, split_draws
from densepure.engine.policy import Policy
from densepure.serve.work import (
    FailKind,
    ImageOutcome,
    NotAccepting,
    Outcome,
    QueueFull,
    Work,
    WorkFailed,
    WorkResult,
    anytime_view,
)
from densepure.serve.work import image_outcome as decided_outcome

log = logging.getLogger("densepure.serve")
Place = Callable[[Work, object, bool], None]  # (work, loop, force): queue a work on a device's loop
Cancel = Callable[[str], None]  # cancel a queued work by id, wherever it went


@dataclass
class _Share:
    index: int  # the share's place in its round (draw order)
    ranges: Ranges
    policy: RangeLabels
    work: Work


@dataclass
class _Image:
    policy: Policy
    round: int = 0
    shares: dict[str, _Share] = field(default_factory=dict)  # the current round's, by work id
    returned: list[_Share] = field(default_factory=list)
    outcome: ImageOutcome | None = None


class SplitWork:
    """``work``'s images, each sampled in shares on ``loops`` (one share per loop and round); ``place`` queues a
    share on a loop, ``cancel`` drops one. ``on_done`` gets the merged result, as if one device had run it;
    ``metrics`` (optional) its draws (``work_done``)."""

    def __init__(self, work: Work, loops: Sequence, place: Place, cancel: Cancel, num_classes: int, sigma: float,
                 lookahead: bool, on_done: Callable[[Outcome], None], metrics=None):
        self.work, self.loops, self._place, self._cancel = work, list(loops), place, cancel
        self._num_classes, self._sigma, self._lookahead = int(num_classes), float(sigma), bool(lookahead)
        self._reply, self._metrics = on_done, metrics
        # policies of its own: the request's stay untouched, so it can still run whole if the split is refused
        self._images = [_Image(work.task.policy(num_classes, sigma)) for _ in work.policies]
        self._lock = threading.RLock()
        self._closed = False
        self._queue_wait: float | None = None

    @property
    def id(self) -> str:
        return self.work.id

    def start(self) -> None:
        """Queue every image's first round under the loops' caps; on QueueFull or NotAccepting nothing stays
        queued and the error is raised (the caller runs the request whole instead)."""
        try:
            with self._lock:
                for j in range(len(self._images)):
                    self._next_round(j, force=False)
        except (QueueFull, NotAccepting):
            self._close(None)
            raise

    def cancel(self) -> None:
        """Drop every share still queued or running and answer CANCELLED."""
        self._close(WorkFailed(FailKind.CANCELLED, "cancelled"))

    def progress(self) -> tuple[bool, int]:
        """(a share has entered an engine, draws recorded or running so far)."""
        with self._lock:
            shares = [s for image in self._images for s in image.shares.values()]
            admitted = self._queue_wait is not None or any(s.work.admitted is not None for s in shares)
            draws = sum(image.policy.total_draws for image in self._images) + sum(s.work.draws_done for s in shares)
            return admitted, draws

    def anytime(self) -> list[dict | None] | None:
        """Each image's anytime certificate so far (``certify_anytime``), from its whole-image policy."""
        with self._lock:
            return anytime_view(self.work.task, [image.policy for image in self._images])

    # -- the loops' threads ---------------------------------------------------------------------
    def _next_round(self, j: int, force: bool) -> None:
        image = self._images[j]
        requests = image.policy.take(sys.maxsize, self._lookahead)
        if not requests:
            raise RuntimeError(f"image {j}: its policy is not decided but asks for no draws")
        image.round += 1
        w = self.work
        for k, ranges in enumerate(split_draws(requests, len(self.loops))):
            policy, share_id = RangeLabels(self._num_classes, ranges), uuid.uuid4().hex
            share = Work(w.images[j:j + 1], [policy], w.task,
                         lambda outcome, j=j, share_id=share_id: self._on_share(j, share_id, outcome),
                         sum(stop - start for _, start, stop in ranges), seed=w.seed, noise_id=w.noise_id + j,
                         priority=w.priority, partial=True, id=share_id)
            image.shares[share_id] = _Share(k, ranges, policy, share)
            self._place(share, self.loops[k], force)

    def _on_share(self, j: int, share_id: str, outcome: Outcome) -> None:
        with self._lock:
            if self._closed:
                return
            image = self._images[j]
            share = image.shares.pop(share_id, None)
            if share is None:
                return
            if isinstance(outcome, WorkFailed):
                failure = outcome
            else:
                if self._queue_wait is None:
                    self._queue_wait = outcome.queue_wait_s
                image.returned.append(share)
                failure = self._round_done_safely(j) if not image.shares else None
            finished = all(image.outcome is not None for image in self._images)
        if failure is not None:
            self._close(failure)
        elif finished:
            self._finish()

    def _round_done_safely(self, j: int) -> WorkFailed | None:
        try:
            return self._round_done(j)
        except Exception:  # a bug: this request fails (500), the loops serve on; the log keeps the traceback
            log.exception("split request %s: recording a round failed", self.work.id)
            return WorkFailed(FailKind.INTERNAL, "internal error while merging a split request's draws")

    def _round_done(self, j: int) -> WorkFailed | None:
        """Every share of image ``j``'s round is back: record the labels in draw order, then decide or go on."""
        image = self._images[j]
        for share in sorted(image.returned, key=lambda s: s.index):
            record_part(image.policy, share.ranges, share.policy.labelled((j, image.round, share.index), 0.0), ())
        image.returned.clear()
        if image.policy.done:
            image.outcome = decided_outcome(self.work.task, image.policy, self._sigma, j)
            return None
        try:
            self._next_round(j, force=True)
        except (QueueFull, NotAccepting) as exc:
            return WorkFailed(FailKind.UNAVAILABLE, f"a device stopped taking work during a split request: {exc}")
        return None

    def _finish(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        images = tuple(image.outcome for image in self._images)
        if self._metrics is not None:
            self._metrics.work_done(sum(o.draws for o in images))
        self._reply(WorkResult(images, self._queue_wait or 0.0))

    def _close(self, outcome: WorkFailed | None) -> None:
        """Cancel what is out and answer ``outcome`` (None: answer nothing: the request was not accepted)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            out = [share_id for image in self._images for share_id in image.shares]
            for image in self._images:
                image.shares.clear()
        for share_id in out:
            self._cancel(share_id)
        if outcome is not None:
            self._reply(outcome)
