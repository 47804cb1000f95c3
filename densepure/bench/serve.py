"""``densepure bench serve URL``: an Open Inference Protocol v2 server under load, from the client's side.

Without ``--scenario``: a closed-loop concurrency sweep. At each ``--concurrency`` level c, c client
threads send single-image requests back to back until ``--requests`` are answered; each request is the
next image of the selection (the digits test split by default; seeded random images of the model's
input shape when the shipped data does not fit). Reported per level: answered requests/s, latency
p50/p95/p99 of the answered requests, errors, draws per request and draws/s from the answers' ``draws``
output, and from the server's ``/metrics`` (when it has densepure's) its draws/s and UNet rows per call,
summed over the server's devices (its per-engine metrics carry a ``device`` label).

A request that the server answers with an error (HTTP >= 400) or that gets no answer is an error: it is
counted and reported, and never enters the latencies or the rates. ``--scenario single-stream|server|
offline`` lets LoadGen issue the requests instead (the Server scenario once per ``--target-qps``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from densepure.bench.common import progress_bar
from densepure.bench.oip import OipClient
from densepure.bench.options import BenchRun, Scenario
from densepure.bench.report import ReportBuilder, Unit
from densepure.bench.sweep import Outcome, add_sweep_series, closed_loop, level_numbers, record_level

DEFAULT_CONCURRENCY = (1, 4, 16)


def server_images(run: BenchRun, shape: tuple[int, ...], builder: ReportBuilder) -> list[np.ndarray]:
    """The job's images when they have the server's input shape, else seeded random ones of that shape."""
    from densepure.bench.models import bench_images
    from densepure.errors import ConfigError

    try:
        images = bench_images(run)
        if tuple(images.shape) == tuple(shape):
            return [x.numpy() for x in images.images]
    except ConfigError:
        pass
    count = run.job.selection.max if run.job.selection.max > 0 else 16
    builder.note(f"the server's input is {tuple(shape)}: {count} seeded random images of that shape were sent")
    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32) for _ in range(count)]


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    from densepure.bench.environment import collect_environment

    target = run.target
    model = target.model or run.job.models.preset
    builder.environment = collect_environment(None)
    builder.note("environment: the client's machine (the server's own is in configuration.server_metadata)")
    with OipClient(target.url, model, target.timeout_s) as client:
        meta = client.metadata()
        builder.configuration["server_metadata"] = {k: meta.get(k) for k in ("name", "platform", "versions",
                                                                              "inputs", "parameters")}
        shape = [int(d) for d in meta.get("inputs", [{}])[0].get("shape", [])[1:]]
        images = server_images(run, tuple(shape), builder)
        first = client.infer(images[-1], target.parameters())  # the server's first batches: not counted
        if not first.ok:
            builder.note(f"the warm-up request failed: {first.error}")
    if run.load.scenario is not None:
        return _loadgen(run, builder, out, model, images)
    sweep(run, builder, model, images)


def _client(run: BenchRun, model: str) -> OipClient:
    client = OipClient(run.target.url, model, run.target.timeout_s)
    client.metadata()
    return client


def sweep(run: BenchRun, builder: ReportBuilder, model: str, images) -> None:
    """The closed-loop levels in turn (:mod:`densepure.bench.sweep`); every level's numbers are in the report
    as soon as it ends. Each client thread keeps one HTTP connection."""
    params, local, clients_open = run.target.parameters(), threading.local(), []
    lock = threading.Lock()

    def send(i: int) -> Outcome:
        if not hasattr(local, "client"):
            local.client = _client(run, model)
            with lock:
                clients_open.append(local.client)
        start = time.perf_counter()
        answer = local.client.infer(images[i % len(images)], params)
        return Outcome(time.perf_counter() - start, answer.draws, answer.error, answer.status)

    levels, per_request = [], []
    try:
        with _client(run, model) as probe:
            for clients, requests in run.load.levels(DEFAULT_CONCURRENCY):
                before = probe.metrics()
                bar = progress_bar(requests, f"{clients} client(s)", unit="req")
                try:
                    results, wall = closed_loop(send, clients, requests, lambda bar=bar: bar.update(1))
                finally:
                    bar.close()
                    while clients_open:  # the level's connections (the next level's threads open their own)
                        clients_open.pop().__exit__()
                level = level_numbers(clients, results, wall, before, probe.metrics())
                levels.append(level)
                per_request += [(clients, r.latency_s if r.ok else None, r.draws, r.status) for r in results]
                record_level(builder, level, results)
    finally:
        builder.metric("errors", sum(level["errors"] for level in levels), Unit.COUNT,
                       "requests answered with an error or not at all")
        add_sweep_series(builder, levels, per_request)


def _loadgen(run: BenchRun, builder: ReportBuilder, out, model: str, images) -> None:
    """LoadGen issues the requests; a pool of HTTP clients sends them (one connection per pool thread)."""
    from densepure.bench.loadgen import QUERY_COLUMNS, Answers, LoadGenTest, run_label, run_recorded

    scenario, params = run.load.scenario, run.target.parameters()
    rates = run.load.target_qps if scenario is Scenario.SERVER else run.load.target_qps[:1]
    local, series = threading.local(), []
    clients: list[OipClient] = []

    def send(test: LoadGenTest, query) -> None:
        try:
            if not hasattr(local, "client"):
                local.client = _client(run, model)
                clients.append(local.client)
            answer = local.client.infer(images[query.sample % len(images)], params)
        except Exception as exc:  # noqa: BLE001 - LoadGen waits for every query: answer it as an error
            test.fail(query, exc)
            return
        if answer.ok:
            test.answer(query, answer.draws)
        else:
            test.fail(query, RuntimeError(answer.error))

    pool = ThreadPoolExecutor(max_workers=max(64, *(run.load.concurrency or DEFAULT_CONCURRENCY)))
    try:
        for qps in rates:
            label = run_label(scenario, qps)
            answers = Answers(label)
            test = LoadGenTest(scenario, run.load, qps, len(images), lambda q: None, answers)
            test.submit = lambda queries, test=test: [pool.submit(send, test, q) for q in queries]
            run_recorded(builder, test, answers, out, label, qps, series)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # every query is answered when a test ends; not on Ctrl-C
        for client in clients:
            client.__exit__()
        builder.add_series("queries", QUERY_COLUMNS, series)
    if out is None:
        builder.note("LoadGen's own log files were not kept: give --output DIR to keep them under DIR/loadgen/")
