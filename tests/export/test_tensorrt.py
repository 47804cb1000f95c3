"""TensorRT: build settings, profiles, bucket planning and padding (pure, run anywhere); engine build and
execution (``tensorrt`` + ``gpu`` markers, skipped here with a reason)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from densepure.artifacts import (
    ArtifactFormat,
    ArtifactKind,
    ArtifactManifest,
    EngineCache,
    EngineInfo,
    MachineInfo,
    SourceInfo,
    TensorSpec,
    TypingMode,
    cache_key,
)
from densepure.artifacts.buckets import bucket_profiles, normalize_buckets, pad_into, pick_bucket, plan_chunks
from densepure.engine.backends.tensorrt_backend import GraphMode, TensorRTClassifier, TensorRTDenoiser
from densepure.errors import ArtifactError, BackendError, ConfigError
from densepure.export.tensorrt_build import BuildSettings, check_typing_mode
from densepure.precision import Precision

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
bucket_sets = st.lists(st.integers(1, 300), min_size=1, max_size=6).map(lambda b: tuple(sorted(set(b))))


def test_settings_validation():
    assert BuildSettings(buckets=[32, 1, 8, 8]).buckets == (1, 8, 32) == normalize_buckets((8, 32, 1))
    for bad in ([], [0, 4], ["a"]):
        with pytest.raises(ConfigError, match="bucket"):
            BuildSettings(buckets=bad)
    with pytest.raises(ConfigError, match="workspace"):
        BuildSettings(workspace_bytes=1000)
    with pytest.raises(ConfigError, match="0..5"):
        BuildSettings(optimization_level=6)
    assert BuildSettings(typing="weak-fp16").typing is TypingMode.WEAK_FP16


def test_the_cache_key_covers_every_build_setting():
    base = BuildSettings(buckets=(1, 8, 32))
    assert BuildSettings(buckets=(32, 8, 1, 8)).key_fields() == base.key_fields()  # the same profiles
    changed = {"buckets": (1, 8, 64), "workspace_bytes": 1 << 30, "typing": TypingMode.WEAK_FP16,
               "optimization_level": 5}
    assert set(changed) == {f.name for f in dataclasses.fields(BuildSettings)}  # a new setting is listed here
    keys = {"base": base.key_fields()}
    for name, value in changed.items():
        keys[name] = dataclasses.replace(base, **{name: value}).key_fields()
        assert keys[name] != keys["base"], name
    machine = MachineInfo("10.13.3", "NVIDIA H100 80GB HBM3", (9, 0), "Linux-x86_64")
    assert len({cache_key("ab" * 32, k, machine) for k in keys.values()}) == len(keys)  # so do the keys
    assert base.key_fields()["tf32"] is False  # engines built before TF32 was cleared are not reused


@given(bucket_sets)
def test_profiles_partition_the_batch_range(buckets):
    profiles = bucket_profiles(buckets)
    assert [p.max for p in profiles] == list(buckets) and all(p.opt == p.max for p in profiles)
    for n in range(1, buckets[-1] + 1):  # every batch size belongs to exactly one profile
        assert sum(p.min <= n <= p.max for p in profiles) == 1


@given(bucket_sets, st.integers(1, 2000))
def test_chunks_cover_rows_in_buckets(buckets, rows):
    chunks = plan_chunks(rows, buckets)
    assert chunks[0].start == 0 and chunks[-1].stop == rows
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert all(c.bucket in buckets and 1 <= c.rows <= c.bucket for c in chunks)
    assert all(c.rows == buckets[-1] for c in chunks[:-1])  # only the last chunk is padded
    last = chunks[-1]
    assert last.bucket == pick_bucket(buckets, last.rows)
    assert all(b < last.rows for b in buckets if b < last.bucket)  # no smaller bucket would hold it


def test_choose_bucket_and_pad():
    assert pick_bucket((1, 8, 32), 1) == 1 and pick_bucket((1, 8, 32), 9) == 32
    with pytest.raises(BackendError, match="exceed"):
        pick_bucket((1, 8, 32), 33)
    with pytest.raises(BackendError, match="at least one row"):
        plan_chunks(0, (1, 8))
    x = torch.arange(6.0).reshape(3, 2)
    padded = pad_into(torch.full((8, 2), float("nan")), x)
    assert padded.shape == (8, 2) and torch.equal(padded[:3], x)
    assert torch.equal(padded[3:], x[:1].expand(5, 2))  # padding rows are copies of row 0, as in every backend
    with pytest.raises(BackendError, match="do not fit"):
        pad_into(torch.zeros(2, 2), x)


def test_typing_mode_checks():
    onnx32 = _onnx_manifest(Precision.FP32)
    trt10 = MachineInfo("10.3.0", "Orin", (8, 7), "Linux-aarch64")
    trt11 = dataclasses.replace(trt10, trt_version="11.4.1")
    weak = BuildSettings(typing=TypingMode.WEAK_FP16)
    check_typing_mode(weak, trt10, onnx32)  # JetPack 6: allowed
    check_typing_mode(BuildSettings(), trt11, onnx32)
    with pytest.raises(ConfigError, match="no precision flags"):
        check_typing_mode(weak, trt11, onnx32)
    with pytest.raises(ConfigError, match="fp32 graphs"):
        check_typing_mode(weak, trt10, _onnx_manifest(Precision.FP16))


def _onnx_manifest(precision: Precision, kind: ArtifactKind = ArtifactKind.UNET) -> ArtifactManifest:
    image = ("batch", 3, 32, 32)
    if kind is ArtifactKind.UNET:
        io = ((TensorSpec("x", "float32", image), TensorSpec("t", "float32", ("batch",))),
              (TensorSpec("eps", "float32", image), TensorSpec("v", "float32", image)))
    else:
        io = ((TensorSpec("x", "float32", image),), (TensorSpec("logits", "float32", ("batch", 10)),))
    return ArtifactManifest(kind, ArtifactFormat.ONNX, precision, 21, hashlib.sha256(b"g").hexdigest(), *io,
                            SourceInfo("cifar10"), f"{kind.value}.onnx")


def _fake_engine(tmp_path, kind: ArtifactKind):
    machine = MachineInfo("10.13.3", "NVIDIA H100 80GB HBM3", (9, 0), "Linux-x86_64")
    settings = BuildSettings(buckets=(1, 8))
    key = cache_key(hashlib.sha256(b"g").hexdigest(), settings.key_fields(), machine)
    info = EngineInfo(machine, settings.profiles, None, TypingMode.STRONG, 3, hashlib.sha256(b"plan").hexdigest(), key)
    manifest = dataclasses.replace(_onnx_manifest(Precision.FP16, kind), format=ArtifactFormat.TENSORRT,
                                   file="engine.plan", engine=info)
    return EngineCache(tmp_path).store(key, b"plan", manifest)


def test_backends_read_manifests_without_tensorrt(tmp_path):
    unet, clf = _fake_engine(tmp_path / "u", ArtifactKind.UNET), _fake_engine(tmp_path / "c", ArtifactKind.CLASSIFIER)
    den = TensorRTDenoiser(unet.directory, device="cuda:0")  # construction reads JSON only
    assert (den.channels, den.image_size, den.mode) == (3, 32, GraphMode.CUDA_GRAPHS)
    assert den.manifest.engine.buckets == (1, 8) and den.name == "tensorrt"
    assert TensorRTClassifier(clf.manifest_path, device="cuda", mode=GraphMode.EAGER).num_classes == 10
    with pytest.raises(ArtifactError, match="expected a unet TensorRT engine"):
        TensorRTDenoiser(clf.engine_path)
    with pytest.raises(BackendError, match="CUDA devices"):
        TensorRTDenoiser(unet.directory, device="cpu")
    with pytest.raises(ArtifactError, match="manifest not found"):
        TensorRTClassifier(tmp_path / "nowhere")


def test_modules_import_without_tensorrt():
    assert "tensorrt" not in sys.modules or HAS_TRT
    if not HAS_TRT:
        from densepure.export.tensorrt_build import import_tensorrt, machine_info

        with pytest.raises(BackendError, match=r"pip install -e '\.\[tensorrt\]'"):
            import_tensorrt()
        with pytest.raises(BackendError, match="not installed"):
            machine_info()


def _needs_tensorrt_gpu() -> None:
    pytest.importorskip("tensorrt", reason="needs the TensorRT Python package (builder libraries)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_classifier_engine_matches_onnxruntime(tmp_path):
    _needs_tensorrt_gpu()
    from densepure.engine.backends.onnxruntime_backend import OnnxRuntimeClassifier
    from densepure.export import build_engine, export_classifier
    from densepure.models.classifiers import Classifier, InputRange, Preprocess, ResizeMode

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    clf = Classifier(net, Preprocess(InputRange.ZERO_ONE, 24, ResizeMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3))
    exported = export_classifier(clf, (3, 16, 16), tmp_path / "clf.onnx", Precision.FP16)
    cache = EngineCache(tmp_path / "cache")
    settings = BuildSettings(buckets=(1, 4), workspace_bytes=1 << 28)
    built = build_engine(exported.onnx_path, cache, settings)
    assert not built.cache_hit and build_engine(exported.onnx_path, cache, settings).cache_hit
    x = torch.rand(7, 3, 16, 16) * 2 - 1  # 7 rows: chunks of 4 and 3 (padded to 4)
    want = OnnxRuntimeClassifier(exported.onnx_path).logits(x)
    for mode in GraphMode:
        with TensorRTClassifier(built.entry.directory, device="cuda", mode=mode) as engine:
            got = engine.logits(x.cuda()).cpu()
        assert _rel(got, want) < 3e-2, mode


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_unet_engine_matches_onnxruntime(tmp_path):
    _needs_tensorrt_gpu()
    from densepure.engine.backends.onnxruntime_backend import OnnxRuntimeDenoiser
    from densepure.export import build_engine, export_unet
    from densepure.models import UNetConfig, UNetModel

    cfg = UNetConfig(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_heads=2)
    torch.manual_seed(0)
    model = UNetModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    exported = export_unet(model, tmp_path / "unet-fp16.onnx", Precision.FP16)
    built = build_engine(exported.onnx_path, EngineCache(tmp_path / "cache"), BuildSettings(buckets=(2, 8)))
    x, t = torch.randn(11, 1, 8, 8), torch.rand(11) * 1000  # chunks 8 + 3 (padded to 8)
    want = OnnxRuntimeDenoiser(exported.onnx_path).eps_and_var(x, t)
    for mode in GraphMode:
        with TensorRTDenoiser(built.entry.directory, device="cuda", mode=mode) as engine:
            got = engine.eps_and_var(x.cuda(), t.cuda())
            again = engine.eps_and_var(x[:1].cuda(), t[:1].cuda())  # bucket 2, one padding row
        assert all(_rel(g.cpu(), w) < 3e-2 for g, w in zip(got, want, strict=True)), mode
        assert _rel(again[0].cpu(), want[0][:1]) < 3e-2


def test_int8_graphs_build_strongly_typed_only():
    """Q/DQ graphs carry their own types: TensorRT builds them strongly typed, with no precision flag."""
    from densepure.artifacts import CalibrationInfo

    info = CalibrationInfo(0.25, "densepure", 2, "auto", (573.4, 286.7), 4, 2, 16, 8, "d", None, (), "minmax",
                           "onnxruntime", (), 0, "onnxruntime.quantization", "1.32.0")
    int8 = dataclasses.replace(_onnx_manifest(Precision.FP32), precision=Precision.INT8, calibration=info)
    trt10 = MachineInfo("10.3.0", "Orin", (8, 7), "Linux-aarch64")
    check_typing_mode(BuildSettings(), trt10, int8)
    with pytest.raises(ConfigError, match="fp32 graphs"):
        check_typing_mode(BuildSettings(typing=TypingMode.WEAK_FP16), trt10, int8)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_int8_unet_engine_matches_onnxruntime(tmp_path):
    """`densepure build --precision int8`: the Q/DQ graph built strongly typed, against onnxruntime's int8."""
    _needs_tensorrt_gpu()
    from densepure.engine.backends.onnxruntime_backend import OnnxRuntimeDenoiser
    from densepure.export import build_engine, export_command
    from densepure.export.calibration import CalibrationPlan
    from densepure.models import UNetConfig, UNetModel, save_state_dict
    from densepure.models.presets import Dataset, DiffusionPreset

    cfg = UNetConfig(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_heads=2)
    torch.manual_seed(0)
    model = UNetModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ckpt = tmp_path / "micro.pt"
    save_state_dict(ckpt, model.state_dict())
    flags = {"image_size": 8, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
             "attention_resolutions": "4", "num_heads": 2, "learn_sigma": True, "diffusion_steps": 1000,
             "noise_schedule": "cosine"}
    preset = DiffusionPreset("micro-int8", flags, Dataset.DIGITS, str(ckpt))
    plan = CalibrationPlan(torch.rand(16, 1, 8, 8), sigma=0.25, steps=2, draws=2)
    report = export_command(preset, ckpt, tmp_path / "out", precisions=(Precision.INT8,), calibration=plan)
    graph = report.results[0].onnx_path
    built = build_engine(graph, EngineCache(tmp_path / "cache"), BuildSettings(buckets=(2, 8)))
    assert built.entry.manifest.precision is Precision.INT8 and built.entry.manifest.calibration is not None
    x = torch.randn(11, 1, 8, 8)
    t = torch.full((11,), float(report.results[0].manifest.calibration.timesteps[0]))
    want = OnnxRuntimeDenoiser(graph).eps_and_var(x, t)
    with TensorRTDenoiser(built.entry.directory, device="cuda") as engine:
        got = engine.eps_and_var(x.cuda(), t.cuda())
    assert all(_rel(g.cpu(), w) < 5e-2 for g, w in zip(got, want, strict=True))  # both int8; rounding and fusions differ
