"""MLPerf Inference's LoadGen drives the queries of ``--scenario single-stream|server|offline``.

LoadGen (``pip install mlcommons-loadgen``, the ``bench`` extra) decides when each query is issued:
SingleStream sends the next query when the last is answered (tail latency, one at a time); Server sends
queries at Poisson-distributed times at a target rate and checks the 99th-percentile latency against a
bound; Offline sends every query at once (throughput). It writes its own logs (``mlperf_log_summary.txt``
with its verdict VALID/INVALID and the checks behind it: performance constraints, minimum duration,
minimum query count, early stopping) into a directory of the report; the report repeats the verdict, the
checks and the summary's numbers, and adds what LoadGen cannot see: how many queries the system answered
with an error (an error still completes a LoadGen query, so its latency would pass for an answer; the
check ``answered_without_error`` says whether any did), and the draws each answer took.

A system under test is a ``submit(queries)`` function that answers every query, now or later, from any
thread, through :meth:`LoadGenTest.answer` / :meth:`LoadGenTest.fail`.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from densepure.bench.common import percentiles
from densepure.bench.options import LoadOptions, Scenario
from densepure.bench.report import LoadGenRun, ReportBuilder, Unit
from densepure.bench.worker import Query
from densepure.errors import ConfigError, install_hint

SUMMARY = "mlperf_log_summary.txt"
# the report's series of every query a LoadGen test issued (latency null for an error)
QUERY_COLUMNS = (("target_qps", Unit.QUERIES_PER_S), ("latency_s", Unit.SECONDS), ("draws", Unit.DRAWS),
                 ("error", Unit.COUNT))


_ABANDONED = threading.Event()


def abandoned() -> bool:
    """True once a LoadGen test was left running (Ctrl-C). LoadGen has no way to stop a test, and its threads
    call into Python while the interpreter finalizes, which crashes it: the CLI then leaves without
    finalizing, after the report is written (LoadGen 6.0.17)."""
    return _ABANDONED.is_set()


def require_loadgen():
    """The ``mlperf_loadgen`` module, or one line saying how to install it."""
    try:
        import mlperf_loadgen
    except ImportError as exc:
        raise ConfigError("--scenario needs MLPerf LoadGen: pip install mlcommons-loadgen (or the bench extra, "
                          f"{install_hint('bench')})") from exc
    return mlperf_loadgen


def _checks_and_result(text: str) -> tuple[str, dict[str, bool]]:
    found = re.search(r"Result is\s*:\s*(\w+)", text)
    checks = {}
    for label, key in (("Performance constraints satisfied", "performance_constraints"),
                       ("Min duration satisfied", "min_duration"), ("Min queries satisfied", "min_queries"),
                       ("Early stopping satisfied", "early_stopping")):
        hit = re.search(re.escape(label) + r"\s*:\s*(\w+)", text)
        if hit:
            checks[key] = hit.group(1).lower() == "yes"
    return (found.group(1) if found else "UNKNOWN"), checks


def parse_summary(text: str) -> tuple[str, dict[str, bool], dict[str, float]]:
    """LoadGen's ``mlperf_log_summary.txt``: its verdict, its checks, and its numbers (latencies in
    seconds, named like ``p99_latency_s``; rates as written, e.g. ``completed_samples_per_second``)."""
    result, checks = _checks_and_result(text)
    metrics: dict[str, float] = {}
    for line in text.split("Test Parameters Used")[0].splitlines():  # the results, not the settings echoed
        if ":" not in line:
            continue
        key, _, value = (part.strip() for part in line.partition(":"))
        try:
            number = float(value)
        except ValueError:
            continue
        pct = re.fullmatch(r"(\d+(?:\.\d+)?)(th)? percentile latency \(ns\)", key)
        if pct:  # "90.0th percentile": the scenario's result; "90.00 percentile": the additional stats
            name = f"p{float(pct.group(1)):g}_latency_s".replace(".", "_")
            metrics[f"result_{name}" if pct.group(2) else name] = number / 1e9
        elif key.endswith("(ns)"):
            metrics[_snake(key[:-4]) + "_s"] = number / 1e9
        elif key.endswith("(ms)"):
            metrics[_snake(key[:-4]) + "_s"] = number / 1e3
        else:
            metrics[_snake(key)] = number
    return result, checks, metrics


def _snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


class LoadGenTest:
    """One LoadGen test of ``scenario`` at ``qps`` over ``samples`` images, feeding ``submit``.

    ``qps``: Server's target arrival rate; for SingleStream 1/qps is the expected latency and for Offline
    qps the expected throughput (LoadGen sizes the run from them). ``on_answer(query, latency_s, draws,
    error)`` sees every answer as it comes (the report's own per-query numbers)."""

    def __init__(self, scenario: Scenario, load: LoadOptions, qps: float, samples: int,
                 submit: Callable[[list[Query]], None],
                 on_answer: Callable[[Query, float, int | None, BaseException | None], None] | None = None):
        self.lg = require_loadgen()
        self.scenario, self.load, self.qps, self.samples = scenario, load, qps, samples
        self.submit, self.on_answer = submit, on_answer
        self.issued: dict[int, float] = {}
        self.errors = 0
        self._lock = threading.Lock()

    def settings(self):
        lg, load = self.lg, self.load
        s = lg.TestSettings()
        s.mode = lg.TestMode.PerformanceOnly
        s.scenario = {Scenario.SINGLE_STREAM: lg.TestScenario.SingleStream, Scenario.SERVER: lg.TestScenario.Server,
                      Scenario.OFFLINE: lg.TestScenario.Offline}[self.scenario]
        s.min_duration_ms = int(load.min_duration_s * 1000)
        s.max_duration_ms = int(load.max_duration_s * 1000)
        s.min_query_count = load.min_queries
        s.performance_sample_count_override = self.samples
        if self.scenario is Scenario.SINGLE_STREAM:
            s.single_stream_expected_latency_ns = int(1e9 / self.qps)
        elif self.scenario is Scenario.SERVER:
            s.server_target_qps = self.qps
            s.server_target_latency_ns = int(load.latency_bound_s * 1e9)
        else:
            s.offline_expected_qps = self.qps
        return s

    def described_settings(self) -> dict[str, object]:
        out = {"target_qps" if self.scenario is Scenario.SERVER else "expected_qps": self.qps,
               "min_duration_s": self.load.min_duration_s, "max_duration_s": self.load.max_duration_s,
               "min_queries": self.load.min_queries, "samples": self.samples}
        if self.scenario is Scenario.SERVER:
            out["latency_bound_s"] = self.load.latency_bound_s
        return out

    # -- answers (any thread) -------------------------------------------------------------------
    def answer(self, query: Query, draws: int | None = None) -> None:
        self._complete(query, draws, None)

    def fail(self, query: Query, error: BaseException) -> None:
        self._complete(query, None, error)

    def _complete(self, query: Query, draws: int | None, error: BaseException | None) -> None:
        now = time.perf_counter()
        with self._lock:
            start = self.issued.pop(query.id, now)
            self.errors += error is not None
        if self.on_answer is not None:
            self.on_answer(query, now - start, draws, error)
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(query.id, 0, 0)])

    def _issue(self, samples) -> None:
        now = time.perf_counter()
        queries = [Query(int(s.id), int(s.index)) for s in samples]
        with self._lock:
            for q in queries:
                self.issued[q.id] = now
        self.submit(queries)

    # -- the test -------------------------------------------------------------------------------
    def run(self, directory: Path | None, label: str = "") -> LoadGenRun:
        """Run the test to its end, LoadGen's logs in ``directory`` (None: a temporary one, not kept;
        ``label``: how the report names the directory, relative to it)."""
        # LoadGen blocks until it is done, so it runs on its own thread and Ctrl-C still reaches this one
        lg = self.lg
        with tempfile.TemporaryDirectory(prefix="densepure-loadgen-") as tmp:
            where = Path(directory) if directory is not None else Path(tmp)
            out = lg.LogOutputSettings()
            out.outdir, out.copy_summary_to_stdout = str(where), False
            logs = lg.LogSettings()
            logs.log_output, logs.log_mode = out, lg.LoggingMode.AsyncPoll
            logs.enable_trace = False  # the trace (megabytes per minute) is for LoadGen's developers
            sut = lg.ConstructSUT(self._issue, lambda: None)
            qsl = lg.ConstructQSL(self.samples, self.samples, lambda ids: None, lambda ids: None)
            failure: list[BaseException] = []

            def start() -> None:
                try:
                    lg.StartTestWithLogSettings(sut, qsl, self.settings(), logs)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    failure.append(exc)

            runner = threading.Thread(target=start, name="densepure-loadgen", daemon=True)
            runner.start()
            try:
                while runner.is_alive():
                    runner.join(0.2)  # a KeyboardInterrupt lands here
            except KeyboardInterrupt:
                _ABANDONED.set()
                raise
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
            if failure:
                raise failure[0]
            result, checks, metrics = parse_summary((where / SUMMARY).read_text(encoding="utf-8"))
        checks["answered_without_error"] = self.errors == 0
        return LoadGenRun(self.scenario.value, self.described_settings(), result, checks, metrics,
                          label if directory is not None else "")


class Answers:
    """Every answer of a LoadGen test as it comes (thread-safe): latency from issue to answer, draws, error;
    a progress bar of the answers on stderr while the test runs (:meth:`close` ends it)."""

    def __init__(self, label: str = "queries") -> None:
        from densepure.bench.common import progress_bar

        self.rows: list[tuple[float, int | None, str | None]] = []
        self._lock = threading.Lock()
        self._bar = progress_bar(None, f"LoadGen {label}", unit="query")

    def __call__(self, query: Query, latency_s: float, draws: int | None, error: BaseException | None) -> None:
        with self._lock:
            self.rows.append((latency_s, draws, None if error is None else f"{type(error).__name__}: {error}"))
            if self._bar is not None:
                self._bar.update(1)

    def snapshot(self) -> list[tuple[float, int | None, str | None]]:
        with self._lock:
            return list(self.rows)

    def close(self) -> list[tuple[float, int | None, str | None]]:
        """End the progress bar; every answer so far."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            return list(self.rows)


def run_label(scenario: Scenario, qps: float) -> str:
    """The name of one LoadGen test in the report and its log directory, e.g. ``server_0.05qps``."""
    return f"{scenario.value.replace('-', '_')}_{qps:g}qps"


def run_recorded(builder: ReportBuilder, test: LoadGenTest, answers: Answers, out, label: str, qps: float,
                 series: list, serving: contextlib.AbstractContextManager | None = None) -> None:
    """Run ``test`` inside ``serving`` (what answers its queries, e.g. an engine worker), LoadGen's logs
    under ``out``'s loadgen folder when ``out`` is given; then, also when the run fails, record the
    answers (:func:`record_answers`) and append each query's ``(qps, latency or None, draws, error)`` to
    ``series``."""
    directory = out.loadgen_dir(label) if out is not None else None
    started = time.perf_counter()
    try:
        with serving if serving is not None else contextlib.nullcontext():
            builder.loadgen.append(test.run(directory, f"loadgen/{label}"))
    finally:
        rows = answers.close()
        record_answers(builder, label, rows, time.perf_counter() - started)
        series += [(qps, lat if error is None else None, draws, int(error is not None)) for lat, draws, error in rows]


def record_answers(builder: ReportBuilder, label: str, rows, wall_s: float | None) -> None:
    """The test's own numbers beside LoadGen's: answers, errors, latency percentiles of the answers, draws."""
    good = [(lat, draws) for lat, draws, error in rows if error is None]
    errors = [error for _, _, error in rows if error is not None]
    builder.metric(f"{label}.answered", len(good), Unit.COUNT, "queries answered without error")
    builder.metric(f"{label}.errors", len(errors), Unit.COUNT, "queries answered with an error (not in the latencies)")
    if errors:
        builder.note(f"{label}: {len(errors)} error(s), the first: {errors[0]}")
    if not good:
        return
    for p, value in percentiles(lat for lat, _ in good).items():
        builder.metric(f"{label}.p{p}_latency_s", value, Unit.SECONDS, f"{p}th percentile latency of the answers")
    draws = [d for _, d in good if d is not None]
    if draws:
        builder.metric(f"{label}.draws_per_query", sum(draws) / len(draws), Unit.DRAWS, "mean draws per answered query")
        if wall_s:
            builder.metric(f"{label}.draws_per_s", sum(draws) / wall_s, Unit.DRAWS_PER_S,
                           "draws of the answered queries per second of the test")
