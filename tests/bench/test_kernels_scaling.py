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


def test_a_kernel_that_disagrees_with_its_reference_is_refused_untimed():
    """Reference first: every implementation is checked against the first column before it is timed."""
    import torch

    from densepure.bench.kernels import check, table

    x = torch.randn(64)
    calls = {"torch": {"double": (lambda: x * 2, 8)}, "right": {"double": (lambda: x + x, 8)},
             "wrong": {"double": (lambda: x * 2.001, 8)}, "half": {"double": (lambda: (x * 2).half(), 8)},
             "nan": {"double": (lambda: x * float("nan"), 8)}}
    heard = []
    row = table(calls, torch.device("cpu"), repeats=1, bandwidth=None, check_scale=4.0,
                on_row=lambda name, r: heard.append(name))["double"]
    assert heard == ["double"]  # each row is handed on as soon as it is measured
    assert row["right"]["checked"] and row["right"]["us"] > 0 and row["half"]["us"] > 0
    for bad in ("wrong", "nan"):
        assert "us" not in row[bad] and row[bad]["error"].startswith("not timed: output 0 differs")
    # dtype-aware: an fp16 result within fp16's tolerance of the fp32 reference passes; a larger error does not
    assert check(lambda: x * 2, lambda: (x * 2).half(), 4.0) is None
    assert check(lambda: (x * 2).half(), lambda: (x * 2.2).half(), 4.0) is not None
    assert check(lambda: x * 2, lambda: (x * 2)[:10], 4.0).startswith("output 0 has shape")
    assert check(lambda: (x, x), lambda: x, 4.0) == "returned 1 tensors, the reference 2"


def test_a_refused_kernel_is_a_note_and_a_zero_never_a_time():
    from densepure.bench.kernels import record_row
    from densepure.bench.report import ReportBuilder

    builder = ReportBuilder("kernels", ["densepure"], {})
    record_row(builder, "norms", "groupnorm+silu 32x8x8", {"torch": {"us": 5.0, "GB_per_s": 1.0},
                                                             "triton": {"error": "not timed: output 0 differs",
                                                                        "checked": False}})
    record_row(builder, "unet", "fused norms", {"error": "not timed: output 1 differs", "checked": False})
    metrics = {k: m.value for k, m in builder.metrics.items()}
    assert metrics == {"norms.groupnorm+silu_32x8x8.torch.us": 5.0, "norms.groupnorm+silu_32x8x8.torch.GB_per_s": 1.0,
                       "norms.groupnorm+silu_32x8x8.triton.checked": 0, "unet.fused_norms.checked": 0}
    assert any("triton: not timed" in note for note in builder.notes)
    assert any("UNet fused norms: not timed" in note for note in builder.notes)


def test_the_kernel_inputs_hold_values_and_every_call_returns_what_it_wrote():
    """Uninitialised pools could hold NaNs: a comparison with the reference would mean nothing."""
    import torch

    from densepure.bench.kernel_inputs import RowInputs
    from densepure.bench.kernels import _outputs
    from densepure.kernels import resolve_kernels
    from densepure.models import get_preset

    inputs = RowInputs(3, (1, 8, 8), get_preset("digits").schedule, torch.device("cpu"))
    assert all(bool(torch.isfinite(p).all()) for p in inputs.pools)
    for name, (call, nbytes) in inputs.calls(resolve_kernels("torch", torch.device("cpu"))).items():
        tensors = _outputs(call())
        assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors) and nbytes > 0, name
