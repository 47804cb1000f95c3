"""Triton's per-model statistics of a server (``GET /v2/models/{name}/stats``, :mod:`densepure.serve.extensions`
says what each count and duration measures)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
               "cache_miss")


@dataclass
class ModelStats:
    """Cumulative request statistics of the served model (thread-safe), in Triton's units: nanoseconds,
    and milliseconds since the epoch for ``last_inference``."""

    inference_count: int = 0
    last_inference_ms: int = 0
    durations: dict[str, list[int]] = field(default_factory=lambda: {name: [0, 0] for name in STAT_FIELDS})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def success(self, images: int, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int,
                output_ns: int) -> None:
        with self._lock:
            self.inference_count += images
            for name, ns in (("success", total_ns), ("queue", queue_ns), ("compute_input", input_ns),
                             ("compute_infer", infer_ns), ("compute_output", output_ns)):
                self._add(name, ns)
            self.last_inference_ms = int(time.time() * 1000)

    def fail(self, total_ns: int) -> None:
        with self._lock:
            self._add("fail", total_ns)
            self.last_inference_ms = int(time.time() * 1000)

    def _add(self, name: str, ns: int) -> None:
        entry = self.durations[name]
        entry[0] += 1
        entry[1] += max(0, int(ns))

    def model_stat(self, name: str, version: str, executions: int) -> dict:
        with self._lock:
            return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                    "inference_count": self.inference_count, "execution_count": int(executions),
                    "inference_stats": {k: {"count": c, "ns": ns} for k, (c, ns) in self.durations.items()},
                    "batch_stats": [], "memory_usage": []}
