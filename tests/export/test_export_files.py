"""Issue 18, items 2, 6 and 8: exports that finish on a CPU, say what they do, and never leave a graph a
reader could trust without its manifest.

* fp16 graphs are checked with onnxruntime against the float32 torch model: no torch float16 forward
  runs on the CPU (the ImageNet export never finished because of one), and a model's float32 reference
  runs once for all its precisions;
* each model's start and end is reported (with times), and torch's "torchvision is not installed"
  warnings are gone;
* a graph, its external data and its manifest are written in a staging directory and moved into place
  with the manifest last: an export interrupted at any point leaves the old artifact or none, never a
  manifest describing other bytes; the next export succeeds; files get the umask's mode (onnx writes
  external data 0600).
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript: pip install 'densepure[onnx]'")

from densepure.artifacts import ArtifactKind, ArtifactManifest, exported_artifacts, manifest_path_for  # noqa: E402
from densepure.errors import ArtifactError  # noqa: E402
from densepure.export import CheckStatus, ExportEvent, export_classifier, export_command, onnx_export  # noqa: E402
from densepure.export.onnx_files import export_lock, staging_dir  # noqa: E402
from densepure.export.onnx_verify import TOLERANCES  # noqa: E402
from densepure.models import UNetConfig, UNetModel, save_state_dict  # noqa: E402
from densepure.models.classifiers import Classifier, InputRange, Preprocess, ResizeMode  # noqa: E402
from densepure.models.presets import Dataset, DiffusionPreset  # noqa: E402
from densepure.precision import Precision  # noqa: E402

MICRO = {"image_size": 8, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1, "attention_resolutions": "4",
         "channel_mult": "1,2", "num_heads": 2, "learn_sigma": True, "diffusion_steps": 1000,
         "noise_schedule": "cosine", "use_scale_shift_norm": True}


def small_classifier(bias: float = 0.0) -> Classifier:
    """A 7.5 KiB linear classifier on 3x4x4 images (exports in a few seconds)."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 40), nn.ReLU(), nn.Linear(40, 3))
    with torch.no_grad():
        net[-1].bias.add_(bias)
    return Classifier(net, Preprocess(InputRange.ZERO_ONE, None, ResizeMode.NEAREST, False, (0.5,) * 3, (0.2,) * 3),
                      num_classes=3)


def is_real(x: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(x)


@pytest.mark.slow  # one UNet trace: ~30 s of CPU
def test_fp16_unet_is_checked_by_onnxruntime_against_fp32_and_progress_is_reported(tmp_path, monkeypatch):
    """export_command on a micro preset: the UNet at fp16 and a classifier at fp32 and fp16. No real torch
    forward runs in float16; the float32 references run once per model; one event per model start and end."""
    torch.manual_seed(0)
    unet = UNetModel(UNetConfig.from_flags(MICRO)).eval()
    with torch.no_grad():  # the output convs are zero-initialized (ALGORITHM §10): perturb everything
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ckpt = tmp_path / "micro.pt"
    save_state_dict(ckpt, unet.state_dict())
    preset = DiffusionPreset("micro", MICRO, Dataset.DIGITS, str(ckpt))
    forwards = []  # (model, dtype of its weights) of every forward on real tensors
    unet_forward, classifier_forward = UNetModel.eps_and_var, Classifier.forward

    def spy_unet(self, x, t):
        if is_real(x):
            forwards.append(("unet", self.input_blocks[0][0].weight.dtype))
        return unet_forward(self, x, t)

    def spy_classifier(self, x):
        if is_real(x):
            forwards.append(("classifier", self.compute_dtype))
        return classifier_forward(self, x)

    monkeypatch.setattr(UNetModel, "eps_and_var", spy_unet)
    monkeypatch.setattr(Classifier, "forward", spy_classifier)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU(), nn.Flatten(), nn.Linear(256, 10))
    classifier = Classifier(net, Preprocess(InputRange.ZERO_ONE), num_classes=10)
    events: list[ExportEvent] = []
    out = tmp_path / "art"
    report = export_command(preset, ckpt, out, precisions=(Precision.FP16,), classifier=classifier, unet=True,
                            progress=events.append)
    assert [(e.kind, e.precision, e.result is None) for e in events] == [
        (ArtifactKind.UNET, Precision.FP16, True), (ArtifactKind.UNET, Precision.FP16, False),
        (ArtifactKind.CLASSIFIER, Precision.FP16, True), (ArtifactKind.CLASSIFIER, Precision.FP16, False)]
    assert events[0].line().startswith("[1/2] unet fp16: exporting ") and str(out) in events[0].line()
    done = events[1].line()
    assert done.startswith("[1/2] unet fp16: exported in ") and "(check " in done and "vs torch fp32" in done
    assert ("unet", torch.float16) not in forwards and ("classifier", torch.float16) not in forwards
    assert forwards.count(("unet", torch.float32)) == 1 and forwards.count(("classifier", torch.float32)) == 1
    unet_result = report.results[0]
    n = unet_result.numerics
    assert n.status is CheckStatus.PASSED and n.tolerance == TOLERANCES[Precision.FP16]
    assert 0 < n.max_rel_error == n.max_rel_error_vs_fp32 < 3e-2  # against float32, not a float16 twin
    assert 0 < unet_result.check_seconds < unet_result.export_seconds
    assert all(r.manifest.external_data == () for r in report.results)

    forwards.clear()
    events.clear()
    both = export_command(preset, ckpt, out, precisions=(Precision.FP32, Precision.FP16), classifier=classifier,
                          unet=False, progress=events.append)
    assert [r.reused for r in both.results] == [False, True]
    assert forwards.count(("classifier", torch.float32)) == 1  # one reference for both precisions
    assert events[-1].line().startswith("[2/2] classifier fp16: up to date, checked again in ")


@pytest.mark.slow
def test_an_interrupted_export_leaves_the_old_artifact_or_none(tmp_path, monkeypatch):
    path = tmp_path / "classifier-fp32.onnx"
    first = export_classifier(small_classifier(), (3, 4, 4), path)
    old = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # 1. during the checks: the new graph is only in the staging directory, the old artifact is untouched
    monkeypatch.setattr(onnx_export, "numeric_check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_classifier(small_classifier(bias=1.0), (3, 4, 4), path)
    assert path.read_bytes() == old and ArtifactManifest.read(manifest_path_for(path)) == first.manifest
    assert not staging_dir(path).exists()
    assert exported_artifacts(tmp_path) == [(path, first.manifest)]
    monkeypatch.undo()

    # 2. after the graph moved into place, before the manifest: a graph nobody trusts, never a stale manifest
    monkeypatch.setattr(ArtifactManifest, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_classifier(small_classifier(bias=1.0), (3, 4, 4), path)
    monkeypatch.undo()
    assert path.read_bytes() != old and not manifest_path_for(path).exists()
    assert exported_artifacts(tmp_path) == []

    # 3. the next export replaces it and is trusted again
    again = export_classifier(small_classifier(bias=1.0), (3, 4, 4), path)
    assert not again.reused and exported_artifacts(tmp_path) == [(path, again.manifest)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier-fp32.onnx", "classifier-fp32.onnx.manifest.json"]


@pytest.mark.slow
def test_a_failed_check_installs_nothing_and_leftovers_are_cleared(tmp_path, monkeypatch):
    path = tmp_path / "c.onnx"
    first = export_classifier(small_classifier(), (3, 4, 4), path)
    leftover = staging_dir(path)
    leftover.mkdir()
    (leftover / "c.onnx").write_bytes(b"half a graph from a killed export")
    monkeypatch.setitem(TOLERANCES, Precision.FP32, -1.0)  # every comparison fails
    with pytest.raises(ArtifactError, match="disagrees with torch float32.*nothing was installed"):
        export_classifier(small_classifier(bias=2.0), (3, 4, 4), path)
    assert ArtifactManifest.read(manifest_path_for(path)) == first.manifest
    assert first.manifest.onnx_sha256 == onnx_export.onnx_sha256(path)
    assert not leftover.exists()


@pytest.mark.parametrize("umask", [pytest.param(0o022, marks=pytest.mark.slow), 0o027], ids=["umask022", "umask027"])
def test_external_data_gets_the_mode_of_every_other_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        result = export_classifier(small_classifier(), (3, 4, 4), tmp_path / "big.onnx", external_data_threshold=0)
    finally:
        os.umask(previous)
    data = tmp_path / "big.onnx.data"
    assert result.manifest.external_data == ("big.onnx.data",) and data.stat().st_size > 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["big.onnx", "big.onnx.data", "big.onnx.manifest.json"], 0o666 & ~umask)
    # the weights moved beside the graph with it: onnxruntime and the checker read them there
    assert result.numerics.status is CheckStatus.PASSED and result.numerics.max_rel_error < 1e-4


@pytest.mark.slow
def test_external_data_of_a_replaced_graph_is_removed(tmp_path):
    path = tmp_path / "m.onnx"
    export_classifier(small_classifier(), (3, 4, 4), path, external_data_threshold=0)
    inline = export_classifier(small_classifier(bias=1.0), (3, 4, 4), path)
    assert inline.manifest.external_data == () and not (tmp_path / "m.onnx.data").exists()


def test_one_export_per_directory(tmp_path):
    with export_lock(tmp_path):
        with pytest.raises(ArtifactError, match="another densepure export is writing into"):
            export_classifier(small_classifier(), (3, 4, 4), tmp_path / "c.onnx")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_export_cli_reports_each_model_and_no_torchvision_noise(capfd, tmp_path):
    """`densepure export` of the digits classifier (the UNet is covered above): one line as each model starts
    and ends on stderr, the report on stdout, and not one of torch's 'torchvision is not installed' lines."""
    from densepure.cli import main

    code = main(["export", "--no-unet", "--precision", "fp32,fp16", "--out", str(tmp_path / "a")])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "torchvision" not in err + out
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["[1/2] classifier fp32"] * 2 + ["[2/2] classifier fp16"] * 2
    assert "exporting" in lines[0] and "exported in" in lines[1] and "s (check" in lines[1]
    assert out.count("\n") == 2 and "classifier fp32" in out
    manifest = json.loads((tmp_path / "a" / "classifier-fp16.onnx.manifest.json").read_text())
    assert manifest["source"]["preset"] == "digits" and manifest["source"]["resize"] is None  # digits: no resize
