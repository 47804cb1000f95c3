"""The GPU lease script's rehearsal: the same stages on the CPU at tiny sizes, so the script that a
lucky session runs on a lent GPU cannot rot in between (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_rehearsal_runs_every_stage_and_saves_each_result(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--rehearse", "--slack", "4",
                           "--budget", "900", "--only", "env", "exactness", "models", "end_to_end", "serve", "gpu_tests",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=1200)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["env", "exactness", "models", "end_to_end", "serve", "gpu_tests"], done.stdout
    failed = [(r["stage"], r["status"]) for r in rows if r["status"] != "ok"]
    assert not failed, (failed, (tmp_path / "log.txt").read_text()[-3000:])
    results = {r["stage"]: r["result"] for r in rows}
    assert results["env"]["smoke_exit"] == 0
    for value in results["exactness"].values():  # CPU against CPU: every image's counts identical
        same, total = value.split(" ")[0].split("/")
        assert same == total and value.endswith("images identical"), value
    assert results["models"]["unet fp32 graphs=False rows/s"] > 0
    assert results["end_to_end"]["engine"]["fp32"]["draws_per_s"] > 0
    serve = results["serve"]  # the server's engine loop, closed-loop clients at two concurrencies
    for level, requests in (("c=1", 2), ("c=4", 4)):
        assert serve[level]["requests"] == requests and 0 < serve[level]["p50_s"] <= serve[level]["p95_s"]
        # the classifier is sure of class 0: every request certifies class 0 at the test's first look,
        # all with the same draws (n0 = 10 selection draws and the first look's)
        assert serve[level]["certified"] == 1.0 and serve[level]["mean_draws"] == serve[level]["max_draws"]
        assert 10 < serve[level]["max_draws"] < 110
    assert serve["p50_at_1_client_s"] == serve["c=1"]["p50_s"]
    assert "|" in (tmp_path / "summary.md").read_text() and done.returncode == 0
