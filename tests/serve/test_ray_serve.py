"""`densepure serve --ray local`: the server as replicas of a Ray Serve deployment behind Serve's proxy on
127.0.0.1, on CPU. OIP v2 conformance with the single server's own tests, load over both replicas, jobs
answered by any replica, a replica killed mid-request, and a graceful scale-down. Slow: a local Ray
instance and two replicas loading the digits models take most of a minute on 2 cores."""

import importlib.util
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import FAST, ServerProcess, infer_json

from densepure.serve.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
pytest.importorskip("ray.serve", reason="needs ray[serve]")
INFER = "/v2/models/digits/infer"
# the single server's fixture's limits, so that its tests apply unchanged
LIMITS = ("--max-n", "2000", "--max-queued-draws", "5000", "--max-batch", "8", "--max-body-bytes", "300000",
          "--image-slots", "16")


def single_server_tests():
    """tests/serve/test_server.py as a module: its checks run here against the Ray deployment."""
    spec = importlib.util.spec_from_file_location("single_server_tests", Path(__file__).with_name("test_server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("ray"), *FAST, *LIMITS, "--ray", "local", "--replicas", "2")
    try:
        yield proc.wait_ready(300)
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]


def replicas(url: str, path: str = "/metrics", want: int = 2, timeout: float = 120.0) -> dict[str, int]:
    """Replica name -> pid, from answers of ``path`` (the header names the replica, build_info its pid)."""
    found, deadline = {}, time.monotonic() + timeout
    while len(found) < want:
        assert time.monotonic() < deadline, f"only replicas {found} answered"
        response = httpx.get(url + "/metrics", timeout=30)
        found[response.headers["x-densepure-replica"]] = int(re.search(r'pid="(\d+)"', response.text).group(1))
    return found


@pytest.mark.parametrize("name", ["test_health_and_metadata", "test_every_mode", "test_binary_extension_and_uint8",
                                  "test_fuzzed_bad_requests_are_4xx_json_and_the_server_stays_up",
                                  "test_a_deadline_cancels_the_work", "test_jobs_lifecycle",
                                  "test_docs_work_offline_and_the_schema_says_the_real_errors"])
def test_oip_v2_as_the_single_server(ray_server, request, name):
    """The single server's test ``name`` against the Ray deployment (its other fixtures, e.g. a float-noise
    server to compare with, as that test asks for them)."""
    check = getattr(single_server_tests(), name)
    wanted = check.__code__.co_varnames[:check.__code__.co_argcount]
    check(*(ray_server if arg == "server" else request.getfixturevalue(arg) for arg in wanted))


def test_load_spreads_over_both_replicas(ray_server, digits):
    answered = []

    def send(i):
        response = httpx.post(ray_server.url + INFER, json=infer_json(digits[0][[i]], mode="predict", n=60),
                              timeout=300)
        assert response.status_code == 200, response.text
        answered.append(response.headers["x-densepure-replica"])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(answered)) == 2 and len(answered) == 6
    metrics = ray_server.http.get("/metrics")
    assert f'replica="{metrics.headers["x-densepure-replica"]}"' in metrics.text  # each replica's own metrics


def test_jobs_are_answered_by_any_replica(ray_server, digits):
    http = ray_server.http
    created = http.post("/v1/jobs", json=infer_json(digits[0][[9]], mode="certify", n0=20, n=600))
    assert created.status_code == 202
    job, owner = created.json()["id"], created.headers["x-densepure-replica"]
    asked, deadline = set(), time.monotonic() + 300
    while True:
        response = http.get(f"/v1/jobs/{job}")
        assert response.status_code == 200, response.text
        asked.add(response.headers["x-densepure-replica"])
        view = response.json()
        if view["status"] == "succeeded":
            break
        assert view["status"] in ("queued", "running") and time.monotonic() < deadline
        time.sleep(0.2)
    assert asked - {owner}, "every poll went to the job's own replica"
    assert view["result"]["outputs"][0]["name"] == "label"
    assert http.get(f"/v1/jobs/{job}").status_code == 404  # handed over once, whichever replica is asked
    long = http.post("/v1/jobs", json=infer_json(digits[0][[10]], mode="certify", n=2000)).json()["id"]
    cancelled = http.delete(f"/v1/jobs/{long}")
    assert cancelled.json() == {"id": long, "status": "cancelled"}
    assert http.get(f"/v1/jobs/{long}").status_code == 404


def test_a_replica_killed_mid_request_fails_only_that_request(ray_server, digits):
    pids = replicas(ray_server.url)
    job = ray_server.http.post("/v1/jobs", json=infer_json(digits[0][[11]], mode="certify", n=2000))
    victim = job.headers["x-densepure-replica"]  # it holds a job and, below, a request
    statuses = {}

    def send(i):
        response = httpx.post(ray_server.url + INFER, json=infer_json(digits[0][[i]], mode="certify", n=1500),
                              timeout=300)
        statuses[i] = response

    first = threading.Thread(target=send, args=(0,))
    first.start()
    time.sleep(1.5)  # the second goes to the replica without a request (Serve routes by requests in flight)
    second = threading.Thread(target=send, args=(1,))
    second.start()
    time.sleep(3)
    os.kill(pids[victim], signal.SIGKILL)
    first.join(300)
    second.join(300)
    codes = sorted(r.status_code for r in statuses.values())
    assert codes == [200, 503], [(r.status_code, r.text[:200]) for r in statuses.values()]
    lost = next(r for r in statuses.values() if r.status_code == 503)
    assert lost.headers["retry-after"] == "1" and "retry" in lost.json()["error"]
    with Client(ray_server.url) as client:  # the other replica serves on
        assert client.infer(digits[0][12], mode="predict", n=10).draws.tolist() == [10]
    deadline = time.monotonic() + 120
    while True:
        response = ray_server.http.get(f"/v1/jobs/{job.json()['id']}")
        assert time.monotonic() < deadline, response.text
        if response.status_code == 503:  # routed to the dead replica before Serve saw it go: retry
            assert "retry" in response.json()["error"]
        elif (view := response.json())["status"] == "failed":
            break
        else:
            assert view["status"] in ("queued", "running")
        time.sleep(0.5)
    assert "was lost" in view["error"] and victim in view["error"]
    assert victim not in replicas(ray_server.url, timeout=240)  # Serve started a replacement


def test_scale_down_drains_the_replica(tmp_path, digits):
    proc = ServerProcess(tmp_path, *FAST, "--ray", "local", "--replicas", "2", "--min-replicas", "1",
                         "--max-replicas", "2", "--target-requests", "1", "--downscale-delay", "20",
                         "--grace-period", "240")
    try:
        proc.wait_ready(300)
        pids = replicas(proc.url)
        jobs, owners = {}, set()
        while owners != set(pids):  # a job on each replica: the one scaled down must finish its own
            response = proc.http.post("/v1/jobs", json=infer_json(digits[0][[20 + len(jobs)]], mode="certify",
                                                                  n0=20, n=800))
            assert response.status_code == 202 and len(jobs) < 12
            jobs[response.json()["id"]] = response.headers["x-densepure-replica"]
            owners.add(response.headers["x-densepure-replica"])
        done, deadline = {}, time.monotonic() + 600
        while len(done) < len(jobs):
            assert time.monotonic() < deadline, f"jobs left: {set(jobs) - set(done)}"
            for job in set(jobs) - set(done):
                view = proc.http.get(f"/v1/jobs/{job}").json()
                if view["status"] not in ("queued", "running"):
                    done[job] = view
            time.sleep(0.5)
        assert all(view["status"] == "succeeded" for view in done.values()), done
        deadline = time.monotonic() + 300
        while all(_alive(pid) for pid in pids.values()):  # one replica goes: scaled down once its job was done
            assert time.monotonic() < deadline, "no replica was scaled down"
            time.sleep(1)
        assert sum(_alive(pid) for pid in pids.values()) == 1
        assert set(replicas(proc.url, want=1)) < set(pids)  # the other serves on
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
