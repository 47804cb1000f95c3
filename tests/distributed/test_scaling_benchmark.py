"""benchmarks/scaling.py runs end to end on tiny settings (its numbers are not asserted: no timing in tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scaling_reports_both_worker_counts_with_equal_certificates():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--images", "2", "--n0", "10",
                           "--n", "20", "--K", "3", "--repeats", "1", "--timeout", "300"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["workers"]) == {"1", "2"} and result["single_process_images_per_hour"] > 0
    for row in result["workers"].values():
        assert row["images_per_hour"] > 0 and row["worker_cpu_s_per_image"] > 0
    assert result["workers"]["1"]["speedup_vs_first"] == 1.0
    assert "certificates equal in every run" in done.stdout
