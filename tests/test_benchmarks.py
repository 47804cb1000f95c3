"""The benchmark scripts run end to end on tiny settings (their numbers are not asserted: no timing in tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, env: dict | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_table1_runs_resumes_and_reports(tmp_path):
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
def test_throughput_prints_both_rates_and_their_ratio():
    stdout = run_script("throughput.py", "--images", "1", "--n0", "10", "--n", "20", "--K", "3", "--threads", "1",
                        "--device", "cpu", "--precision", "fp32", "bf16", "--repeats", "1")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["engine"]) == {"fp32", "bf16"} and result["official_draws_per_s"] > 0
    for row in result["engine"].values():
        assert row["speedup"] == pytest.approx(row["draws_per_s"] / result["official_draws_per_s"])
        assert 3 <= row["unet_rows_per_draw"] <= 4  # shared first step + 2 or 3 chains (early exit), 1 step each
    assert "torch" in result["device"]
    assert "official protocol" in stdout and "ratio engine / official" in stdout


@pytest.mark.slow
def test_kernels_benchmark_smoke_compares_torch_and_triton():
    pytest.importorskip("triton")
    stdout = run_script("kernels.py", "--device", "cpu", "--arch", "tiny", "--rows", "2", "--repeats", "1",
                        env={"TRITON_INTERPRET": "1"})  # the script's CPU run uses Triton's interpreter
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["kernels"].startswith("triton") and result["compile"] is False
    for table in ("row_kernels", "norms"):
        for row in result[table].values():
            assert set(row) == {"torch", "triton"} and row["triton"]["us"] > 0
            assert row["triton"]["speedup_vs_eager"] == pytest.approx(row["torch"]["us"] / row["triton"]["us"])
    assert set(result["unet"]) == {"modules", "fused norms"} and result["unet"]["modules"]["draws_vs_modules"] == 1.0
    assert "torch/triton" in stdout and "draws/s" in stdout
def test_serve_benchmark_reports_both_servers_and_their_ratio():
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


@pytest.mark.slow
def test_sound_benchmark_reports_both_samplers_and_their_ratio():
    stdout = run_script("sound.py", "--repeats", "1", "--e2e-repeats", "0")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["sampler"]) == {"digits", "cifar10", "imagenet"}
    for row in result["sampler"].values():
        ns = row["ns_per_value"]
        assert set(ns) == {"float_noise", "sound_noise", "float_start", "sound_start"} and min(ns.values()) > 0
        assert row["noise_ratio"] == pytest.approx(ns["sound_noise"] / ns["float_noise"])
    assert "sound/float" in stdout
