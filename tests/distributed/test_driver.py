"""The driver and work queue with in-process workers (no Ray): exactness of chunks and split draws, and what
happens when workers are lost. The same CertifyWorker class runs as a Ray actor in test_ray.py."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from cluster_helpers import (
    ALSO,
    COMMON,
    SEQUENTIAL,
    assert_same_certificates,
    certificates,
    job_options,
    tsv_without_time,
)

from densepure.cli import main
from densepure.distributed.cluster import ClusterError, WorkerLost, plan_workers
from densepure.distributed.driver import MAX_ATTEMPTS, execute, prepare_cluster_job
from densepure.distributed.work import auto_chunk_size, split_draws
from densepure.distributed.worker import CertifyWorker
from densepure.engine.policy import DrawRequest
from densepure.noise import NoisePhase

SEL, EST = NoisePhase.SELECTION, NoisePhase.ESTIMATION


@dataclass(eq=False)
class _Handle:
    worker: int
    payload: Any = None
    lost: bool = False


class InProcessPool:
    """CertifyWorkers in this process behind the driver's Pool protocol. Worker ``w`` is lost at its
    ``lose_at[w]``-th chunk: that chunk, and any sent to it later, come back as WorkerLost."""

    def __init__(self, workers: list[CertifyWorker], lose_at: dict[int, int] | None = None):
        self.infos = {w: worker.info() for w, worker in enumerate(workers)}
        self._workers = dict(enumerate(workers))
        self._lose_at, self._calls, self._dead = dict(lose_at or {}), Counter(), set()
        self.started = len(workers)
        self.chunks: list[tuple[int, Any]] = []

    def describe(self) -> str:
        return f"{self.started} in-process workers"

    @property
    def live(self) -> list[int]:
        return list(self._workers)

    def submit(self, worker: int, chunk) -> _Handle:
        self._calls[worker] += 1
        self.chunks.append((worker, chunk))
        if self._calls[worker] == self._lose_at.get(worker):
            self._dead.add(worker)
        if worker in self._dead:
            return _Handle(worker, lost=True)
        return _Handle(worker, getattr(self._workers[worker], chunk.method)(chunk.items))

    def wait(self, handles, timeout_s):
        return handles[:1]

    def result(self, handle: _Handle):
        if handle.lost:
            raise WorkerLost("killed by the test")
        return handle.payload

    def discard(self, worker: int) -> bool:
        return self._workers.pop(worker, None) is not None


class Recorder:
    def __init__(self):
        self.images, self.draws, self.lost, self.plan = 0, 0, [], None

    def started(self, images, plan, workers):
        self.plan, self.todo = plan, images

    def progressed(self, draws):
        self.draws += draws

    def image_done(self, record):
        self.images += 1

    def worker_lost(self, message, workers_left):
        self.lost.append((message, workers_left))


@pytest.fixture(scope="module")
def make_workers():
    """CertifyWorkers of a job's options (models loaded once per configuration and module)."""
    torch.set_num_threads(1)
    cache: dict[tuple, list[CertifyWorker]] = {}

    def workers(options, count: int) -> list[CertifyWorker]:
        key = (options.task(), options.sampling.also_chains, options.sampling.seed, options.smoothing.mode,
               options.smoothing.noise, options.smoothing.levels)
        while len(cache.setdefault(key, [])) < count:
            cache[key].append(CertifyWorker(options, (1, 8, 8), 10, threads=1))
        return cache[key][:count]

    return workers


class LastFirstPool(InProcessPool):
    """Chunks come back last-sent-first: images are decided out of image order."""

    def wait(self, handles, timeout_s):
        return handles[-1:]


def cluster_run(path, make_workers, workers=2, lose_at=None, observer=None, chunk_size=None, pool_type=InProcessPool,
                **overrides):
    job = prepare_cluster_job(job_options(path, ray="local", **overrides))
    pool = pool_type(make_workers(job.options, workers), lose_at)
    _, records = execute(job, lambda stack, shape: pool, observer or Recorder(), chunk_size=chunk_size)
    return pool, records


CASES = {"certify": ALSO, "predict": {"predict": True, "n0": None},
         "sequential": {k: v for k, v in SEQUENTIAL.items() if k not in COMMON or v != COMMON[k]}}
CASES["sequential-no-lookahead"] = {**CASES["sequential"], "lookahead": False}  # rounds end at the next look
CASES["certify-float"] = {**ALSO, "noise": "float"}  # the digits' default is the sound noise: float too
CASES["anytime"] = {"budget": 60}  # the anytime radius (n = budget = 60)


def test_a_completed_cluster_run_writes_the_single_process_tsv(tmp_path, make_workers, single_process):
    """Issue 26: images decided out of order on the cluster; the completed TSV is the single-process one line for
    line, the time column aside (the --also-K files too)."""
    path = tmp_path / "r.tsv"
    pool, _ = cluster_run(path, make_workers, chunk_size=1, pool_type=LastFirstPool, **ALSO)
    decided = [json.loads(line)["idx"] for line in Path(f"{path}.jsonl").read_text().splitlines()[1:]]
    assert decided != sorted(decided)  # the sidecar keeps completion order: the images did come out of order
    reference = single_process(**ALSO)
    for k in (None, *ALSO["also_chains"]):
        got, want = (p if k is None else p.with_name(f"{p.stem}.K{k}{p.suffix}") for p in (path, reference))
        assert tsv_without_time(got) == tsv_without_time(want)


@pytest.mark.slow  # each case's single-process run and its cluster run: ~3-6 s of CPU
@pytest.mark.parametrize("case,split", [("certify", 1), ("certify", 3), ("predict", 2), ("sequential", 2),
                                        ("sequential-no-lookahead", 2), ("certify-float", 1), ("anytime", 2)])
def test_cluster_results_equal_one_process(tmp_path, make_workers, single_process, case, split):
    """Whole images over 2 workers, or each image's draws split over them: the same rows and counts (sequential:
    the same looks, in rounds)."""
    overrides = CASES[case]
    path = tmp_path / "r.tsv"
    pool, records = cluster_run(path, make_workers, split_draws=split, chunk_size=1, **overrides)
    assert len(records) == 6
    assert_same_certificates(path, single_process(**overrides), overrides.get("also_chains", ()))
    assert {worker for worker, _ in pool.chunks} == {0, 1}  # both workers took part
    if split > 1:
        assert max(len(chunk.items) for _, chunk in pool.chunks) == 1
        parts = Counter((chunk.items[0].idx, chunk.items[0].key[1]) for _, chunk in pool.chunks)
        assert set(parts.values()) == {split}  # every round of every image went out in parts
        if "radius" in overrides:
            rounds = Counter(idx for idx, _ in parts)
            assert max(rounds.values()) >= 3  # sequential: rounds up to successive looks
        if overrides.get("lookahead") is False:  # no estimation draw past a stopping look went out
            issued = Counter()
            for _, chunk in pool.chunks:
                for phase, start, stop in chunk.items[0].ranges:
                    issued[chunk.items[0].idx] += (stop - start) * (phase is NoisePhase.ESTIMATION)
            assert issued == {record.row.idx: record.n for record in records}


@pytest.mark.slow
def test_a_lost_worker_s_chunks_run_on_the_others(tmp_path, make_workers, single_process):
    observer = Recorder()
    path = tmp_path / "r.tsv"
    pool, records = cluster_run(path, make_workers, workers=2, lose_at={0: 2}, observer=observer, chunk_size=1, **ALSO)
    assert len(records) == 6 and observer.images == 6
    assert len(observer.lost) == 1 and observer.lost[0][1] == 1
    lost_chunk = [chunk for worker, chunk in pool.chunks if worker == 0][1]
    assert [worker for worker, chunk in pool.chunks if chunk.items == lost_chunk.items] == [0, 1]  # retried on 1
    assert_same_certificates(path, single_process(**ALSO), ALSO["also_chains"])


@pytest.mark.slow
def test_losing_every_worker_stops_and_the_same_command_resumes(tmp_path, make_workers, single_process):
    path = tmp_path / "r.tsv"
    with pytest.raises(ClusterError) as err:
        cluster_run(path, make_workers, workers=2, lose_at={0: 2, 1: 2}, chunk_size=1, **ALSO)
    message = str(err.value)
    assert "\n" not in message and "all 2 workers were lost" in message and "again to resume" in message
    assert len(certificates(path)) == 2  # each worker's first chunk was written
    _, records = cluster_run(path, make_workers, workers=1, chunk_size=1, **ALSO)  # resumed with fewer workers
    assert len(records) == 4
    assert_same_certificates(path, single_process(**ALSO), ALSO["also_chains"])
    assert any(json.loads(line)["record"] == "resume" for line in Path(f"{path}.jsonl").read_text().splitlines())


def test_a_chunk_that_loses_max_attempts_workers_stops_the_run(tmp_path, make_workers):
    with pytest.raises(ClusterError, match=f"in flight on {MAX_ATTEMPTS} workers"):
        cluster_run(tmp_path / "r.tsv", make_workers, workers=MAX_ATTEMPTS, max=1,
                    lose_at={w: 1 for w in range(MAX_ATTEMPTS)})


def test_split_draws_cuts_each_phase_into_disjoint_covering_ranges():
    requests = [DrawRequest(SEL, d) for d in range(10)] + [DrawRequest(EST, d) for d in range(60, 100)]
    shares = split_draws(requests, 3)
    assert shares == [((SEL, 0, 3), (EST, 60, 73)), ((SEL, 3, 6), (EST, 73, 86)), ((SEL, 6, 10), (EST, 86, 100))]
    assert split_draws([DrawRequest(EST, 0), DrawRequest(EST, 1)], 4) == [((EST, 0, 1),), ((EST, 1, 2),)]
    with pytest.raises(RuntimeError, match="contiguous"):
        split_draws([DrawRequest(EST, 0), DrawRequest(EST, 2)], 2)


def test_chunk_sizes_keep_every_worker_fed():
    assert auto_chunk_size(6, 2) == 1 and auto_chunk_size(100, 2) == 8 and auto_chunk_size(20, 2) == 3
    assert auto_chunk_size(1, 8) == 1


def test_worker_plans():
    cpu = plan_workers("auto", 0, cpus=2, gpus=0)
    assert (cpu.workers, cpu.device, cpu.threads, cpu.num_gpus) == (2, "cpu", 1, 0.0)
    assert cpu.workers * cpu.num_cpus < 2  # room left for Ray's own work on a 2-core machine
    one = plan_workers("cpu", 1, cpus=2, gpus=0, threads=1)
    assert (one.workers, one.threads, one.num_cpus) == (1, 1, 1.0)
    gpu = plan_workers("auto", 0, cpus=64, gpus=8)
    assert (gpu.workers, gpu.device, gpu.num_gpus, gpu.num_cpus) == (8, "cuda", 1.0, 1.0)
    shared = plan_workers("cuda:3", 2, cpus=16, gpus=1)
    assert (shared.workers, shared.num_gpus, shared.device) == (2, 0.5, "cuda")
    with pytest.raises(ClusterError, match="no GPU"):
        plan_workers("cuda", 2, cpus=16, gpus=0)


def test_ray_flags_are_checked_and_kept_out_of_the_recorded_configuration(tmp_path):
    base = job_options(tmp_path / "r.tsv")
    clustered = job_options(tmp_path / "r.tsv", ray="auto", workers=8, split_draws=4)
    assert base.record() == clustered.record()  # resumable with any number of workers
    from densepure.errors import ConfigError

    with pytest.raises(ConfigError, match="need --ray"):
        job_options(tmp_path / "r.tsv", workers=2)
    with pytest.raises(ConfigError, match="split_draws must be an integer >= 1"):
        job_options(tmp_path / "r.tsv", ray="local", split_draws=0)


def test_ray_missing_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "r.tsv"
    code = main(["certify", "--ray", "local", "--workers", "2", "--max", "2", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install -e '.[ray]'" in err
    assert not out.exists()


def test_help_documents_the_cluster_flags(capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--ray", "--workers", "--split-draws", "'.[ray]'"))
