"""The benchmark scripts run end to end on tiny settings (their numbers are not asserted: no timing in tests).
They run as ``__main__`` in this process (a second interpreter costs ~3 s of CPU to start)."""

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
    printed. sys.path (the scripts put benchmarks/ or the root first) and the torch thread count are restored."""
    threads = torch.get_num_threads()

    def run(name: str, *args: str) -> str:
        path = ROOT / "benchmarks" / name
        monkeypatch.syspath_prepend(str(path.parent))  # saves sys.path: restored after the test
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


@pytest.mark.slow  # two servers of its own
def test_serve_benchmark_measures_each_server_with_bench_serve_and_compares_them(tmp_path, run_script):
    """benchmarks/serve.py starts each configuration's server and runs `densepure bench serve` against it."""
    stdout = run_script("serve.py", "--concurrency", "1", "2", "--requests", "2", "2", "--server-args",
                        "--K 3 --n0 10 --n 100", "--out", str(tmp_path))
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["configs"]) == {"shared", "serial"}
    for name, metrics in result["configs"].items():
        assert metrics["errors"] == 0 and metrics["c1.requests_per_s"] > 0 and metrics["c2.server_unet_rows_per_call"] > 0
        assert 0 < metrics["c2.p50_s"] <= metrics["c2.p95_s"] <= metrics["c2.p99_s"]
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["subcommand"] == "serve" and report["configuration"]["params"] == ["mode=certify_radius"]
    shared, serial = result["configs"]["shared"], result["configs"]["serial"]
    ratio = result["ratios"]["serial/shared"]
    assert ratio["c2.requests_per_s"] == pytest.approx(serial["c2.requests_per_s"] / shared["c2.requests_per_s"])
    assert "| metric | A | B | B / A | unit |" in stdout


@pytest.mark.slow  # two servers of its own
def test_serve_devices_benchmark_reports_one_and_two_loops_and_their_ratio(run_script):
    stdout = run_script("serve_devices.py", "--concurrency", "1", "2", "--requests", "2", "2", "--configs", "one",
                        "two", "--server-args", "--K 3 --n0 10 --n 100")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["configs"]) == {"one", "two"} and set(result["ratios"]) == {"two/one"}
    for metrics in result["configs"].values():
        assert all(metrics[f"c{c}.requests_per_s"] > 0 and metrics[f"c{c}.server_unet_rows_per_call"] > 0
                   and 0 < metrics[f"c{c}.p50_s"] <= metrics[f"c{c}.p95_s"] for c in (1, 2))
    one, two = result["configs"]["one"], result["configs"]["two"]
    assert result["ratios"]["two/one"]["c2.requests_per_s"] == pytest.approx(
        two["c2.requests_per_s"] / one["c2.requests_per_s"])


@pytest.mark.slow
def test_sound_benchmark_reports_both_samplers_and_their_ratio(run_script):
    stdout = run_script("sound.py", "--repeats", "1", "--e2e-repeats", "0")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["sampler"]) == {"digits", "cifar10", "imagenet"}
    for row in result["sampler"].values():
        ns = row["ns_per_value"]
        assert set(ns) == {"float_noise", "sound_noise", "float_start", "sound_start"} and min(ns.values()) > 0
        assert row["noise_ratio"] == pytest.approx(ns["sound_noise"] / ns["float_noise"])
    assert "sound/float" in stdout


def test_flops_prints_the_table_of_docs_performance(run_script):
    """docs/performance.md's FLOP table is exactly what benchmarks/flops.py counts (meta device: seconds)."""
    pytest.importorskip("transformers", reason="the classifiers' architectures come from transformers")
    table = [line for line in run_script("flops.py").splitlines() if line.startswith("|")]
    doc = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8").splitlines()
    assert len(table) == 7 and "| CIFAR-10 UNet (improved-diffusion, 32 px) | 52,546,438 | 16.77 |" in table[2]
    start = doc.index(table[0])
    assert doc[start:start + len(table)] == table


def test_every_benchmark_script_imports_names_that_exist():
    """The scripts run only when someone benchmarks: a name they import from densepure that moved must fail
    here, not months later (benchmarks/int8.py once imported densepure.certify.analyze after it moved)."""
    import ast
    import importlib

    scripts = sorted((ROOT / "benchmarks").rglob("*.py"))
    checked = 0
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "densepure":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                        f"{script.relative_to(ROOT)}: {node.module} has no {alias.name}"
                    checked += 1
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "densepure":
                        importlib.import_module(alias.name)
                        checked += 1
    assert len(scripts) > 10 and checked > 50
