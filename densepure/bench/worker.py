"""A thread that owns an engine and answers queries from other threads: the local system under test of the
LoadGen scenarios (LoadGen issues queries from its own threads and takes answers from any thread).

Queries wait in an inbox; the worker admits them into the engine as image slots free up (all at once
with enough slots: the Offline scenario; one slot: strictly one image at a time), steps the engine while
anything is in flight, and hands each decided image to ``on_done(query, draws)``. A query's noise is its
image's dataset identity, as in ``densepure certify``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from densepure.engine.engine import Engine, ImageRequest


@dataclass(frozen=True)
class Query:
    """One query: LoadGen's ``id``, which image (``sample``: an index into the benchmark's images)."""

    id: int
    sample: int


class EngineWorker:
    """``engine`` runs ``task`` on ``images[sample]`` (noise identity ``(seed, noise_ids[sample])``) for every
    submitted query; ``on_done(query, draws)`` is called from the worker thread; an engine error stops the
    worker, and every query not yet answered is answered through ``on_failed(query, error)``."""

    def __init__(self, engine: Engine, task, seed: int, images, noise_ids, on_done: Callable[[Query, int], None],
                 on_failed: Callable[[Query, BaseException], None]):
        self.engine, self.task, self.seed = engine, task, seed
        self.images, self.noise_ids = images, noise_ids
        self.on_done, self.on_failed = on_done, on_failed
        self._inbox: deque[Query] = deque()
        self._wake = threading.Condition()
        self._stop = self._abort = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="densepure-bench-engine", daemon=True)

    def __enter__(self) -> EngineWorker:
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        """Finish the queries in flight; on an exception (Ctrl-C) drop them and stop at the next step."""
        with self._wake:
            self._stop = True
            self._abort = exc_type is not None
            self._wake.notify()
        self._thread.join()

    def submit(self, queries: list[Query]) -> None:
        """Queue ``queries`` (any thread)."""
        with self._wake:
            if self.error is not None:
                for query in queries:
                    self.on_failed(query, self.error)
                return
            self._inbox.extend(queries)
            self._wake.notify()

    def _loop(self) -> None:
        sigma = self.engine.smoothing.sigma
        classes = self.engine.num_classes
        in_flight: dict[Query, None] = {}
        try:
            with self.engine, torch.inference_mode():
                while True:
                    with self._wake:
                        while not self._inbox and not in_flight and not self._stop:
                            self._wake.wait()
                        if self._abort or (self._stop and not in_flight and not self._inbox):
                            return
                        arrived = list(self._inbox)
                        self._inbox.clear()
                    for query in arrived:
                        policy = self.task.policy(classes, sigma)
                        self.engine.submit(ImageRequest(query, self.images[query.sample], policy, self.seed,
                                                        noise_id=self.noise_ids[query.sample]))
                        in_flight[query] = None
                    self.engine.step()
                    for request in self.engine.collect():
                        del in_flight[request.key]
                        self.on_done(request.key, request.policy.total_draws)
        except BaseException as exc:  # noqa: BLE001 - every waiting query is answered, then the error is kept
            with self._wake:
                self.error = exc
                waiting = list(in_flight) + list(self._inbox)
                self._inbox.clear()
            for query in waiting:
                self.on_failed(query, exc)
