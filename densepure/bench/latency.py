"""``densepure bench latency``: one image at a time, how long a certificate takes.

Each image of the selection (``--repeats`` times over) is certified alone in an engine of one image slot,
with the job's task: CERTIFY at ``--n`` (with ``--n0``), or with ``--radius R`` the sequential test at R
(what the server's certify_radius runs). Reported: p50/p90/p95/p99 and the mean of the per-image
latency, draws per image, images/s, and every image's latency and draws (the latency CDF).
``--scenario single-stream`` lets LoadGen issue the queries one after another; ``--scenario server``
issues them at Poisson times at each ``--target-qps`` into an engine that holds many images at once.

``--concurrency C ...``: closed-loop clients instead, into one engine holding ``--image-slots`` images
(64 by default) driven by its own thread, as ``densepure serve``'s engine loop is (no HTTP): at each level
C clients each certify one image and send the next when it is decided (:mod:`densepure.bench.sweep`).
Reported per level: requests/s, latency p50/p95/p99, draws per request and draws/s.
"""

from __future__ import annotations

import statistics

import torch

from densepure.bench.common import IndexedImages, now, percentiles, progress_bar, warm_up
from densepure.bench.models import bench_engine, bench_images
from densepure.bench.options import BenchRun, Scenario
from densepure.bench.report import ReportBuilder, Unit
from densepure.certify.runner import certify_images
from densepure.engine.device import resolve_device
from densepure.errors import ConfigError


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    from densepure.bench.environment import collect_environment

    if run.load.scenario is Scenario.OFFLINE:
        raise ConfigError("bench latency runs single-stream or server; the offline scenario is bench throughput's")
    if run.job.sampling.predict:
        raise ConfigError("bench latency certifies: predict is not one of its tasks")
    images = bench_images(run)
    device = resolve_device(run.job.execution.device)
    builder.environment = collect_environment(device)
    engine = bench_engine(run, images.shape, images.classes, image_slots=run.load.slots())
    seed = run.job.sampling.seed if run.job.sampling.seed is not None else 0
    task = run.job.task()
    builder.configuration.update(seed=seed, engine_rows_per_call=engine.config.unet_rows,
                                 kernels_resolved=engine.kernels.name, image_slots_resolved=engine.config.image_slots,
                                 procedure=task.procedure, images_selected=len(images.indices))
    if run.load.scenario is not None:
        from densepure.bench.local import loadgen_local

        return loadgen_local(run, builder, out, engine, images, seed)
    if run.load.concurrency is not None:
        return concurrent_clients(run, builder, engine, images, seed)
    rows: list[tuple[int, float, int]] = []
    dataset = IndexedImages(images)
    order = [i for _ in range(run.bench.repeats) for i in images.indices]
    bar = progress_bar(len(order), "latency, one image at a time", unit="img")
    try:
        with engine, torch.inference_mode():
            warm_up(engine, images, task, seed)
            for idx in order:
                start = now(engine.device)
                (result,) = certify_images(engine, dataset, [idx], task, seed)
                rows.append((idx, now(engine.device) - start, result.draws))
                bar.update(1)
    finally:
        bar.close()
        report_latencies(builder, rows)


def report_latencies(builder: ReportBuilder, rows: list[tuple[int, float, int]]) -> None:
    builder.add_series("images", [("index", Unit.COUNT), ("latency_s", Unit.SECONDS), ("draws", Unit.DRAWS)], rows)
    if not rows:
        return
    latency = [r[1] for r in rows]
    draws = [r[2] for r in rows]
    for p, value in percentiles(latency).items():
        builder.metric(f"latency.p{p}_s", value, Unit.SECONDS, f"{p}th percentile of the per-image latency")
    builder.metric("latency.mean_s", statistics.fmean(latency), Unit.SECONDS, "mean per-image latency")
    builder.metric("latency.max_s", max(latency), Unit.SECONDS, "slowest image")
    builder.metric("draws.mean_per_image", statistics.fmean(draws), Unit.DRAWS, "mean draws per image")
    builder.metric("draws.p50_per_image", float(statistics.median(draws)), Unit.DRAWS, "median draws per image")
    builder.metric("draws.max_per_image", max(draws), Unit.DRAWS, "most draws an image took")
    builder.metric("throughput.images_per_s", len(latency) / sum(latency), Unit.IMAGES_PER_S,
                   "images per second, one at a time")
    builder.metric("throughput.draws_per_s", sum(draws) / sum(latency), Unit.DRAWS_PER_S,
                   "draws per second, one image at a time")
    builder.metric("images", len(rows), Unit.COUNT, "images timed")


class _Waiting:
    """Queries sent to an :class:`~densepure.bench.worker.EngineWorker` and not yet answered: ``send(worker, i)``
    blocks until query ``i`` is answered (from the worker's thread, through :meth:`answered`)."""

    def __init__(self, images):
        import threading

        self.images, self.lock, self.pending = images, threading.Lock(), {}

    def answered(self, query, draws: int | None, error: BaseException | None = None) -> None:
        with self.lock:
            event, box = self.pending.pop(query.id)
        box.append((draws, error))
        event.set()

    def send(self, worker, i: int):
        import threading
        import time

        from densepure.bench.sweep import Outcome
        from densepure.bench.worker import Query

        event, box = threading.Event(), []
        with self.lock:
            self.pending[i] = (event, box)
        start = time.perf_counter()
        worker.submit([Query(i, i % len(self.images.images))])
        event.wait()
        draws, error = box[0]
        return Outcome(time.perf_counter() - start, draws, None if error is None else f"{type(error).__name__}: {error}")


def concurrent_clients(run: BenchRun, builder: ReportBuilder, engine, images, seed: int) -> None:
    """The closed-loop levels of ``--concurrency`` against ``engine`` driven by an :class:`EngineWorker`."""
    from densepure.bench.sweep import add_sweep_series, closed_loop, level_numbers, record_level
    from densepure.bench.worker import EngineWorker

    waiting = _Waiting(images)
    warm_up(engine, images, run.job.task(), seed)
    levels, per_request, sent = [], [], 0
    worker = EngineWorker(engine, run.job.task(), seed, images.images, images.indices, waiting.answered,
                          lambda query, exc: waiting.answered(query, None, exc))
    try:
        with worker:
            for clients, requests in run.load.levels((1, 4, 16)):
                bar = progress_bar(requests, f"{clients} client(s)", unit="img")
                try:  # query ids stay unique across levels
                    results, wall = closed_loop(lambda i, base=sent: waiting.send(worker, base + i), clients,
                                                requests, lambda bar=bar: bar.update(1))
                finally:
                    bar.close()
                sent += requests
                level = level_numbers(clients, results, wall)
                levels.append(level)
                per_request += [(clients, r.latency_s if r.ok else None, r.draws, 0) for r in results]
                record_level(builder, level, results)
    finally:
        add_sweep_series(builder, levels, per_request)
    if worker.error is not None:
        raise worker.error
