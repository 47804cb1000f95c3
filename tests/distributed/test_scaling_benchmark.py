"""benchmarks/scaling.py runs end to end on tiny settings (its numbers are not asserted: no timing in tests).
It runs in this process, on the session's Ray instance (its ``connect("local")`` reuses a connection), so the
test pays for neither a second interpreter nor a second Ray start."""

import json
import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scaling_reports_both_worker_counts_with_equal_certificates(cluster, capsys, monkeypatch):
    script = ROOT / "benchmarks" / "scaling.py"
    monkeypatch.syspath_prepend(str(script.parent))  # the script imports benchmarks/common.py
    monkeypatch.setattr(sys, "argv", [str(script), "--images", "2", "--n0", "10", "--n", "20", "--K", "3",
                                      "--repeats", "1", "--timeout", "300"])
    runpy.run_path(str(script), run_name="__main__")
    stdout = capsys.readouterr().out
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["workers"]) == {"1", "2"} and result["single_process_images_per_hour"] > 0
    for row in result["workers"].values():
        assert row["images_per_hour"] > 0 and row["worker_cpu_s_per_image"] > 0
    assert result["workers"]["1"]["speedup_vs_first"] == 1.0
    assert "certificates equal in every run" in stdout
