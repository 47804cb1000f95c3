"""The engine loop: the one thread that owns the engine, fed by every client's requests.

Request handlers (on the event loop, or any thread) call :meth:`EngineLoop.submit` with a :class:`Work` (a
request's images, one policy per image and its task); it goes on a bounded queue, ordered by the work's
priority (1 first; first come first served within a priority), or is refused with :class:`QueueFull` (the
queue's request count or the worst-case draws of everything accepted would pass their caps). The loop thread
builds the engine, warms it up, then repeats: apply cancellations, admit queued images into free engine
slots, run one ``engine.step()`` (one UNet and one classifier batch mixing rows of every image in flight),
and collect the images whose policy decided. A work whose images are all decided gets its
:class:`WorkResult` through its ``on_done`` callback, called on the loop thread (a handler turns it into
``loop.call_soon_threadsafe``). When there is nothing to do the thread sleeps on a condition variable;
submit, cancel and stop wake it. A server with several devices runs one loop per device
(:mod:`densepure.serve.devices`).

A device that fails (a model's NaN, or :data:`MAX_STEP_FAILURES` engine steps in a row that raise) puts
its loop in ``FAILED``: what it held is answered ``MODEL_ERROR`` and it takes no more work.

Isolation: every image is keyed by ``(work id, index)`` and carries its own policy, seed and noise id;
the engine's counts are per image, so no request sees another's draws.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from densepure.certify.tasks import PredictTask
from densepure.engine.engine import Engine, ImageRequest
from densepure.errors import DensePureError, InputError, ModelOutputError
from densepure.noise import draw_seed
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
    image_outcome,
    share_outcome,
)

log = logging.getLogger("densepure.serve")
MAX_STEP_FAILURES = 3  # engine steps in a row that raise before a device is taken for failed

__all__ = ["EngineLoop", "FailKind", "ImageOutcome", "LoopState", "NotAccepting", "Outcome", "QueueFull", "Work",
           "WorkFailed", "WorkResult", "image_outcome"]


class LoopState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


class EngineLoop:
    """Owns the engine made by ``factory`` on its own thread (module docstring).

    ``metrics`` (optional) receives ``step(unet_rows, classifier_rows)``, ``queue_wait(seconds)``,
    ``image_done(draws)``, ``work_done(draws)`` and ``in_flight(images)``; ``on_fatal`` is called (loop
    thread) if the engine cannot be built or warmed up. ``setup`` runs first on the loop's thread (a CPU
    device's thread count and cores); ``name`` names the device in the thread's name and the log.
    """

    def __init__(self, factory: Callable[[], Engine], max_queue: int, max_queued_draws: int, metrics=None,
                 on_fatal: Callable[[BaseException], None] | None = None, setup: Callable[[], None] | None = None,
                 name: str | None = None):
        self._factory, self._metrics, self._on_fatal, self._setup = factory, metrics, on_fatal, setup
        self.name = name
        self.max_queue, self.max_queued_draws = int(max_queue), int(max_queued_draws)
        self._cond = threading.Condition()
        # waiting for engine slots, by (priority, arrival); the head may be partly admitted
        self._queue: list[Work] = []
        self._arrivals = itertools.count()
        self._works: dict[str, Work] = {}  # every accepted, unresolved work
        self._cancelled: list[Work] = []  # taken off the books by cancel(); the loop frees their slots
        self._pending_draws = 0
        self._stop = self._draining = False
        self.state = LoopState.LOADING
        self.load_error: BaseException | None = None  # why the loop failed (loading, or a model's NaN later)
        self.loaded = False  # the engine was built and warmed up
        self.engine: Engine | None = None
        self._rate = 0.0  # draws/s, smoothed: for Retry-After
        self._thread = threading.Thread(target=self._main, name="densepure-engine" + (f"-{name}" if name else ""),
                                        daemon=True)

    # -- any thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the engine is loaded and warm (True) or failed or stopped (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.state is LoopState.LOADING:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return self.state is LoopState.READY

    def submit(self, work: Work, force: bool = False) -> None:
        """Queue ``work`` or raise :class:`QueueFull` / :class:`NotAccepting` (nothing is queued then).
        ``force``: the work belongs to a request accepted already (a split request's next round, a work moved
        off a failed device): the caps do not apply and it goes ahead of new works of its priority."""
        with self._cond:
            if self.state is not LoopState.READY:
                raise NotAccepting(f"the server is {self.state.value}")
            need = work.draw_bound * len(work.policies)
            if not force:
                self._check_room(need)
            work.enqueued = time.monotonic()
            work.arrival = -1 if force else next(self._arrivals)
            bisect.insort(self._queue, work, key=lambda w: (w.priority, w.arrival))
            self._works[work.id] = work
            self._pending_draws += need
            self._cond.notify()

    def _check_room(self, need: int) -> None:
        """Raise :class:`QueueFull` if a work of ``need`` draws would pass a cap (the lock is held)."""
        waiting = sum(1 for w in self._queue if w.admitted is None)
        if waiting >= self.max_queue:
            raise QueueFull(f"the queue is full ({waiting} requests waiting, --max-queue {self.max_queue})",
                            self._retry_after(self._pending_draws))
        if self._pending_draws + need > self.max_queued_draws:
            raise QueueFull(f"the server has {self._pending_draws} draws queued; this request may take {need} "
                            f"(--max-queued-draws {self.max_queued_draws})",
                            self._retry_after(self._pending_draws + need - self.max_queued_draws))

    def cancel(self, work_id: str) -> None:
        """Drop a work, queued or in flight: its draws leave the queue's count now, its engine slots are freed
        before the next step, and it is answered CANCELLED; no-op once resolved."""
        with self._cond:
            work = self._take(work_id)
            if work is not None:
                self._cancelled.append(work)
                self._cond.notify()

    def _take(self, work_id: str) -> Work | None:
        """Take a work off the books (the lock is held)."""
        work = self._works.pop(work_id, None)
        if work is not None:
            if work in self._queue:
                self._queue.remove(work)
            self._pending_draws -= work.draw_bound * len(work.policies)
        return work

    def drain(self) -> None:
        """Stop accepting work (shutdown); what was accepted keeps running."""
        with self._cond:
            self._draining = True
            if self.state is LoopState.READY:
                self.state = LoopState.DRAINING

    def stop(self, timeout: float = 30.0) -> None:
        """Fail whatever is left (SHUTDOWN) and end the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def queued_draws(self) -> int:
        with self._cond:
            return self._pending_draws

    def progress(self, work_id: str) -> tuple[bool, int] | None:
        """(admitted, draws recorded so far) of an unresolved work, or None."""
        with self._cond:
            work = self._works.get(work_id)
            return None if work is None else (work.admitted is not None, work.draws_done)

    def anytime(self, work_id: str) -> list[dict | None] | None:
        """The anytime certificates so far of an unresolved ``certify_anytime`` work (:func:`anytime_view`),
        or None."""
        with self._cond:
            work = self._works.get(work_id)
        return None if work is None else anytime_view(work.task, work.policies)

    def _retry_after(self, excess_draws: int) -> int:
        rate = self._rate if self._rate > 0 else 100.0
        return int(min(300, max(1, np.ceil(excess_draws / rate))))

    # -- the loop thread ----------------------------------------------------------------------
    def _main(self) -> None:
        started = time.monotonic()
        try:
            if self._setup is not None:
                self._setup()
            engine = self._factory()
        except Exception as exc:  # noqa: BLE001  (a model that will not load: _fail_load reports it, the server exits)
            self._fail_load(exc)
            return
        self.engine = engine
        try:
            with engine, torch.inference_mode():
                built = time.monotonic()
                self._warm_up(engine)
                with self._cond:
                    self.loaded = True
                    if self.state is LoopState.LOADING:
                        self.state = LoopState.DRAINING if self._draining else LoopState.READY
                    self._cond.notify_all()
                log.info("ready%s: the models were built in %.1f s and warmed up in %.1f s",
                         f" on {self.name}" if self.name else "", built - started, time.monotonic() - built)
                self._serve(engine)
        except BaseException as exc:
            if self.state is LoopState.LOADING:
                self._fail_load(exc)
            else:
                log.exception("the engine loop stopped")
        finally:
            failed = self.state is LoopState.FAILED
            self._resolve_all(WorkFailed(FailKind.MODEL_ERROR if failed else FailKind.SHUTDOWN,
                                         f"the server stopped serving: {self.load_error}" if failed
                                         else "the server is shutting down"))
            with self._cond:
                if self.state is not LoopState.FAILED:
                    self.state = LoopState.STOPPED
                self._cond.notify_all()

    def _fail_load(self, exc: BaseException) -> None:
        with self._cond:
            self.state, self.load_error = LoopState.FAILED, exc
            self._cond.notify_all()
        if not isinstance(exc, DensePureError):
            log.exception("the engine could not be built", exc_info=exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _warm_up(self, engine: Engine) -> None:
        """A few draws of a mid-grey image through both models (on CUDA: allocations, kernels, graphs)."""
        policy = PredictTask(n=8).policy(engine.num_classes, engine.smoothing.sigma)
        engine.submit(ImageRequest("warm-up", torch.full(engine.image_shape, 0.5), policy,
                                   seed=draw_seed()))
        while not engine.idle:
            engine.step()
        engine.collect()

    def _serve(self, engine: Engine) -> None:
        last, failures = engine.stats, 0
        while True:
            with self._cond:
                while not (self._stop or self._cancelled or self._queue) and engine.idle:
                    self._cond.wait()
                if self._stop:
                    return
                cancelled, self._cancelled = self._cancelled, []
            for work in cancelled:
                self._finish(engine, work, WorkFailed(FailKind.CANCELLED, "cancelled"))
            self._admit(engine)
            if not engine.idle:
                started = time.monotonic()
                try:
                    engine.step()
                    failures = 0
                except ModelOutputError as exc:
                    # no certificate may come from a model that returned NaN/inf (and the executor's flag
                    # stays set): fail what is in flight, stop accepting, report unready and unlive
                    log.error("model output error%s, it stops serving: %s", self._where, exc)
                    self._fail(engine, exc)
                    return
                except Exception as exc:  # a bug: fail what is in flight, keep serving, keep the traceback in the log
                    failures += 1
                    log.exception("engine step failed%s", self._where)
                    if failures >= MAX_STEP_FAILURES:  # not one request's bad luck: the device is failing
                        log.error("%d engine steps in a row failed%s, it stops serving", failures, self._where)
                        self._fail(engine, exc)
                        return
                    self._fail_in_flight(engine, WorkFailed(FailKind.INTERNAL, "internal error in the engine"))
                now = engine.stats
                self._account(now.unet_rows - last.unet_rows, now.classifier_rows - last.classifier_rows,
                              time.monotonic() - started)
                last = now
            for request in engine.collect():
                self._image_done(engine, request)
            if self._metrics is not None:
                self._metrics.in_flight(sum(w.submitted - len(w.outcomes) for w in self._snapshot()))

    @property
    def _where(self) -> str:
        return f" on {self.name}" if self.name else ""

    def _fail(self, engine: Engine, exc: BaseException) -> None:
        """The device failed: what is in flight is answered MODEL_ERROR (the state says FAILED first, so that a
        device group knows why), the queued works when the loop ends."""
        with self._cond:
            self.state, self.load_error = LoopState.FAILED, exc
            self._cond.notify_all()
        self._fail_in_flight(engine, WorkFailed(FailKind.MODEL_ERROR, str(exc) or type(exc).__name__))

    def _admit(self, engine: Engine) -> None:
        """Move queued images into free engine slots, first come first served."""
        while engine.free_slots > 0:
            with self._cond:
                if not self._queue:
                    return
                work = self._queue[0]
                if work.submitted + 1 >= len(work.policies):
                    self._queue.pop(0)
            j = work.submitted
            try:
                engine.submit(ImageRequest((work.id, j), work.images[j], work.policies[j], work.seed,
                                           work.noise_id + j))
            except InputError as exc:
                self._resolve(engine, work.id, WorkFailed(FailKind.BAD_INPUT, str(exc)))
                continue
            work.submitted += 1
            if work.admitted is None:
                work.admitted = time.monotonic()
                if self._metrics is not None:
                    self._metrics.queue_wait(work.admitted - work.enqueued)

    def _image_done(self, engine: Engine, request: ImageRequest) -> None:
        work_id, j = request.key
        work = self._works.get(work_id)
        if work is None:
            return
        policy = request.policy
        outcome = (share_outcome(policy) if work.partial else
                   image_outcome(work.task, policy, engine.smoothing.sigma, j))
        work.outcomes[j] = outcome
        if self._metrics is not None:
            self._metrics.image_done(outcome.draws)
        if len(work.outcomes) == len(work.policies):
            images = tuple(work.outcomes[i] for i in range(len(work.policies)))
            self._resolve(engine, work_id, WorkResult(images, work.admitted - work.enqueued))

    def _resolve(self, engine: Engine | None, work_id: str, outcome: Outcome) -> None:
        """Finish a work once: take it off the books (queue, draws), drop its images from the engine, answer it."""
        with self._cond:
            work = self._take(work_id)
        if work is not None:
            self._finish(engine, work, outcome)

    def _finish(self, engine: Engine | None, work: Work, outcome: Outcome) -> None:
        if engine is not None:
            for j in range(work.submitted):
                if j not in work.outcomes:
                    engine.cancel((work.id, j))
        if self._metrics is not None and isinstance(outcome, WorkResult) and not work.partial:
            self._metrics.work_done(sum(image.draws for image in outcome.images))
        try:
            work.on_done(outcome)
        except Exception:  # a callback's bug must not stop the loop
            log.exception("a work's on_done callback failed")

    def _snapshot(self) -> list[Work]:
        with self._cond:
            return list(self._works.values())

    def _fail_in_flight(self, engine: Engine, outcome: WorkFailed) -> None:
        for work in [w for w in self._snapshot() if w.submitted > 0]:
            self._resolve(engine, work.id, outcome)
        engine.collect()

    def _resolve_all(self, outcome: WorkFailed) -> None:
        with self._cond:
            ids = list(self._works)
            cancelled, self._cancelled = self._cancelled, []
        for work in cancelled:
            self._finish(None, work, WorkFailed(FailKind.CANCELLED, "cancelled"))
        for work_id in ids:
            self._resolve(None, work_id, outcome)

    def _account(self, unet_rows: int, classifier_rows: int, seconds: float) -> None:
        """Metrics of one step, each work's draws so far (job progress) and the draw rate (Retry-After)."""
        in_flight = [w for w in self._snapshot() if w.submitted > 0]
        draws = 0
        for work in in_flight:
            before = work.draws_done
            work.draws_done = sum(o.draws for o in work.outcomes.values()) + sum(
                p.total_draws for j, p in enumerate(work.policies[:work.submitted]) if j not in work.outcomes)
            draws += work.draws_done - before
        if seconds > 0 and draws > 0:
            self._rate = 0.8 * self._rate + 0.2 * draws / seconds if self._rate else draws / seconds
        if self._metrics is not None:
            self._metrics.step(unet_rows, classifier_rows)
