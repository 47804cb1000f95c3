"""``densepure bench serve URL``: an Open Inference Protocol v2 server under load, from the client's side.

Without ``--scenario``: a closed-loop concurrency sweep. At each ``--concurrency`` level c, c client
threads send single-image requests back to back until ``--requests`` are answered; each request is the
next image of the selection (the digits test split by default; seeded random images of the model's
input shape when the shipped data does not fit). Reported per level: answered requests/s, latency
p50/p95/p99 of the answered requests, errors, draws per request and draws/s from the answers' ``draws``
output, and from the server's ``/metrics`` (when it has densepure's) its draws/s and UNet rows per call.

A request that the server answers with an error (HTTP >= 400) or that gets no answer is an error: it is
counted and reported, and never enters the latencies or the rates. ``--scenario single-stream|server|
offline`` lets LoadGen issue the requests instead (the Server scenario once per ``--target-qps``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from densepure.bench.common import percentiles, progress_bar
from densepure.bench.oip import Answer, OipClient
from densepure.bench.options import BenchRun, Scenario
from densepure.bench.report import ReportBuilder, Unit

DRAWS, UNET_ROWS, UNET_CALLS = ("densepure_draws_total", "densepure_denoiser_rows_total",
                                'densepure_batch_rows_count{model="denoiser"}')


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


def closed_loop(run: BenchRun, model: str, images, clients: int, requests: int, bar):
    """``clients`` threads send ``requests`` requests back to back: [(latency_s, Answer)] and the wall time."""
    params, lock, results, next_i = run.target.parameters(), threading.Lock(), [], [0]

    def worker() -> None:
        with _client(run, model) as client:
            while True:
                with lock:
                    i = next_i[0]
                    if i >= requests:
                        return
                    next_i[0] += 1
                start = time.perf_counter()
                answer = client.infer(images[i % len(images)], params)
                with lock:
                    results.append((time.perf_counter() - start, answer))
                bar.update(1)

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


def sweep(run: BenchRun, builder: ReportBuilder, model: str, images) -> None:
    """The closed-loop levels in turn; every level's numbers are in the report as soon as it ends."""
    levels, per_request = [], []
    total_errors = 0
    try:
        with _client(run, model) as probe:
            for clients, requests in zip(run.target.concurrency, run.target.request_counts(), strict=True):
                before = probe.metrics()
                bar = progress_bar(requests, f"{clients} client(s)", unit="req")
                try:
                    results, wall = closed_loop(run, model, images, clients, requests, bar)
                finally:
                    bar.close()
                after = probe.metrics()
                level = level_numbers(clients, results, wall, before, after)
                levels.append(level)
                total_errors += level["errors"]
                per_request += [(clients, lat if a.ok else None, a.draws, a.status) for lat, a in results]
                for key, (value, unit, what) in level_metrics(level).items():
                    builder.metric(f"c{clients}.{key}", value, unit, what)
                _first_error(builder, clients, results)
    finally:
        builder.metric("errors", total_errors, Unit.COUNT, "requests answered with an error or not at all")
        builder.add_series("concurrency", [(k, u) for k, u in SWEEP_COLUMNS],
                           [[level.get(k) for k, _ in SWEEP_COLUMNS] for level in levels])
        builder.add_series("requests", [("clients", Unit.COUNT), ("latency_s", Unit.SECONDS), ("draws", Unit.DRAWS),
                                        ("status", Unit.COUNT)], per_request)


SWEEP_COLUMNS = (("clients", Unit.COUNT), ("requests", Unit.COUNT), ("errors", Unit.COUNT),
                 ("requests_per_s", Unit.REQUESTS_PER_S), ("p50_s", Unit.SECONDS), ("p95_s", Unit.SECONDS),
                 ("p99_s", Unit.SECONDS), ("draws_per_request", Unit.DRAWS), ("draws_per_s", Unit.DRAWS_PER_S),
                 ("server_draws_per_s", Unit.DRAWS_PER_S), ("server_unet_rows_per_call", Unit.ROWS_PER_CALL))


def level_numbers(clients: int, results: list[tuple[float, Answer]], wall: float, before, after) -> dict:
    """One level's numbers; latencies and rates over the answered requests only."""
    good = [(lat, a) for lat, a in results if a.ok]
    out: dict[str, float | None] = {"clients": clients, "requests": len(results), "errors": len(results) - len(good),
                                    "requests_per_s": len(good) / wall if wall > 0 else None}
    if good:
        pct = percentiles([lat for lat, _ in good], (50, 95, 99))
        out.update(p50_s=pct[50], p95_s=pct[95], p99_s=pct[99])
        draws = [a.draws for _, a in good if a.draws is not None]
        if draws:
            out.update(draws_per_request=float(np.mean(draws)), draws_per_s=float(np.sum(draws)) / wall)
    if before and after and DRAWS in after:
        out["server_draws_per_s"] = (after[DRAWS] - before.get(DRAWS, 0.0)) / wall
        calls = after.get(UNET_CALLS, 0.0) - before.get(UNET_CALLS, 0.0)
        if calls > 0:
            out["server_unet_rows_per_call"] = (after.get(UNET_ROWS, 0.0) - before.get(UNET_ROWS, 0.0)) / calls
    return out


def level_metrics(level: dict) -> dict[str, tuple[float, Unit, str]]:
    what = {"requests_per_s": "answered requests per second", "errors": "requests answered with an error",
            "p50_s": "median latency of the answered requests", "p95_s": "95th percentile latency",
            "p99_s": "99th percentile latency", "draws_per_request": "mean draws per answered request",
            "draws_per_s": "draws of the answered requests per second (their draws output)",
            "server_draws_per_s": "draws per second by the server's /metrics (densepure_draws_total)",
            "server_unet_rows_per_call": "UNet rows per call by the server's /metrics"}
    units = dict(SWEEP_COLUMNS)
    return {k: (level[k], units[k], text) for k, text in what.items() if level.get(k) is not None}


def _first_error(builder: ReportBuilder, clients: int, results) -> None:
    errors = [a for _, a in results if not a.ok]
    if errors:
        builder.note(f"{clients} client(s): {len(errors)} error(s), the first: {errors[0].error}")


def _loadgen(run: BenchRun, builder: ReportBuilder, out, model: str, images) -> None:
    """LoadGen issues the requests; a pool of HTTP clients sends them (one connection per pool thread)."""
    from densepure.bench.loadgen import QUERY_COLUMNS, Answers, LoadGenTest, record_answers, run_label

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

    pool = ThreadPoolExecutor(max_workers=max(64, *run.target.concurrency))
    try:
        for qps in rates:
            label = run_label(scenario, qps)
            answers = Answers(label)
            test = LoadGenTest(scenario, run.load, qps, len(images), lambda q: None, answers)
            test.submit = lambda queries, test=test: [pool.submit(send, test, q) for q in queries]
            directory = out.loadgen_dir(label) if out is not None else None
            started = time.perf_counter()
            try:
                builder.loadgen.append(test.run(directory, f"loadgen/{label}"))
            finally:
                rows = answers.close()
                record_answers(builder, label, rows, time.perf_counter() - started)
                series += [(qps, lat if error is None else None, draws, int(error is not None))
                           for lat, draws, error in rows]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # every query is answered when a test ends; not on Ctrl-C
        for client in clients:
            client.__exit__()
        builder.add_series("queries", QUERY_COLUMNS, series)
    if out is None:
        builder.note("LoadGen's own log files were not kept: give --output DIR to keep them under DIR/loadgen/")
