"""The GPU lease script's rehearsal: the same stages on the CPU at tiny sizes, so the script that a
lucky session runs on a lent GPU cannot rot in between (issues 15, 28); and the harness keeps every
figure a stage measured, also when the stage hangs or dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_gpu_check():
    """benchmarks/gpu_check.py as a module, with benchmarks/ on sys.path only while it imports (left there, its
    modules would shadow packages of the same name for every later test)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


gpu_check = _import_gpu_check()


def _run(out: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--rehearse", "--out", str(out),
                           *args], capture_output=True, text=True, env=full, timeout=600)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return done, rows


def _check_out_folder(out: Path) -> None:
    """What a device call brings back: at most 8 files, none deeper than 2 folders."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert all(len(p.relative_to(out).parts) <= 3 for p in files), files


@pytest.mark.slow
def test_the_rehearsal_passes_at_its_defaults_and_brings_back_every_figure(tmp_path):
    """Default budget and slack (CI's): every stage ends ok, in the order of the script."""
    done, rows = _run(tmp_path)
    assert [r["stage"] for r in rows] == list(gpu_check.STAGES), done.stdout
    failed = [(r["stage"], r["status"], r.get("tail", "")[-1500:]) for r in rows
              if r["status"] != "ok" and r["status"] != "skipped (not rehearsed)"]
    assert not failed, failed
    assert done.returncode == 0 and "| stage |" in (tmp_path / "summary.md").read_text()
    _check_out_folder(tmp_path)
    results = {r["stage"]: r["result"] for r in rows}
    assert results["env"]["tf32_defaults"] and "onnxruntime_providers" in results["env"]
    assert results["smoke"]["smoke_exit"] == 0 and results["smoke"]["recorded"]["precision"] == "fp32"
    _check_exactness(results["exactness"])
    _check_models(results["models"])
    _check_end_to_end(results["end_to_end"])
    _check_serve(results["serve"])
    assert results["serve_http"]["http_p50_at_1_client_s"] > 0
    tests = results["gpu_tests"]  # on the CPU every gpu test skips; none may fail to collect
    assert tests["skipped"] >= 10 and tests["failed"] == tests["errors"] == tests["passed"] == 0
    assert "tests/engine/test_tf32.py" in tests["files"] and all(v == "SKIPPED" for v in tests["outcomes"].values())
    kernels = results["kernels"]  # Triton's interpreter: each kernel checked against its reference, then timed
    checked = [k for k in kernels if k.endswith(".triton.checked")]
    assert len(checked) == 4 + 2 and all(kernels[k] == 1 and kernels[k.replace(".checked", ".us")] > 0 for k in checked)
    assert kernels["kernels unet.fused_norms.checked"] == 1
    assert results["compile"]["compiled bf16 unet.ungraphed.rows_per_s"] > 0


def _check_exactness(exactness: dict) -> None:
    assert exactness["fp32_identical"] and exactness["tf32_flags_as_configured"]
    for key, row in exactness.items():
        if " fp32 " in key or " tf32 " in key:  # CPU against CPU: tf32 is exact fp32 off CUDA
            assert row["images_differing"] == 0 and row["identical"] == "1/1 images", (key, row)
        if " tf32 " in key:
            assert row["tf32_in_model_calls"] == [True], (key, row)


def _check_models(models: dict) -> None:
    for p in ("fp32", "bf16"):  # densepure bench models, run per precision
        assert models[f"{p} unet.ungraphed.rows_per_s"] > 0 and models[f"{p} classifier.ungraphed.mfu_of_matmul"] > 0
        assert models[f"{p} configuration"]["precision"] == p and models[f"{p} partial"] is False
    unet, vit = models["constructors"]["cifar10_unet"], models["constructors"]["vit_b16_224"]
    assert unet["finite"] and unet["eps_std"] > 0  # perturbed weights: eps is not 0
    assert unet["gflops"] == pytest.approx(16.77, abs=0.01)  # PERFORMANCE.md
    assert vit["finite"] and vit["gflops_analytic"] == pytest.approx(35.13, abs=0.01)
    assert 33.5 < vit["gflops_counted"] <= vit["gflops_analytic"]  # fast path off: the projections are counted
    assert vit["label"] == 0  # the random ViT leads with class 0


def _check_end_to_end(e2e: dict) -> None:
    for p in ("fp32", "bf16"):  # densepure bench throughput --baseline official, per precision
        assert e2e[f"{p} engine.draws_per_s"] > 0 and e2e[f"{p} official.draws_per_s"] > 0
        assert e2e[f"{p} ratio.draws_per_s"] == pytest.approx(e2e[f"{p} engine.draws_per_s"] /
                                                             e2e[f"{p} official.draws_per_s"])
        config = e2e[f"{p} configuration"]
        assert config["precision"] == config["official_precision"] == p
        assert config["weights"].startswith("the shipped digits") and config["tf32_in_model_calls"] is False
    assert e2e["ratio bf16 engine / fp32 official"] == pytest.approx(e2e["bf16 engine.draws_per_s"] /
                                                                     e2e["fp32 official.draws_per_s"])


def _check_serve(serve: dict) -> None:
    for clients in (1, 4):  # densepure bench latency --concurrency 1 4: one engine of 64 slots
        assert serve[f"serve c{clients}.errors"] == 0
        assert 0 < serve[f"serve c{clients}.p50_s"] <= serve[f"serve c{clients}.p95_s"]
        assert 10 < serve[f"serve c{clients}.draws_per_request"] <= 110  # n0 = 10 selection draws, then at most 100
    assert serve["p50_at_1_client_s"] == serve["serve c1.p50_s"]
    assert serve["serve configuration"]["image_slots_resolved"] == 64


@pytest.mark.slow  # gpu_check.py with two stages, one cut short at 15 s
@pytest.mark.parametrize("fault,status", [("hang", "timed out after 15 s"), ("crash", "failed (exit 3)")])
def test_a_stage_cut_short_after_its_first_figure_keeps_that_figure(tmp_path, fault, status):
    done, rows = _run(tmp_path, "--only", "env", "exactness", "--stage-limit", "env=15",
                      GPU_CHECK_FAULT=f"env:{fault}")
    env, after = rows
    assert env["status"] == status, (env, done.stdout)
    assert env["result"]["torch"] and env["result"]["tf32_defaults"]  # the figures emitted before the fault
    assert "onnxruntime" not in env["result"]  # ... and nothing after it
    assert '{"partial": {"device"' in (tmp_path / "log.txt").read_text()  # streamed while the stage ran
    assert after["status"] == "ok" and done.returncode == 1  # the next stage still runs; the check says it failed
    _check_out_folder(tmp_path)


def test_stage_output_merges_partial_figures_and_the_last_result(tmp_path):
    with (tmp_path / "log.txt").open("w") as log:
        output = gpu_check.StageOutput("x", log)
        for line in ['{"partial": {"a": 1, "b": 2}}\n', "not json\n", '{"partial": {"b": 3}}\n', "{broken\n",
                     '{"c": 4, "a": 5}\n', "Traceback (most recent call last):\n"]:
            output.feed(line)
    assert output.result() == {"a": 5, "b": 3, "c": 4}
    assert (tmp_path / "log.txt").read_text().count("\n") == 6 and list(output.tail)[-1].startswith("Traceback")
    with (tmp_path / "log.txt").open("w") as log:
        assert gpu_check.StageOutput("y", log).result() is None


def test_every_stage_is_documented():
    text = (ROOT / "docs" / "gpu_check.md").read_text()
    header = (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert 'run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)' in header
    for name, stage in gpu_check.STAGES.items():
        assert f"`{name}`" in text and name in header, name
        stage.load()  # every stage's function exists
