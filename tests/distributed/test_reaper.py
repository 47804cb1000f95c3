"""The reaper: a local Ray instance's processes do not outlive their driver, even one killed with SIGKILL.

A fake "Ray" (scripts inside a directory given as the ray package) checks the rules quickly; the last test
kills a real driver of a real local instance (slow: Ray takes ~10 s to start on 2 busy cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from densepure.distributed.reaper import _table, descendants, is_ray

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the reaper needs /proc (Linux)")
ROOT = Path(__file__).resolve().parents[2]

AGENT = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "120"])  # an agent's own child: killed with it, Ray-looking or not
print(child.pid, flush=True)
time.sleep(120)
"""

DRIVER = """
import importlib.util, json, os, subprocess, sys, time

fake_ray, mode, path = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("reaper", path)  # the module alone: no torch to import
reaper_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reaper_module)
def agent():
    p = subprocess.Popen([sys.executable, os.path.join(fake_ray, "agent.py")], stdout=subprocess.PIPE, text=True)
    return p.pid, int(p.stdout.readline())
old = agent()  # a Ray-looking process that existed before the reaper: never touched
reaper = reaper_module.start_reaper(fake_ray)
new = agent()
other = subprocess.Popen(["sleep", "120"]).pid  # the driver's own child, not Ray's: never touched
time.sleep(1.0)  # the reaper records the tree
print(json.dumps({"old": old, "new": new, "other": other}), flush=True)
if mode == "close":
    reaper.close()
    print("closed", flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie (its parent has not waited yet) is dead


def wait_dead(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def kill_all(pids) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_is_ray_and_descendants():
    ray_dir = "/venv/site-packages/ray"
    assert is_ray(("ray::DashboardAgent",), ray_dir) and is_ray((f"{ray_dir}/core/src/ray/raylet/raylet",), ray_dir)
    assert is_ray(("/venv/bin/python", "-u", f"{ray_dir}/autoscaler/_private/monitor.py"), ray_dir)
    assert not is_ray(("/home/ray/venv/bin/python", "train.py"), ray_dir)
    assert not is_ray(("/venv/site-packages/ray_tune/x.py",), ray_dir)
    table = {1: (0, 0, ()), 10: (1, 5, ()), 11: (10, 6, ()), 12: (11, 7, ()), 20: (1, 8, ())}
    assert descendants(table, {10}) == {11, 12} and descendants(table, {1}) == {10, 11, 12, 20}
    assert os.getpid() in _table() and _table()[os.getpid()][0] == os.getppid()


@pytest.mark.parametrize("mode", [pytest.param("sigkill", marks=pytest.mark.slow), "close"])
def test_the_driver_s_ray_processes_die_with_it_and_nothing_else(tmp_path, mode):
    fake_ray = tmp_path / "site-packages" / "ray"
    fake_ray.mkdir(parents=True)
    (fake_ray / "agent.py").write_text(textwrap.dedent(AGENT))
    reaper = ROOT / "densepure" / "distributed" / "reaper.py"
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), str(fake_ray), mode, str(reaper)],
                              stdout=subprocess.PIPE, text=True)
    pids = json.loads(driver.stdout.readline())
    everything = [*pids["old"], *pids["new"], pids["other"]]
    try:
        if mode == "sigkill":
            driver.kill()
            driver.wait(10)
        else:
            assert driver.stdout.readline() == "closed\n"
        assert wait_dead(pids["new"], 5) == []  # the agent and its child, killed within seconds
        assert all(alive(p) for p in (*pids["old"], pids["other"]))
        assert (driver.poll() is None) == (mode == "close")  # close kills Ray's processes, not the driver
    finally:
        driver.kill()
        driver.wait(10)
        kill_all(everything)


DRIVER_RAY = """
import json, os, time
os.environ["RAY_AUTH_TOKEN"] = os.urandom(32).hex()
from densepure.distributed.cluster import connect
from densepure.distributed.reaper import _table, descendants

with connect("local", num_cpus=1, object_store_mb=80) as ray:
    @ray.remote(num_cpus=0.5)
    def pid():
        return os.getpid()
    worker = ray.get(pid.remote())
    time.sleep(1.0)
    table = _table()
    ray_pids = sorted(p for p in descendants(table, {os.getpid()}) if " ".join(table[p][2]).find("reaper") < 0)
    print(json.dumps({"worker": worker, "ray": ray_pids}), flush=True)
    time.sleep(300)
"""


@pytest.mark.slow
def test_a_sigkilled_local_driver_leaves_no_ray_process():
    pytest.importorskip("ray", reason="the ray extra is not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER_RAY)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = driver.stdout.readline()
        assert line, "the driver did not start Ray"
        pids = json.loads(line)
        table = _table()
        commands = [" ".join(table[p][2]) for p in pids["ray"] if p in table]
        assert pids["worker"] in pids["ray"] and any("/raylet/raylet " in c for c in commands), commands
        assert any(c.startswith("ray::DashboardAgent") for c in commands), commands  # the ones that used to survive
        driver.kill()
        driver.wait(10)
        assert wait_dead(pids["ray"], 30) == []
    finally:
        driver.kill()
        driver.wait(10)
        kill_all(pids["ray"] if "pids" in locals() else [])
