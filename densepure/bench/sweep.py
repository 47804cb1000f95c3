"""Closed-loop clients at concurrency levels, shared by ``bench serve`` (HTTP clients of a server) and ``bench
latency --concurrency`` (clients of an engine in this process): at a level of c clients, c threads each send
one query, wait for its answer and send the next, until the level's requests are answered.

A query answered with an error is counted and reported, and never enters the latencies or the rates.
From a densepure server's ``/metrics`` (when given) come its draws/s and UNet rows per call: the server
labels its per-engine metrics with ``device`` (one engine loop per device), so a server-wide figure is the
sum over every label set (:func:`metric_total`, PromQL's ``sum without (device)``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from densepure.bench.common import percentiles
from densepure.bench.report import ReportBuilder, Unit

DRAWS, UNET_ROWS, UNET_BATCH_ROWS = "densepure_draws_total", "densepure_denoiser_rows_total", "densepure_batch_rows"


@dataclass(frozen=True)
class Outcome:
    """One query's outcome: its ``latency_s``, ``draws`` (when known), ``error`` (None: answered), and the
    HTTP ``status`` where there is one (0 for no response or no HTTP)."""

    latency_s: float
    draws: int | None
    error: str | None
    status: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def closed_loop(send: Callable[[int], Outcome], clients: int, requests: int, on_done=lambda: None) -> tuple[
        list[Outcome], float]:
    """``clients`` threads call ``send(i)`` for i = 0 .. ``requests`` - 1, each the next when its last is
    answered: every outcome and the wall time (Ctrl-C waits for the queries in flight no longer than 0.2 s)."""
    lock, results, next_i = threading.Lock(), [], [0]

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                if i >= requests:
                    return
                next_i[0] += 1
            outcome = send(i)
            with lock:
                results.append(outcome)
            on_done()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        wall = time.perf_counter() - start
    with lock:
        return list(results), wall


def metric_total(samples: Mapping[str, float] | None, name: str, **labels: str) -> float | None:
    """The sum of the samples ``name`` whose labels include ``labels`` (over every ``device`` and any other
    label not named), from :func:`densepure.bench.oip.parse_prometheus`'s ``{name{labels}: value}``; None
    when the server has no such sample."""
    if not samples:
        return None
    want = [f'{k}="{v}"' for k, v in labels.items()]
    found = [value for key, value in samples.items()
             if key.split("{", 1)[0] == name and all(w in key for w in want)]
    return sum(found) if found else None


SWEEP_COLUMNS = (("clients", Unit.COUNT), ("requests", Unit.COUNT), ("errors", Unit.COUNT),
                 ("requests_per_s", Unit.REQUESTS_PER_S), ("p50_s", Unit.SECONDS), ("p95_s", Unit.SECONDS),
                 ("p99_s", Unit.SECONDS), ("draws_per_request", Unit.DRAWS), ("draws_per_s", Unit.DRAWS_PER_S),
                 ("server_draws_per_s", Unit.DRAWS_PER_S), ("server_unet_rows_per_call", Unit.ROWS_PER_CALL))
_WHAT = {"requests_per_s": "answered requests per second", "errors": "requests answered with an error",
         "p50_s": "median latency of the answered requests", "p95_s": "95th percentile latency",
         "p99_s": "99th percentile latency", "draws_per_request": "mean draws per answered request",
         "draws_per_s": "draws of the answered requests per second (their draws output)",
         "server_draws_per_s": "draws per second by the server's /metrics (densepure_draws_total, every device)",
         "server_unet_rows_per_call": "UNet rows per call by the server's /metrics (every device)"}


def level_numbers(clients: int, results: list[Outcome], wall: float, before=None, after=None) -> dict:
    """One level's numbers; latencies and rates over the answered queries only; the server's figures from
    its ``/metrics`` samples ``before`` and ``after`` the level, summed over its devices."""
    good = [r for r in results if r.ok]
    out: dict[str, float | None] = {"clients": clients, "requests": len(results), "errors": len(results) - len(good),
                                    "requests_per_s": len(good) / wall if wall > 0 else None}
    if good:
        pct = percentiles([r.latency_s for r in good], (50, 95, 99))
        out.update(p50_s=pct[50], p95_s=pct[95], p99_s=pct[99])
        draws = [r.draws for r in good if r.draws is not None]
        if draws:
            out.update(draws_per_request=float(np.mean(draws)), draws_per_s=float(np.sum(draws)) / wall)
    drawn = _delta(before, after, DRAWS)
    if drawn is not None and wall > 0:
        out["server_draws_per_s"] = drawn / wall
        calls = _delta(before, after, f"{UNET_BATCH_ROWS}_count", model="denoiser")
        rows = _delta(before, after, UNET_ROWS)
        if calls and rows is not None:
            out["server_unet_rows_per_call"] = rows / calls
    return out


def _delta(before, after, name: str, **labels: str) -> float | None:
    end = metric_total(after, name, **labels)
    return None if end is None else end - (metric_total(before, name, **labels) or 0.0)


def record_level(builder: ReportBuilder, level: dict, results: list[Outcome]) -> None:
    """A level's numbers as ``cC.NAME`` metrics, and its first error as a note."""
    units = dict(SWEEP_COLUMNS)
    for key, text in _WHAT.items():
        if level.get(key) is not None:
            builder.metric(f"c{level['clients']}.{key}", level[key], units[key], text)
    errors = [r for r in results if not r.ok]
    if errors:
        builder.note(f"{level['clients']} client(s): {len(errors)} error(s), the first: {errors[0].error}")


def add_sweep_series(builder: ReportBuilder, levels: list[dict], per_request: list[tuple]) -> None:
    """The ``concurrency`` series (a row per level) and ``requests`` (clients, latency or null, draws, status)."""
    builder.add_series("concurrency", SWEEP_COLUMNS, [[level.get(k) for k, _ in SWEEP_COLUMNS] for level in levels])
    builder.add_series("requests", [("clients", Unit.COUNT), ("latency_s", Unit.SECONDS), ("draws", Unit.DRAWS),
                                    ("status", Unit.COUNT)], per_request)
