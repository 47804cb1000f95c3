"""The benchmark scripts run end to end on tiny settings (their numbers are not asserted: no timing in tests).
They run as ``__main__`` in this process (a second interpreter costs ~3 s of CPU to start). The kernels
benchmark's run is the gpu check rehearsal's ``kernels`` stage (tests/test_gpu_check.py)."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_script(monkeypatch, capsys):
    """``run_script(name, *args)``: benchmarks/``name`` with ``args`` as ``__main__`` in this process; what it
    printed. The torch thread count it sets is restored."""
    threads = torch.get_num_threads()

    def run(name: str, *args: str) -> str:
        path = ROOT / "benchmarks" / name
        monkeypatch.syspath_prepend(str(path.parent))  # the scripts import benchmarks/common.py
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code in (0, None), capsys.readouterr().err[-2000:]
        return capsys.readouterr().out

    yield run
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_table1_runs_resumes_and_reports(tmp_path, run_script):
    out = tmp_path / "table1"
    args = ("--images", "2", "--n0", "10", "--n", "20", "--sigmas", "0.5", "--threads", "1", "--out", str(out))
    run_script("table1.py", *args)
    files = sorted(p.name for p in out.glob("*.tsv"))
    assert files == sorted(f"sigma0.5_{t}.tsv" for t in ("gaussian", "onestep", "densepure_K1_b2", "densepure_K3_b2",
                                                          "densepure_K10_b2", "densepure_K1_b4", "densepure_K3_b4",
                                                          "densepure_K10_b4"))
    for name in files:
        assert len((out / name).read_text().splitlines()) == 3  # header + 2 images
    report = (tmp_path / "table1_digits.md").read_text()
    assert report.count("| densepure K=") == 6 and "| gaussian |" in report and "partial" not in report
    assert (tmp_path / "table1_digits.png").read_bytes().startswith(b"\x89PNG")
    again = run_script("table1.py", *args)  # everything finished: resumes without sampling
    assert "images," not in again


@pytest.mark.slow
def test_throughput_prints_both_rates_and_their_ratio(run_script):
    stdout = run_script("throughput.py", "--images", "1", "--n0", "10", "--n", "20", "--K", "3", "--threads", "1",
                        "--device", "cpu", "--precision", "fp32", "bf16", "--repeats", "1")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["engine"]) == {"fp32", "bf16"} and result["official_draws_per_s"] > 0
    for row in result["engine"].values():
        assert row["speedup"] == pytest.approx(row["draws_per_s"] / result["official_draws_per_s"])
        assert 3 <= row["unet_rows_per_draw"] <= 4  # shared first step + 2 or 3 chains (early exit), 1 step each
    assert "torch" in result["device"]
    assert "official protocol" in stdout and "ratio engine / official" in stdout


@pytest.mark.slow  # two servers and their clients: ~15 s of CPU
def test_serve_benchmark_reports_both_servers_and_their_ratio(run_script):
    stdout = run_script("serve.py", "--concurrency", "1", "2", "--requests", "2", "2", "--server-args",
                        "--K 3 --n0 10 --n 100")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["results"]) == {"shared", "serial"}
    for rows in result["results"].values():
        assert [r["clients"] for r in rows] == [1, 2] and all(r["requests"] == 2 for r in rows)
        assert all(0 < r["p50_s"] <= r["p95_s"] <= r["p99_s"] and r["throughput_rps"] > 0 for r in rows)
    shared, serial = result["results"]["shared"][1], result["results"]["serial"][1]
    assert result["ratio"]["throughput"] == pytest.approx(shared["throughput_rps"] / serial["throughput_rps"])
    assert "| server | clients |" in stdout


def test_serve_devices_benchmark_reports_one_and_two_loops_and_their_ratio():
    stdout = run_script("serve_devices.py", "--concurrency", "1", "2", "--requests", "2", "2", "--configs", "one",
                        "two", "--server-args", "--K 3 --n0 10 --n 100")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["results"]) == {"one", "two"} and set(result["ratio"]) == {"two/one"}
    for rows in result["results"].values():
        assert [r["clients"] for r in rows] == [1, 2] and all(r["requests"] == 2 for r in rows)
        assert all(0 < r["p50_s"] <= r["p95_s"] and r["throughput_rps"] > 0 and r["unet_rows_per_call"] > 0
                   for r in rows)
    one, two = result["results"]["one"][1], result["results"]["two"][1]
    assert result["ratio"]["two/one"]["2"]["throughput"] == pytest.approx(two["throughput_rps"] / one["throughput_rps"])
    assert "| loops | clients |" in stdout


def _benchmark_module(name: str):
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def test_kernels_benchmark_refuses_to_time_a_kernel_that_disagrees_with_its_reference():
    import torch

    kernels = _benchmark_module("kernels")
    x = torch.randn(64)
    calls = {"torch": {"double": (lambda: x * 2, 8)}, "right": {"double": (lambda: x + x, 8)},
             "wrong": {"double": (lambda: x * 2.001, 8)}, "half": {"double": (lambda: (x * 2).half(), 8)}}
    row = kernels.table("t", calls, torch.device("cpu"), repeats=1, bandwidth=None, check_scale=4.0)["double"]
    assert row["right"]["checked"] and row["right"]["us"] > 0
    assert "us" not in row["wrong"] and row["wrong"]["error"].startswith("not timed: output 0 differs")
    # dtype-aware: an fp16 result within fp16's tolerance of the fp32 reference passes
    assert kernels.check(lambda: x * 2, lambda: (x * 2).half(), 4.0) is None
    assert kernels.check(lambda: (x * 2).half(), lambda: (x * 2.2).half(), 4.0) is not None


def test_flops_prints_the_table_of_docs_performance():
    """docs/performance.md's FLOP table is exactly what benchmarks/flops.py counts (meta device: seconds)."""
    pytest.importorskip("transformers", reason="the classifiers' architectures come from transformers")
    table = [line for line in run_script("flops.py").splitlines() if line.startswith("|")]
    doc = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8").splitlines()
    assert len(table) == 7 and "| CIFAR-10 UNet (improved-diffusion, 32 px) | 52,546,438 | 16.77 |" in table[2]
    start = doc.index(table[0])
    assert doc[start:start + len(table)] == table
