"""Every device of a server behind one endpoint: one engine loop per device, and where each request runs.

:class:`DeviceGroup` has the interface of one :class:`~densepure.serve.loop.EngineLoop` (the routes, the
jobs and the server see one loop) and holds one per device, each with the models loaded on its device.

Routing. A request goes whole to the serving device with the fewest queued draws (the worst-case draws of
everything accepted there and undecided: a certify request at N = 100,000 weighs a thousand certify_radius
requests at n_max = 100; ties go round the devices). If that device's queue is full, the next one is tried.

Splitting. A request whose images may each take at least ``split_min_draws`` draws is split across every
serving device (:mod:`densepure.serve.split`: each round of each image's draws is cut into one share per
device, and the counts are merged exactly) when that is expected to answer it sooner. The rule takes every
device to work through its queued draws at the same rate: whole, the request is answered after
``min(q) + d`` draws of the least loaded device (``d`` its worst-case draws); split over ``D`` devices,
after ``max(q) + d / D`` draws of the most loaded one. Which device draws a sample never changes the
certificate (the noise is keyed by the draw's identity), so the rule is free to be only a heuristic.

Readiness: the group is ready once every device has loaded and warmed its models; a device that fails to
load is a start-up error naming it. A device that fails while serving (its model returned NaN, or its
engine steps keep failing) is taken out of rotation: the requests it was running are answered 503
(UNAVAILABLE: the client retries, and another device answers), the ones still queued on it, of which
nothing was decided, move to another device. With no device left the server fails as one loop would.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import torch

from densepure.errors import ConfigError, DensePureError
from densepure.serve.loop import EngineLoop, LoopState
from densepure.serve.split import SplitWork
from densepure.serve.work import FailKind, NotAccepting, Outcome, QueueFull, Work, WorkFailed

log = logging.getLogger("densepure.serve")


class DeviceLoadError(DensePureError):
    """A device could not load the models (the server does not start)."""


def resolve_devices(devices: Sequence[str], device: str) -> list[str]:
    """The devices to serve on: ``devices`` as given, every CUDA device for ``("all",)``, or the one
    ``device`` (``auto`` resolved) when ``devices`` is empty."""
    if not devices:
        from densepure.engine.device import resolve_device

        return [str(resolve_device(device))]
    if tuple(devices) == ("all",):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("--devices all: this machine has no CUDA device; name the devices (e.g. --devices cpu)")
        return [f"cuda:{i}" for i in range(count)]
    return list(devices)


def device_labels(devices: Sequence[str]) -> list[str]:
    """The ``device`` metric label of each: its name, with ``#k`` for the k-th of a repeated name."""
    seen: dict[str, int] = {}
    labels = []
    for name in devices:
        k = seen[name] = seen.get(name, -1) + 1
        labels.append(f"{name}#{k}" if devices.count(name) > 1 else name)
    return labels


def cpu_threads(devices: Sequence[str], threads: int | None, pin: bool = False) -> list[Callable[[], None] | None]:
    """Per device, what its loop thread runs first: on CPU, ``threads`` torch threads (default: the cores
    shared equally among several CPU loops; one CPU loop keeps torch's default) and, with ``pin``, cores of
    its own when there are enough for every CPU loop (Linux). None for CUDA devices."""
    cpus = [i for i, name in enumerate(devices) if name == "cpu"]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if threads is None and (len(cpus) > 1 or (pin and cpus)):
        threads = max(1, len(cores) // len(cpus)) if cores else 1
    pin = bool(pin and cpus and cores and threads * len(cpus) <= len(cores))
    setups: list[Callable[[], None] | None] = [None] * len(devices)
    for n, i in enumerate(cpus):
        mine = set(cores[n * threads:(n + 1) * threads]) if pin else None
        setups[i] = _cpu_setup(threads, mine) if threads is not None else None
    return setups


def _cpu_setup(threads: int, cores: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        torch.set_num_threads(threads)  # OpenMP: this thread's parallel regions only
        if cores:
            os.sched_setaffinity(0, cores)  # 0: the calling thread; the threads it starts inherit it
    return setup


class DeviceGroup:
    """The engine loops of one server (module docstring). ``names`` label them; ``split_min_draws`` 0 never
    splits; ``lookahead`` is the server's (a split sequential test's rounds look ahead as the engine would);
    ``metrics`` (optional) counts split requests and their draws."""

    def __init__(self, loops: Sequence[EngineLoop], names: Sequence[str], split_min_draws: int = 0,
                 lookahead: bool = True, metrics=None):
        if len(loops) != len(names) or not loops:
            raise ValueError("one name per loop, at least one loop")
        self.loops, self.names = list(loops), list(names)
        self.split_min_draws, self.lookahead, self._metrics = int(split_min_draws), bool(lookahead), metrics
        self._lock = threading.Lock()
        self._owner: dict[str, object] = {}  # work id -> the loop (or the SplitWork) that holds it
        self._replies: dict[str, Callable[[Outcome], None]] = {}
        self._cancelling: set[str] = set()
        self._turn = itertools.count()
        self._started = False

    # -- the interface of one loop --------------------------------------------------------------
    def start(self) -> None:
        """Start every loop (once: a Ray replica starts them before its app's lifespan does)."""
        with self._lock:
            started, self._started = self._started, True
        if not started:
            for loop in self.loops:
                loop.start()

    @property
    def state(self) -> LoopState:
        states = [loop.state for loop in self.loops]
        if any(loop.state is LoopState.FAILED and not loop.loaded for loop in self.loops):
            return LoopState.FAILED  # a device that could not load: the server does not start
        for state in (LoopState.LOADING, LoopState.READY, LoopState.DRAINING):
            if state in states:
                return state
        return LoopState.FAILED if all(s is LoopState.FAILED for s in states) else LoopState.STOPPED

    @property
    def loaded(self) -> bool:
        return all(loop.loaded for loop in self.loops)

    @property
    def load_error(self) -> BaseException | None:
        """Why a device failed: to load (naming it, when there are several), or while serving."""
        for loop, name in zip(self.loops, self.names, strict=True):
            error = loop.load_error
            if error is not None and not loop.loaded and len(self.loops) > 1:
                detail = str(error) if isinstance(error, DensePureError) else f"{type(error).__name__}: {error}"
                return DeviceLoadError(f"device {name} could not load the models: {detail}")
            if error is not None and (not loop.loaded or self.state is LoopState.FAILED):
                return error
        return None

    @property
    def engine(self):
        return next((loop.engine for loop in self.loops if loop.engine is not None), None)

    def wait_ready(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for loop in self.loops:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not loop.wait_ready(left):
                return False
        return self.state is LoopState.READY

    def queued_draws(self) -> int:
        return sum(loop.queued_draws() for loop in self.loops)

    def drain(self) -> None:
        for loop in self.loops:
            loop.drain()

    def stop(self, timeout: float = 30.0) -> None:
        for loop in self.loops:
            loop.stop(timeout)

    def submit(self, work: Work) -> None:
        """Queue ``work`` whole on the least loaded device, or split across all (module docstring); raise
        :class:`QueueFull` if every device is full, :class:`NotAccepting` if none serves."""
        serving = self._serving()
        if not serving or self.state is not LoopState.READY:
            raise NotAccepting(f"the server is {self.state.value}")
        if self._split_pays(work, serving):
            reply = work.on_done
            split = SplitWork(work, serving, self._place, self.cancel, self.engine.num_classes,
                              self.engine.smoothing.sigma, self.lookahead,
                              lambda outcome: self._split_done(work.id, reply, outcome), self._metrics)
            with self._lock:
                self._owner[work.id] = split
            try:
                split.start()
                if self._metrics is not None:
                    self._metrics.split.inc()
                return
            except (QueueFull, NotAccepting):  # a device is full: run it whole where there is room
                with self._lock:
                    self._owner.pop(work.id, None)
        full: list[QueueFull] = []
        for loop in serving:
            try:
                self._place(work, loop, False)
                return
            except QueueFull as exc:
                full.append(exc)
        raise min(full, key=lambda exc: exc.retry_after)

    def cancel(self, work_id: str) -> None:
        with self._lock:
            owner = self._owner.get(work_id)
            if owner is not None:
                self._cancelling.add(work_id)
        if isinstance(owner, SplitWork):
            owner.cancel()  # answers CANCELLED through _split_done
        elif owner is not None:
            owner.cancel(work_id)

    def progress(self, work_id: str) -> tuple[bool, int] | None:
        with self._lock:
            owner = self._owner.get(work_id)
        if isinstance(owner, SplitWork):
            return owner.progress()
        return None if owner is None else owner.progress(work_id)

    def anytime(self, work_id: str) -> list[dict | None] | None:
        """:meth:`EngineLoop.anytime` of whichever loop (or split) holds the work."""
        with self._lock:
            owner = self._owner.get(work_id)
        if isinstance(owner, SplitWork):
            return owner.anytime()
        return None if owner is None else owner.anytime(work_id)

    # -- routing --------------------------------------------------------------------------------
    def _serving(self) -> list[EngineLoop]:
        """The serving loops, least queued draws first (ties in turn)."""
        turn = next(self._turn)
        ready = [(loop.queued_draws(), (i - turn) % len(self.loops), loop) for i, loop in enumerate(self.loops)
                 if loop.state is LoopState.READY]
        return [loop for _, _, loop in sorted(ready, key=lambda t: t[:2])]

    def _split_pays(self, work: Work, serving: list[EngineLoop]) -> bool:
        if len(serving) < 2 or self.split_min_draws <= 0 or work.draw_bound < self.split_min_draws:
            return False
        need = work.draw_bound * len(work.policies)
        queued = [loop.queued_draws() for loop in serving]
        return max(queued) + need / len(serving) < min(queued) + need

    def _split_done(self, work_id: str, reply: Callable[[Outcome], None], outcome: Outcome) -> None:
        with self._lock:
            self._owner.pop(work_id, None)
            self._cancelling.discard(work_id)
        reply(outcome)

    def _place(self, work: Work, loop: EngineLoop, force: bool) -> None:
        """Queue ``work`` on ``loop``; its answer passes :meth:`_settled` first."""
        with self._lock:
            reply = self._replies.setdefault(work.id, work.on_done)
            self._owner[work.id] = loop
        work.on_done = lambda outcome: self._settled(work, loop, outcome)
        try:
            loop.submit(work, force)
        except BaseException:
            work.on_done = reply
            with self._lock:
                self._replies.pop(work.id, None)
                self._owner.pop(work.id, None)
            raise

    def _settled(self, work: Work, loop: EngineLoop, outcome: Outcome) -> None:
        """A loop answered ``work``: pass the answer on, unless its device failed and another can take it."""
        if isinstance(outcome, WorkFailed) and outcome.kind is FailKind.MODEL_ERROR and loop.state is LoopState.FAILED:
            others = [other for other in self._serving() if other is not loop]
            with self._lock:
                cancelled = work.id in self._cancelling
            if others and work.submitted == 0 and not cancelled:  # nothing of it was decided: move it
                try:
                    self._place(work, others[0], True)
                    log.warning("device %s failed: request %s moved to %s", loop.name, work.id, others[0].name)
                    return
                except (QueueFull, NotAccepting):
                    pass
            if others:
                outcome = WorkFailed(FailKind.UNAVAILABLE, f"device {loop.name} failed while serving this request "
                                                           f"({outcome.message}); the other devices serve: retry")
        with self._lock:
            reply = self._replies.pop(work.id, work.on_done)
            if self._owner.get(work.id) is loop:
                del self._owner[work.id]
            self._cancelling.discard(work.id)
        reply(outcome)
