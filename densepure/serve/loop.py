"""The engine loop: the one thread that owns the engine, fed by every client's requests.

Request handlers (on the event loop, or any thread) call :meth:`EngineLoop.submit` with a
:class:`Work` (a request's images, one policy per image and its task); it goes on a bounded queue, or
is refused with :class:`QueueFull` (the queue's request count or the worst-case draws of everything
accepted would pass their caps). The loop thread builds the engine, warms it up, then repeats: apply
cancellations, admit queued images into free engine slots, run one ``engine.step()`` (one UNet and one
classifier batch mixing rows of every image in flight), and collect the images whose policy decided.
A work whose images are all decided gets its :class:`WorkResult` through its ``on_done`` callback,
called on the loop thread (a handler turns it into ``loop.call_soon_threadsafe``). When there is
nothing to do the thread sleeps on a condition variable; submit, cancel and stop wake it.

Isolation: every image is keyed by ``(work id, index)`` and carries its own policy, seed and noise id;
the engine's counts are per image, so no request sees another's draws.
"""

from __future__ import annotations

import enum
import logging
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from densepure.certify.tasks import AnytimeTask, PredictTask, Task
from densepure.engine.engine import Engine, ImageRequest
from densepure.engine.policy import Policy
from densepure.errors import DensePureError, InputError, ModelOutputError
from densepure.noise import SEED_BITS, NoisePhase

log = logging.getLogger("densepure.serve")


class QueueFull(DensePureError):
    """The server is at a backpressure bound; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class NotAccepting(DensePureError):
    """The loop is not taking work: still loading, draining for shutdown, or failed to load."""


class FailKind(enum.Enum):
    CANCELLED = "cancelled"  # the client went away, its deadline passed, or DELETE
    BAD_INPUT = "bad_input"  # the engine refused an image (the protocol checks come first)
    MODEL_ERROR = "model_error"  # a model returned NaN/inf for a batch this work had rows in
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"


@dataclass(frozen=True)
class ImageOutcome:
    """One decided image: ``label`` (-1 abstains), ``radius`` (certify: Cohen's; certify_radius: the
    requested radius when certified, else 0; predict: 0), ``draws`` (all phases), and the counts."""

    label: int
    radius: float
    draws: int
    selection_counts: np.ndarray
    estimation_counts: np.ndarray


@dataclass(frozen=True)
class WorkResult:
    images: tuple[ImageOutcome, ...]
    queue_wait_s: float


@dataclass(frozen=True)
class WorkFailed:
    kind: FailKind
    message: str


Outcome = WorkResult | WorkFailed


@dataclass(eq=False)
class Work:
    """A request's images ``(B, C, H, W)`` float32 in [0, 1], one policy each, and how to answer it.

    ``seed`` None draws a secret seed from the OS; image ``j`` has noise identity ``(seed, noise_id + j)``.
    ``on_done`` is called exactly once, on the loop thread, with the :data:`Outcome`.
    """

    images: torch.Tensor
    policies: Sequence[Policy]
    task: Task
    on_done: Callable[[Outcome], None]
    draw_bound: int
    seed: int | None = None
    noise_id: int = 0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # progress, written by the loop thread only
    enqueued: float = 0.0
    admitted: float | None = None
    submitted: int = 0
    outcomes: dict[int, ImageOutcome] = field(default_factory=dict)
    draws_done: int = 0

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = secrets.randbits(SEED_BITS)


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
    thread) if the engine cannot be built or warmed up.
    """

    def __init__(self, factory: Callable[[], Engine], max_queue: int, max_queued_draws: int, metrics=None,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self._factory, self._metrics, self._on_fatal = factory, metrics, on_fatal
        self.max_queue, self.max_queued_draws = int(max_queue), int(max_queued_draws)
        self._cond = threading.Condition()
        self._queue: deque[Work] = deque()  # waiting for engine slots (the head may be partly admitted)
        self._works: dict[str, Work] = {}  # every accepted, unresolved work
        self._cancelled: list[Work] = []  # taken off the books by cancel(); the loop frees their slots
        self._pending_draws = 0
        self._stop = self._draining = False
        self.state = LoopState.LOADING
        self.load_error: BaseException | None = None  # why the loop failed (loading, or a model's NaN later)
        self.loaded = False  # the engine was built and warmed up
        self.engine: Engine | None = None
        self._rate = 0.0  # draws/s, smoothed: for Retry-After
        self._thread = threading.Thread(target=self._main, name="densepure-engine", daemon=True)

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

    def submit(self, work: Work) -> None:
        """Queue ``work`` or raise :class:`QueueFull` / :class:`NotAccepting` (nothing is queued then)."""
        with self._cond:
            if self.state is not LoopState.READY:
                raise NotAccepting(f"the server is {self.state.value}")
            waiting = sum(1 for w in self._queue if w.admitted is None)
            if waiting >= self.max_queue:
                raise QueueFull(f"the queue is full ({waiting} requests waiting, --max-queue {self.max_queue})",
                                self._retry_after(self._pending_draws))
            need = work.draw_bound * len(work.policies)
            if self._pending_draws + need > self.max_queued_draws:
                raise QueueFull(f"the server has {self._pending_draws} draws queued; this request may take {need} "
                                f"(--max-queued-draws {self.max_queued_draws})",
                                self._retry_after(self._pending_draws + need - self.max_queued_draws))
            work.enqueued = time.monotonic()
            self._queue.append(work)
            self._works[work.id] = work
            self._pending_draws += need
            self._cond.notify()

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
        """The anytime certificates so far of an unresolved anytime work, one per image (None for an image
        whose selection is not complete), or None. The certificates are immutable values the loop thread
        replaces as the radius grows."""
        with self._cond:
            work = self._works.get(work_id)
        if work is None or not isinstance(work.task, AnytimeTask):
            return None
        certificates = [getattr(policy, "certificate", None) for policy in work.policies]
        return [None if c is None else {"label": c.label, "radius": c.radius, "p_a_lower": c.p_a_lower, "n": c.n}
                for c in certificates]

    def _retry_after(self, excess_draws: int) -> int:
        rate = self._rate if self._rate > 0 else 100.0
        return int(min(300, max(1, np.ceil(excess_draws / rate))))

    # -- the loop thread ----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            engine = self._factory()
        except Exception as exc:  # noqa: BLE001  (a model that will not load: _fail_load reports it, the server exits)
            self._fail_load(exc)
            return
        self.engine = engine
        try:
            with engine, torch.inference_mode():
                self._warm_up(engine)
                with self._cond:
                    self.loaded = True
                    if self.state is LoopState.LOADING:
                        self.state = LoopState.DRAINING if self._draining else LoopState.READY
                    self._cond.notify_all()
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
                                   seed=secrets.randbits(SEED_BITS)))
        while not engine.idle:
            engine.step()
        engine.collect()

    def _serve(self, engine: Engine) -> None:
        last = engine.stats
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
                except ModelOutputError as exc:
                    # no certificate may come from a model that returned NaN/inf (and the executor's flag
                    # stays set): fail what is in flight, stop accepting, report unready and unlive
                    log.error("model output error, the server stops serving: %s", exc)
                    self._fail_in_flight(engine, WorkFailed(FailKind.MODEL_ERROR, str(exc)))
                    with self._cond:
                        self.state, self.load_error = LoopState.FAILED, exc
                    return
                except Exception:  # a bug: fail what is in flight, keep serving, keep the traceback in the log
                    log.exception("engine step failed")
                    self._fail_in_flight(engine, WorkFailed(FailKind.INTERNAL, "internal error in the engine"))
                now = engine.stats
                self._account(now.unet_rows - last.unet_rows, now.classifier_rows - last.classifier_rows,
                              time.monotonic() - started)
                last = now
            for request in engine.collect():
                self._image_done(engine, request)
            if self._metrics is not None:
                self._metrics.in_flight(sum(w.submitted - len(w.outcomes) for w in self._snapshot()))

    def _admit(self, engine: Engine) -> None:
        """Move queued images into free engine slots, first come first served."""
        while engine.free_slots > 0:
            with self._cond:
                if not self._queue:
                    return
                work = self._queue[0]
                if work.submitted + 1 >= len(work.policies):
                    self._queue.popleft()
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
        outcome = image_outcome(work.task, request.policy, engine.smoothing.sigma, j)
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
        if self._metrics is not None and isinstance(outcome, WorkResult):
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


def image_outcome(task: Task, policy: Policy, sigma: float, index: int) -> ImageOutcome:
    """The answer for one decided image, through the task's own record (so its statistics are the
    certify command's): label, radius, draws and the counts."""
    record = task.record(index, -1, 0.0, policy.counts, sigma, getattr(policy, "result", None))
    classes = policy.num_classes
    selection = policy.counts.get(NoisePhase.SELECTION, np.zeros(classes, dtype=np.int64))
    estimation = policy.counts.get(NoisePhase.ESTIMATION, policy.counts.get(NoisePhase.PREDICT))
    return ImageOutcome(record.row.predict, record.row.radius, policy.total_draws, selection.copy(),
                        estimation.copy())
