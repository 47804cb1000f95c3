"""``densepure bench scaling``: images per hour of a Ray run with 1, 2, ... workers (issue 17: 2 workers >=
1.8x one).

Each run certifies the job's images (the same flags as ``densepure certify``) on a local Ray instance into a
fresh result file in a temporary directory. The rate is measured from the moment every worker has loaded its
models to the last image written (steady state: loading is paid once per run, which takes hours at real
N); the wall time with the start-up is reported beside it. Worker counts alternate over ``--repeats`` and
medians are reported. One process without Ray (``--single``, the same torch threads as one worker) gives
the overhead of the cluster path. Every run's certificates must equal the first run's (the results do
not depend on the number of workers); a difference stops the benchmark with an error.

CPU: each worker runs ``--worker-threads`` torch threads, so N workers use N x threads cores. GPU
(``--device cuda``): one GPU per worker, or equal shares of the GPUs when workers outnumber them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from densepure.bench.options import BenchRun
from densepure.bench.report import ReportBuilder, Unit
from densepure.errors import DensePureError


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a local process (Linux /proc), 0 where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Observer of a cluster run: when the workers were ready, when the last image was written, and the CPU
    time the (local) worker processes spent in between."""

    def __init__(self, total: int):
        self.ready = self.last = None
        self.images, self.total, self.cpu, self.plan, self.pids = 0, total, 0.0, "", []

    def started(self, images, plan, workers):
        self.ready, self.plan, self.pids = time.perf_counter(), plan, [w.pid for w in workers]
        self.cpu = -sum(cpu_seconds(pid) for pid in self.pids)

    def progressed(self, draws):
        pass

    def image_done(self, record):
        self.images, self.last = self.images + 1, time.perf_counter()
        if self.images == self.total:  # before the workers are stopped
            self.cpu += sum(cpu_seconds(pid) for pid in self.pids)

    def worker_lost(self, message, workers_left):
        raise DensePureError(f"a worker was lost during the benchmark: {message}")


def certificates(path: Path) -> list[tuple[str, ...]]:
    """The TSV rows without the time column, sorted by index."""
    return sorted(tuple(line.split("\t")[:5]) for line in path.read_text().splitlines()[1:])


def _seed(run: BenchRun) -> int:
    """The run's seed, 0 when unset: every run must certify with the same noise."""
    return run.job.sampling.seed if run.job.sampling.seed is not None else 0


def cluster_run(run: BenchRun, workers: int, output: Path) -> dict:
    from densepure.distributed import prepare_cluster_job, run_cluster_job

    job = prepare_cluster_job(run.job.replace(output=str(output), overwrite=True, ray="local", workers=workers,
                                              seed=_seed(run)))
    clock = Clock(len(job.indices))
    start = time.perf_counter()
    run_cluster_job(job, clock, threads=run.scaling.worker_threads, start_timeout_s=600)
    steady = max(clock.last - clock.ready, 1e-9)
    return {"workers": workers, "steady_s": steady, "wall_s": time.perf_counter() - start,
            "images_per_hour": clock.images / steady * 3600, "plan": clock.plan,
            "worker_cpu_s_per_image": clock.cpu / max(clock.images, 1),
            "cpu_share": clock.cpu / (steady * workers * run.scaling.worker_threads)}


def single_run(run: BenchRun, output: Path) -> dict:
    import torch

    from densepure.certify.job import prepare
    from densepure.certify.job import run as run_job

    torch.set_num_threads(run.scaling.worker_threads)
    job = prepare(run.job.replace(output=str(output), overwrite=True, seed=_seed(run)))
    start = time.perf_counter()
    run_job(job)
    seconds = time.perf_counter() - start
    return {"steady_s": seconds, "images_per_hour": len(job.indices) / seconds * 3600}


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    from densepure.bench.environment import collect_environment
    from densepure.distributed import connect
    from densepure.engine.device import resolve_device

    device = resolve_device(run.job.execution.device)
    builder.environment = collect_environment(device)
    builder.configuration["seed"] = _seed(run)
    runs: dict[int, list[dict]] = {w: [] for w in run.scaling.workers}
    singles: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, connect("local"):
            reference = None
            for repeat in range(run.bench.repeats):
                for workers in run.scaling.workers:
                    path = Path(tmp) / f"w{workers}_{repeat}.tsv"
                    runs[workers].append(cluster_run(run, workers, path))
                    reference = _same(reference, certificates(path), f"{workers} worker(s)")
                if run.scaling.single and device.type == "cpu":
                    path = Path(tmp) / f"single_{repeat}.tsv"
                    singles.append(single_run(run, path))
                    _same(reference, certificates(path), "one process without Ray")
    finally:
        report_runs(builder, run, runs, singles)


def _same(reference, found, what: str):
    if reference is not None and found != reference:
        raise DensePureError(f"{what} gave other certificates than the first run: the results must not depend on "
                             "the number of workers")
    return reference or found


def report_runs(builder: ReportBuilder, run: BenchRun, runs: dict[int, list[dict]], singles: list[dict]) -> None:
    if singles:
        builder.metric("single.images_per_hour", statistics.median(s["images_per_hour"] for s in singles),
                       Unit.IMAGES_PER_HOUR, "one process without Ray, the same torch threads as one worker")
    first = run.scaling.workers[0]
    rows = []
    for workers, done in runs.items():
        if not done:
            continue
        rate = statistics.median(r["images_per_hour"] for r in done)
        rows.append((workers, rate, statistics.median(r["wall_s"] for r in done),
                     statistics.median(r["worker_cpu_s_per_image"] for r in done),
                     statistics.median(r["cpu_share"] for r in done)))
        builder.metric(f"workers{workers}.images_per_hour", rate, Unit.IMAGES_PER_HOUR,
                       f"steady-state rate with {workers} worker(s) [{done[0]['plan']}]")
        builder.ratio(f"workers{workers}.speedup", f"workers{workers}.images_per_hour", f"workers{first}.images_per_hour",
                      f"against {first} worker(s)")
    builder.add_series("workers", [("workers", Unit.COUNT), ("images_per_hour", Unit.IMAGES_PER_HOUR),
                                   ("wall_s_with_startup", Unit.SECONDS), ("worker_cpu_s_per_image", Unit.SECONDS),
                                   ("cpu_share_received", Unit.FRACTION)], rows)
    if rows:
        builder.note("certificates equal in every run; the rate counts from all workers ready to the last image")
