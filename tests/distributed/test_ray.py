"""Cluster runs on a local Ray instance (2 CPUs, loopback only, token authentication on; the session's one,
``cluster`` in conftest.py): the same certificates as one process, with whole images or split draws, and
with workers killed mid-chunk."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from cluster_helpers import ALSO, SEQUENTIAL, assert_same_certificates, certificates, job_options, tsv_without_time

from densepure.cli import main
from densepure.distributed import ClusterError, prepare_cluster_job, run_cluster_job
from densepure.errors import ConfigError

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

LIMITS = {"start_timeout_s": 180.0, "timeout_s": 300.0}  # every wait of a run ends


class Killer:
    """An observer that kills worker processes (SIGKILL: a crash, not a polite exit) when the first chunk
    returns, so that the others are mid-chunk."""

    def __init__(self, how_many: int):
        self.how_many, self.pids, self.lost, self.killed = how_many, [], [], False

    def started(self, images, plan, workers):
        self.pids = [w.pid for w in workers]

    def progressed(self, draws):
        if not self.killed:
            self.killed = True
            for pid in self.pids[: self.how_many]:
                os.kill(pid, signal.SIGKILL)

    def image_done(self, record):
        pass

    def worker_lost(self, message, workers_left):
        self.lost.append(workers_left)


def ray_run(path, observer=None, **overrides):
    job = prepare_cluster_job(job_options(path, ray="local", **overrides))
    return run_cluster_job(job, observer, threads=1, **LIMITS)


def test_two_workers_equal_one_process(cluster, tmp_path, single_process):
    observer = Killer(0)
    path = tmp_path / "r.tsv"
    _, records = ray_run(path, observer, workers=2, **ALSO)
    assert len(records) == 6 and len(set(observer.pids)) == 2
    assert_same_certificates(path, single_process(**ALSO), ALSO["also_chains"])
    assert tsv_without_time(path) == tsv_without_time(single_process(**ALSO))  # issue 26: in image order too


def test_the_local_instance_is_on_loopback_with_token_authentication(cluster):
    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    if tuple(int(p) for p in ray.__version__.split(".")[:2]) >= (2, 59):
        assert os.environ.get("RAY_AUTH_MODE") == "token"  # Ray turned it on for the local instance


@pytest.mark.slow
def test_a_worker_s_user_error_is_one_line_on_the_driver(cluster, tmp_path):
    """--device cuda on the 2 logical GPUs: each worker gets one and cannot load the models on it (no CUDA here);
    the driver raises the workers' ConfigError, not a Ray traceback."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available") as err:
        ray_run(tmp_path / "r.tsv", device="cuda", workers=2)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_split_draws_on_ray_equal_one_process(cluster, tmp_path, single_process):
    path = tmp_path / "r.tsv"
    _, records = ray_run(path, workers=2, split_draws=2, **SEQUENTIAL)
    assert len(records) == 6
    assert_same_certificates(path, single_process(**SEQUENTIAL))


@pytest.mark.slow
def test_a_killed_worker_s_chunks_are_retried(cluster, tmp_path, single_process):
    observer = Killer(1)
    path = tmp_path / "r.tsv"
    _, records = ray_run(path, observer, workers=2)
    assert observer.lost == [1]  # one worker lost, the other finished the run
    assert len(records) == 6
    assert_same_certificates(path, single_process())


@pytest.mark.slow
def test_all_workers_killed_stops_then_resumes(cluster, tmp_path, single_process):
    path = tmp_path / "r.tsv"
    with pytest.raises(ClusterError) as err:
        ray_run(path, Killer(2), workers=2)
    assert "\n" not in str(err.value) and "again to resume" in str(err.value)
    done = len(certificates(path))
    assert 1 <= done < 6
    _, records = ray_run(path, workers=1)  # the same job, resumed with another number of workers
    assert len(records) == 6 - done
    assert_same_certificates(path, single_process())


@pytest.mark.slow
def test_cli_on_ray(cluster, tmp_path, capsys, single_process):
    path = tmp_path / "r.tsv"
    argv = ["certify", "--ray", "local", "--workers", "2", "--device", "cpu", "--sigma", "0.5", "--n0", "10",
            "--n", "60", "--K", "5", "--b", "2", "--seed", "11", "--skip", "70", "--max", "6", "--output", str(path)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "certify on Ray (local)" in err and "2 worker(s) on cpu" in err and "draws/s on 2 workers" in err
    assert "| r.tsv |" in out
    assert_same_certificates(path, single_process())
