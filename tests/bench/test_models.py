"""``densepure bench models`` and the models benchmarks run: each model alone at the engine's rows, FLOPs counted
where they are (and analytically for the random ViT), MFU against the measured matmul rate; the random
weights are perturbed everywhere and the random ViT is sure of class 0. Timings are measured, never asserted."""

from __future__ import annotations

import json

import pytest
import torch

from densepure.bench.models import CLASS0_LEAD, RandomViT, random_unet, vit_flops
from densepure.cli import main
from densepure.models import get_preset


def test_models_reports_each_model_its_flops_and_mfu(tmp_path):
    out = tmp_path / "r"
    assert main(["bench", "models", "--device", "cpu", "--batch-size", "16", "--precision", "bf16",
                 "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    m = {k: v["value"] for k, v in report["metrics"].items()}
    assert report["subcommand"] == "models" and report["partial"] is False
    assert report["configuration"]["engine_rows_per_call"] == 16 and report["configuration"]["precision"] == "bf16"
    assert report["configuration"]["weights"].startswith("the shipped digits")
    assert report["configuration"]["cuda_graphs_resolved"] is False  # the CPU: one ungraphed variant
    for model in ("unet", "classifier"):
        rate, call = m[f"{model}.ungraphed.rows_per_s"], m[f"{model}.ungraphed.seconds_per_call"]
        assert rate == pytest.approx(16 / call)
        assert m[f"{model}.ungraphed.model_tflops"] == pytest.approx(rate * m[f"model.{model}_gflop_per_row"] / 1e3)
        assert m[f"{model}.ungraphed.mfu_of_matmul"] == pytest.approx(
            m[f"{model}.ungraphed.model_tflops"] / m["device.matmul_tflops.bf16"])
        assert f"{model}.graphed.rows_per_s" not in m and f"{model}.ungraphed.mfu" not in m  # no data sheet off CUDA
    assert m["model.unet_gflop_per_row"] == pytest.approx(0.0461, rel=0.01)
    assert 0 < m["noise.share_of_unet_call"]


def test_models_refuses_exported_backends(tmp_path, capsys):
    from export_helpers import stand_in_artifacts

    stand_in_artifacts(tmp_path / "a")
    assert main(["bench", "models", "--device", "cpu", "--backend", "onnxruntime", "--artifacts",
                 str(tmp_path / "a")]) == 2
    assert "bench models times torch modules" in capsys.readouterr().err


def test_the_random_unet_is_perturbed_everywhere():
    """Zero-initialised output convolutions would make eps exactly 0: every parameter is perturbed."""
    unet = random_unet(get_preset("digits").unet_config, torch.device("cpu"))
    assert all(bool(p.abs().sum() > 0) for p in unet.parameters())
    with torch.inference_mode():
        eps, _ = unet.eps_and_var(torch.randn(2, 1, 8, 8), torch.full((2,), 300.0))
    assert float(eps.std()) > 0.01
    again = random_unet(get_preset("digits").unet_config, torch.device("cpu"))  # seeded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), again.parameters(), strict=True))


def test_the_random_vit_leads_with_class_0_and_counts_its_flops():
    net = RandomViT(32, 16, 64, 2, 4, 10).eval()
    net.lead[0] = CLASS0_LEAD
    with torch.inference_mode():
        labels = net(torch.randn(8, 3, 32, 32)).argmax(1)
    assert labels.tolist() == [0] * 8
    assert vit_flops(224, 16, 768, 12, 10) / 1e9 == pytest.approx(35.13, abs=0.01)  # ViT-B/16 at 224
    from densepure.bench.common import classifier_flops

    counted, analytic = classifier_flops(net, torch.rand(1, 3, 32, 32))
    assert analytic == net.flops() and 0.9 * analytic < counted <= analytic  # fast path off: projections counted
