"""LoadGen scenarios against the engine in this process: queries from LoadGen's threads, answered by an
:class:`~densepure.bench.worker.EngineWorker` (``bench latency --scenario single-stream|server``,
``bench throughput --scenario offline``). A query is one image of the benchmark's selection, certified
with the job's task; the Server scenario runs once per ``--target-qps``."""

from __future__ import annotations

from densepure.bench.common import warm_up
from densepure.bench.loadgen import QUERY_COLUMNS, Answers, LoadGenTest, run_label, run_recorded
from densepure.bench.models import BenchImages
from densepure.bench.options import BenchRun, Scenario
from densepure.bench.report import ReportBuilder
from densepure.bench.worker import EngineWorker


def loadgen_local(run: BenchRun, builder: ReportBuilder, out, engine, images: BenchImages, seed: int) -> None:
    """One LoadGen test per rate (the Server scenario) or one test (the others) against ``engine``."""
    scenario, task = run.load.scenario, run.job.task()
    rates = run.load.target_qps if scenario is Scenario.SERVER else run.load.target_qps[:1]
    warm_up(engine, images, task, seed)
    series = []
    try:
        for qps in rates:
            label = run_label(scenario, qps)
            answers = Answers(label)
            test = LoadGenTest(scenario, run.load, qps, len(images.images), submit=lambda q: None, on_answer=answers)
            worker = EngineWorker(engine, task, seed, images.images, images.indices, test.answer, test.fail)
            test.submit = worker.submit
            run_recorded(builder, test, answers, out, label, qps, series, serving=worker)
            if worker.error is not None:
                raise worker.error
    finally:
        builder.add_series("queries", QUERY_COLUMNS, series)
    if out is None:
        builder.note("LoadGen's own log files were not kept: give --output DIR to keep them under DIR/loadgen/")
