"""INT8 Q/DQ graphs: calibration on the pipeline's own rows, the graph's form, its agreement with fp32, the
calibration record and the refusals it makes possible.

The digits models are exported once per session (fp32 and int8, 32 calibration images x 2 draws at
sigma 0.25, b=2) into ``shared-exports/digits-int8``; about 40 s on a busy core.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript: pip install 'densepure[onnx]'")

from engine_helpers import Recording  # noqa: E402

from densepure.artifacts import ArtifactKind, ArtifactManifest, manifest_path_for  # noqa: E402
from densepure.artifacts.quantized import CalibrationInfo, calibration_mismatch, calibration_overlap  # noqa: E402
from densepure.certify.tasks import CertifyTask  # noqa: E402
from densepure.cli import main  # noqa: E402
from densepure.diffusion import Mode, SmoothingConfig  # noqa: E402
from densepure.engine.backends import Backends  # noqa: E402
from densepure.engine.backends.select import (  # noqa: E402
    ModelIdentity,
    Pipeline,
    check_calibration_split,
    check_identity,
)
from densepure.engine.engine import Engine, EngineConfig, ImageRequest  # noqa: E402
from densepure.errors import ArtifactError, ConfigError  # noqa: E402
from densepure.export import export_command  # noqa: E402
from densepure.export.calibration import CalibrationPlan, pipeline_activations  # noqa: E402
from densepure.export.int8 import QuantizeSettings, quantize_graph, quantizer_version, require_quantizer  # noqa: E402
from densepure.export.onnx_verify import run_onnxruntime_cpu  # noqa: E402
from densepure.models import get_preset  # noqa: E402
from densepure.models.digits import load_digits_calibration_split, load_digits_test_split, load_digits_unet  # noqa: E402
from densepure.precision import Precision  # noqa: E402

SIGMA = 0.25


def small_plan(seed: int = 0) -> CalibrationPlan:
    images, _, rows = load_digits_calibration_split()
    pick = list(range(0, 256, 8))
    return CalibrationPlan(images[pick], sigma=SIGMA, steps=2, draws=2, seed=seed, data="digits calibration split",
                           data_sha256="a" * 64, indices=tuple(int(rows[i]) for i in pick))


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "shared-exports" / "digits-int8"
    report = export_command("digits", None, out, precisions=(Precision.FP32, Precision.INT8), classifier="digits",
                            calibration=small_plan())
    return out, {(r.manifest.kind, r.manifest.precision): r for r in report.results}


def digits_pipeline(mode: str = "densepure", sigma: float = SIGMA, steps: int = 2) -> Pipeline:
    dense = mode == "densepure"
    return Pipeline.of(SmoothingConfig(Mode(mode), sigma, 1, steps if dense else 1,
                                       schedule=None if mode == "gaussian" else get_preset("digits").schedule))


def test_calibration_rows_are_the_pipelines_and_reproducible():
    plan, unet = small_plan(), load_digits_unet()
    schedule = get_preset("digits").schedule
    a, b = pipeline_activations(plan, unet, schedule), pipeline_activations(plan, unet, schedule)
    assert torch.equal(a.unet_x, b.unet_x) and torch.equal(a.classifier_x, b.classifier_x)
    grid = SmoothingConfig(Mode.DENSEPURE, SIGMA, 1, 2, schedule=schedule).grid()
    assert a.timesteps == tuple(float(t) for t in grid.model_times)
    rows = plan.images.shape[0] * plan.draws
    assert a.unet_x.shape[0] == 2 * rows and a.classifier_x.shape[0] == rows
    assert sorted(set(a.unet_t.tolist())) == sorted(np.float32(t).item() for t in a.timesteps)
    # the first step's inputs are noisy starts: sqrt(a)(2(x + delta) - 1) has std ~ 2 sigma sqrt(a) about the image
    scale = (1 + 4 * SIGMA ** 2) ** -0.5
    starts = a.unet_x[:rows] / scale - (2 * plan.images.repeat_interleave(plan.draws, 0) - 1)
    assert abs(float(starts.std()) - 2 * SIGMA) < 0.02
    assert float(a.classifier_x.abs().max()) <= 1.0  # denoised images, clipped x0_hat
    other = pipeline_activations(plan, unet, schedule, seed_offset=1)
    assert not torch.equal(other.unet_x, a.unet_x)


def test_quantizing_twice_gives_the_same_bytes(int8_export):
    _, results = int8_export
    model = onnx.load(str(results[ArtifactKind.CLASSIFIER, Precision.FP32].onnx_path))
    rows = pipeline_activations(small_plan(), load_digits_unet(), get_preset("digits").schedule).classifier_feeds()
    first, _ = quantize_graph(model, ArtifactKind.CLASSIFIER, rows, QuantizeSettings())
    again, _ = quantize_graph(model, ArtifactKind.CLASSIFIER, rows, QuantizeSettings())
    assert first.SerializeToString() == again.SerializeToString()
    shifted, _ = quantize_graph(model, ArtifactKind.CLASSIFIER, [{"x": f["x"] * 0.5} for f in rows],
                                QuantizeSettings())
    assert shifted.SerializeToString() != first.SerializeToString()  # the scales do follow the rows


def _initializer(model, name):
    return next((i for i in model.graph.initializer if i.name == name), None)


def test_int8_graph_is_checked_symmetric_and_runs_on_onnxruntime(int8_export):
    _, results = int8_export
    for kind in ArtifactKind:
        r = results[kind, Precision.INT8]
        onnx.checker.check_model(str(r.onnx_path))
        model = onnx.load(str(r.onnx_path))
        quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert quantizers and r.count("DequantizeLinear") >= len(quantizers)
        for node in quantizers:  # TensorRT takes symmetric int8 only: every zero point 0, type int8
            zero = onnx.numpy_helper.to_array(_initializer(model, node.input[2]))
            assert zero.dtype == np.int8 and not zero.any(), node.name
        producers = {o: n for n in model.graph.node for o in n.output}
        head = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")][-1]
        weight = head.input[1]
        assert _initializer(model, weight) is not None and weight not in producers, "the output head stays float"
        assert r.numerics.max_rel_error < 0.1
    unet = results[ArtifactKind.UNET, Precision.INT8]
    model = onnx.load(str(unet.onnx_path))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:  # the timestep embedding's Gemms read float weights
        if node.op_type == "Gemm":
            assert node.input[1] not in producers or producers[node.input[1]].op_type != "DequantizeLinear"
    x = torch.randn(3, 1, 8, 8).numpy()
    eps, v = run_onnxruntime_cpu(unet.onnx_path, {"x": x, "t": np.full(3, 290.0, np.float32)}, quantized=True)
    assert eps.shape == v.shape == (3, 1, 8, 8) and np.isfinite(eps).all()


def test_manifest_records_the_calibration(int8_export):
    _, results = int8_export
    manifest = ArtifactManifest.read(manifest_path_for(results[ArtifactKind.UNET, Precision.INT8].onnx_path))
    c = manifest.calibration
    assert manifest.precision is Precision.INT8 and c is not None
    assert (c.sigma, c.mode, c.steps, c.images, c.draws, c.seed) == (SIGMA, "densepure", 2, 32, 2, 0)
    assert c.timesteps == digits_pipeline().timesteps and c.unet_rows == 2 * 64 and c.classifier_rows == 64
    assert c.library == "onnxruntime.quantization" and c.library_version == quantizer_version()
    assert c.method.startswith("percentile") and "output-head" in c.kept_float and len(c.indices) == 32
    assert ArtifactManifest.from_json(manifest.to_json()) == manifest
    fp32 = results[ArtifactKind.UNET, Precision.FP32].manifest
    assert fp32.calibration is None and "calibration" not in json.loads(fp32.to_json())
    raw = json.loads(manifest.to_json())
    del raw["calibration"]
    with pytest.raises(ArtifactError, match="int8 artifacts need a calibration record"):
        ArtifactManifest.from_json(json.dumps(raw))


def draw_all(denoiser, classifier, digits) -> None:
    """CERTIFY's draws (N0=20, N=100) of every image, DensePure K=3 b=2, early exit off (the same chains run
    whatever the labels, in the same order)."""
    smoothing = SmoothingConfig(Mode.DENSEPURE, SIGMA, 3, 2, schedule=get_preset("digits").schedule)
    engine = Engine(smoothing, Backends(denoiser, classifier), (1, 8, 8), "cpu",
                    EngineConfig(unet_rows=256, classifier_rows=256, draw_capacity=512, image_slots=4,
                                 early_exit=False))
    task = CertifyTask(20, 100, 0.001)
    list(engine.run(ImageRequest(i, x, task.policy(10, SIGMA), 0, noise_id=i) for i, x in digits.items()))


def test_int8_agrees_with_fp32_on_the_digits_pipeline(int8_export):
    """Chain labels of the int8 graphs against torch fp32 (early exit off: the same chains are labelled).
    Measured: 99.4% of 1,440 chain labels (9 differ; K=3, 4 images, 120 draws each, seed 0); floor 97%."""
    from densepure.engine.backends import TorchClassifier, TorchDenoiser
    from densepure.engine.backends.onnxruntime_backend import OnnxRuntimeClassifier, OnnxRuntimeDenoiser, OrtProvider
    from densepure.models.sources import ClassifierSpec, load_classifier

    _, results = int8_export
    images, _ = load_digits_test_split()
    digits = {i: images[i] for i in (0, 120, 225, 390)}
    clf = load_classifier(ClassifierSpec.parse("digits"), torch.device("cpu"))
    cpu = [OrtProvider.CPU]
    reference = Recording(TorchClassifier(clf, 10, (1, 8, 8)))
    int8 = Recording(OnnxRuntimeClassifier(results[ArtifactKind.CLASSIFIER, Precision.INT8].onnx_path, providers=cpu,
                                           intra_op_threads=1))
    draw_all(TorchDenoiser(load_digits_unet()), reference, digits)
    draw_all(OnnxRuntimeDenoiser(results[ArtifactKind.UNET, Precision.INT8].onnx_path, providers=cpu,
                                 intra_op_threads=1), int8, digits)
    want, got = np.concatenate(reference.labels), np.concatenate(int8.labels)
    assert len(want) == len(got) > 1000
    agreement = float(np.mean(want == got))
    assert agreement >= 0.97, f"int8 chain labels agree with torch fp32 on {agreement:.2%} only"


def test_a_job_with_another_sigma_or_grid_is_refused(int8_export):
    _, results = int8_export
    unet = results[ArtifactKind.UNET, Precision.INT8]
    clf = results[ArtifactKind.CLASSIFIER, Precision.INT8]

    def check(result, pipeline):
        identity = ModelIdentity("digits", (1, 8, 8), 10, None, "digits", pipeline)
        check_identity(result.onnx_path, result.manifest, identity)

    check(unet, digits_pipeline())
    check(unet, digits_pipeline("onestep"))  # round(t*) is the grid's first step
    with pytest.raises(ArtifactError, match=r"calibrated at sigma=0.25 .*this job runs sigma=0.5"):
        check(unet, digits_pipeline(sigma=0.5))
    with pytest.raises(ArtifactError, match=r"UNet timesteps \[290, 145\].*runs \[290, 217, 145, 72\]"):
        check(unet, digits_pipeline(steps=4))
    with pytest.raises(ArtifactError, match="calibrated on denoised images"):
        check(clf, digits_pipeline("gaussian"))
    with pytest.raises(ArtifactError, match="sigma=0.5"):
        check(clf, digits_pipeline(sigma=0.5))


def test_certified_images_must_not_be_calibration_images(int8_export, tmp_path):
    _, results = int8_export
    manifest = results[ArtifactKind.UNET, Precision.INT8].manifest
    c = manifest.calibration
    assert calibration_overlap(c, "b" * 64, c.indices) == []  # other data: nothing shared
    assert calibration_overlap(c, c.data_sha256, [c.indices[3], -1]) == [c.indices[3]]
    manifest.write(tmp_path / "unet-int8.onnx.manifest.json")
    check_calibration_split(tmp_path, Precision.INT8, "b" * 64, c.indices)
    with pytest.raises(ConfigError, match="calibrated on 1 of the images this job certifies"):
        check_calibration_split(tmp_path, Precision.INT8, c.data_sha256, [c.indices[5]])


def test_calibration_record_checks():
    info = CalibrationInfo(0.25, "densepure", 2, "auto", (290.0, 145.0), 4, 2, 16, 8, "d", None, (), "minmax",
                           "onnxruntime", (), 0, "onnxruntime.quantization", "1.32.0")
    assert calibration_mismatch(info, sigma=0.25, mode="densepure", timesteps=(290.0, 145.0)) is None
    assert "sigma=0.5" in calibration_mismatch(info, sigma=0.5, mode="densepure", timesteps=(290.0, 145.0))
    with pytest.raises(ArtifactError, match="timesteps"):
        CalibrationInfo(0.25, "gaussian", 0, "auto", (290.0,), 4, 2, 16, 8, "d", None, (), "m", "p", (), 0, "l", "v")
    with pytest.raises(ArtifactError, match="sigma"):
        CalibrationInfo(-1.0, "densepure", 2, "auto", (1.0,), 4, 2, 16, 8, "d", None, (), "m", "p", (), 0, "l", "v")


def test_resume_refuses_to_mix_precisions(int8_export, tmp_path, capsys):
    out, _ = int8_export
    common = ["certify", "--backend", "onnxruntime", "--artifacts", str(out), "--device", "cpu", "--max", "1",
              "--n0", "10", "--n", "20", "--seed", "1", "--output", str(tmp_path / "run.tsv")]
    assert main([*common, "--precision", "int8"]) == 0
    capsys.readouterr()
    assert main([*common, "--precision", "fp32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision: 'int8' -> 'fp32'" in err and "holds another run" in err
    record = json.loads((tmp_path / "run.tsv.jsonl").read_text().splitlines()[0])
    assert "int8" in json.dumps(record)  # the sidecar says which precision made the counts


def test_int8_is_not_a_torch_precision(capsys):
    assert main(["certify", "--precision", "int8", "--max", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--backend onnxruntime" in err
    with pytest.raises(ConfigError, match="not a torch compute precision"):
        _ = Precision.INT8.dtype
    assert Precision.INT8.exportable and Precision.INT8.quantized and not Precision.INT8.torch_compute
    assert Precision.parse_list("fp32,int8") == (Precision.FP32, Precision.INT8)


def test_missing_quantizer_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # `import` of it raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[int8\]'"):
        require_quantizer()
    assert main(["export", "--precision", "int8", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[int8]'" in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_int8_export_needs_a_calibration_and_other_presets_their_data(tmp_path, capsys):
    with pytest.raises(ConfigError, match="calibration"):
        export_command("digits", None, tmp_path, precisions=(Precision.INT8,), classifier="digits")
    assert main(["export", "--preset", "cifar10", "--no-classifier", "--precision", "int8", "--out",
                 str(tmp_path / "c")]) == 2
    assert "--calibration-data" in capsys.readouterr().err
    assert main(["export", "--precision", "fp32", "--sigma", "0.5", "--out", str(tmp_path / "f")]) == 2
    assert "add int8 to --precision" in capsys.readouterr().err
