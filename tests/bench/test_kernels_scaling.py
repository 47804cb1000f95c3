"""``densepure bench kernels`` and ``scaling`` run end to end on tiny settings and fill the report (their numbers
are not asserted: no timing in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "densepure.cli", "bench", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900, check=False)


@pytest.mark.slow  # a second interpreter, without Triton's interpreter: ~5 s of CPU
def test_kernels_without_triton_times_the_torch_references(tmp_path):
    """On the CPU without Triton's interpreter only the torch columns run, and the report says why."""
    done = bench("kernels", "--device", "cpu", "--batch-size", "2", "--K", "3", "--output", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    metrics = report["metrics"]
    assert report["configuration"]["kernels_resolved"].startswith("triton unavailable")
    assert report["configuration"]["preset"] == "digits" and report["configuration"]["random_weights"] is True
    names = [k for k in metrics if k.startswith("row_kernels.")]
    assert len(names) == 4 * 2 and all(".torch." in k for k in names)  # 4 row kernels: us and GB/s each
    assert metrics["unet.modules.pipeline_vs_modules"]["value"] == 1.0
    assert metrics["unet.modules.rows_per_s"]["unit"] == "rows/s"


def test_scaling_reports_both_worker_counts_with_equal_certificates(tmp_path, cluster, capsys):
    """In this process, on the session's Ray instance (``connect("local")`` reuses it): no second interpreter
    and no second Ray start (~10 s of CPU and as much waiting). Slow: it uses ``cluster``."""
    from densepure.cli import main

    code = main(["bench", "scaling", "--max", "2", "--n0", "10", "--n", "20", "--K", "3", "--device", "cpu",
                 "--output", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    metrics = {k: m["value"] for k, m in report["metrics"].items()}
    assert metrics["workers1.images_per_hour"] > 0 and metrics["workers2.images_per_hour"] > 0
    assert metrics["workers1.speedup"] == 1.0 and metrics["single.images_per_hour"] > 0
    assert [row[0] for row in report["series"]["workers"]["rows"]] == [1, 2]
    assert any("certificates equal" in note for note in report["notes"])
