"""``densepure bench throughput``: the official baseline runs exactly the model calls of the published protocol
(benchmarks/evals.py: UNet = K*b*(N0+N), classifier = K*(N0+N) per image), both sides are reported with
their ratio, and Ctrl-C leaves a partial report. Timings are measured, never asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densepure.bench.official import OfficialLoop, majority
from densepure.cli import main

K, B, N0, N, IMAGES, BATCH = 3, 2, 10, 30, 2, 16


def _metrics(path) -> dict[str, float]:
    report = json.loads((path / "report.json").read_text())
    return {name: m["value"] for name, m in report["metrics"].items()}, report


def test_the_official_baseline_runs_the_published_model_calls(tmp_path):
    out = tmp_path / "r"
    code = main(["bench", "throughput", "--max", str(IMAGES), "--n0", str(N0), "--n", str(N), "--K", str(K),
                 "--device", "cpu", "--baseline", "official", "--official-batch", str(BATCH), "--seed", "3",
                 "--output", str(out)])
    assert code == 0
    m, report = _metrics(out)
    draws = IMAGES * (N0 + N)
    assert m["official.unet_rows"] == K * B * draws and m["official.classifier_rows"] == K * draws  # evals.py's
    assert m["official.draws"] == m["engine.draws"] == draws
    batches = IMAGES * K * (-(-N0 // BATCH) + -(-N // BATCH))  # per pass: the n0 draws, then the n draws
    assert m["official.unet_rows_per_call"] == pytest.approx(K * B * draws / (B * batches))
    assert m["official.classifier_rows_per_call"] == pytest.approx(K * draws / batches)
    # the engine: one shared first step per draw, then at least K//2+1 and at most K chains of b-1 steps
    assert 1 + (K // 2 + 1) * (B - 1) <= m["engine.unet_rows_per_draw"] <= 1 + K * (B - 1)
    assert (K // 2 + 1) <= m["engine.classifier_rows_per_draw"] <= K
    assert m["ratio.unet_rows_per_draw"] == pytest.approx(m["engine.unet_rows_per_draw"] / (K * B))
    assert m["ratio.draws_per_s"] == pytest.approx(m["engine.draws_per_s"] / m["official.draws_per_s"])
    for side in ("engine", "official"):
        assert m[f"{side}.images_per_hour"] == pytest.approx(3600 * IMAGES / m[f"{side}.seconds"])
        assert m[f"{side}.model_tflops"] > 0
    assert m["process.peak_memory_bytes"] > 0 and m["model.unet_gflop_per_row"] > 0
    for side in ("engine", "official"):  # on the CPU: against the measured fp32 matmul rate only
        assert m[f"{side}.mfu_of_matmul"] == pytest.approx(m[f"{side}.model_tflops"] / m["device.matmul_tflops.fp32"])
        assert m[f"{side}.images_per_hour_at_n100k"] == pytest.approx(3600 * m[f"{side}.draws_per_s"] / 100_100)
    assert m["engine.capture_s"] >= 0  # activating the engine, apart from every timed round
    config = report["configuration"]
    assert report["partial"] is False and config["official_batch_resolved"] == BATCH
    assert config["official_precision"] == "fp32" and config["official_tf32_in_model_calls"] is False
    assert config["tf32_in_model_calls"] is False and config["weights"].startswith("the shipped digits")
    assert config["cuda_graphs_resolved"] is False and config["kernels_resolved"].startswith("torch")
    assert report["configuration"]["num_chains"] == K and report["environment"]["device"]["type"] == "cpu"
    images = report["series"]["images"]
    assert [c["name"] for c in images["columns"]] == ["index", "label", "engine_predict", "engine_radius",
                                                      "official_predict", "official_radius"]
    assert [row[0] for row in images["rows"]] == [0, 22]  # the digits default selection: every 22nd image
    assert all(row[2] is not None and row[4] is not None for row in images["rows"])
    assert (out / "report.md").read_text().count("| official.") >= 10


def test_interrupted_rounds_leave_a_partial_report(tmp_path, monkeypatch):
    real = OfficialLoop.certify
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OfficialLoop, "certify", interrupted)
    out = tmp_path / "r"
    code = main(["bench", "throughput", "--max", "2", "--n0", "10", "--n", "20", "--K", "3", "--device", "cpu",
                 "--baseline", "official", "--output", str(out)])
    assert code == 130
    m, report = _metrics(out)
    assert report["partial"] is True and any("interrupted" in note for note in report["notes"])
    assert m["engine.draws"] == 60 and m["official.draws"] == 30  # the second image never ran on the official side
    assert m["official.unet_rows"] == 3 * 2 * 30


def test_the_official_loop_runs_in_the_precision_asked(tmp_path):
    """--official-precision bf16: the same published model calls, the models in bf16."""
    out = tmp_path / "r"
    assert main(["bench", "throughput", "--max", "1", "--n0", "10", "--n", "10", "--K", "3", "--device", "cpu",
                 "--baseline", "official", "--official-precision", "bf16", "--output", str(out)]) == 0
    m, report = _metrics(out)
    assert m["official.unet_rows"] == 3 * 2 * 20 and "device.matmul_tflops.bf16" in m
    assert any("in bf16" in note for note in report["notes"])


def test_majority_breaks_ties_by_the_earliest_pass():
    labels = np.array([[1, 2, 0, 5], [2, 2, 1, 5], [1, 3, 2, 4], [2, 3, 3, 4]])
    assert majority(labels, 6).tolist() == [1, 2, 0, 5]


@pytest.mark.parametrize("argv, message", [
    (["--baseline", "official", "--radius", "0.25"], "fixed n"),
    (["--baseline", "official", "--mode", "onestep"], "needs --mode densepure"),
    (["--scenario", "offline", "--baseline", "official"], "drop --scenario"),
    (["--random-weights"], "digits"),
])
def test_what_cannot_be_compared_is_refused(argv, message, capsys):
    assert main(["bench", "throughput", "--max", "1", "--n0", "10", "--n", "20", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err
