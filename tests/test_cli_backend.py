"""``densepure certify/predict --backend onnxruntime|tensorrt --artifacts DIR``: the exported digits graphs
give the torch backend's results line for line, and every artifact problem is one line with exit 2,
before any result is written. Also the choice of a TensorRT engine from the cache (no GPU needed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest

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
    bucket_profiles,
    cache_key,
    manifest_path_for,
    onnx_sha256,
)
from densepure.cli import main
from densepure.engine.backends.select import ModelIdentity, check_identity, choose_engine
from densepure.errors import ArtifactError
from densepure.precision import Precision

COMMON = ("--max", "2", "--n", "50", "--seed", "3", "--device", "cpu")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def exported(digits_export):
    """The session's `densepure export` of the digits models (tests/conftest.py; fp32 and fp16 graphs)."""
    assert digits_export.code == 0, digits_export.stderr
    return digits_export.directory


@pytest.fixture
def fp32_copy(exported, tmp_path):
    """A private copy of the fp32 graphs and their manifests (to edit, or to lack the fp16 graphs)."""
    copy = tmp_path / "artifacts"
    copy.mkdir()
    for name in ("unet-fp32.onnx", "classifier-fp32.onnx"):
        for path in (exported / name, manifest_path_for(exported / name)):
            shutil.copy(path, copy / path.name)
    return copy


def results(path) -> list[list[str]]:
    """The TSV rows without the time column, the last (wall time differs between runs)."""
    return [line.split("\t")[:-1] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_onnxruntime_backend_gives_the_torch_results(capsys, tmp_path, exported, command):
    extra = ("--n0", "10") if command == "certify" else ()
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        outputs[backend] = tmp_path / f"{backend}.tsv"
        flags = ("--backend", backend) + (("--artifacts", str(exported)) if backend != "torch" else ())
        code, out, err = run_cli(capsys, command, *COMMON, *extra, *flags, "--output", str(outputs[backend]))
        assert code == 0, err
        assert f"backend={backend}" in err
    want, got = results(outputs["torch"]), results(outputs["onnxruntime"])
    columns = ["idx", "label", "predict", "radius", "correct"] if command == "certify" else \
        ["idx", "label", "predict", "correct"]  # Cohen's predict.py format: no radius
    assert len(want) == 3 and want[0] == columns
    assert got == want
    if command == "certify":
        assert any(float(row[3]) > 0 for row in want[1:]), "a certified radius must be compared, not only abstentions"
    header = json.loads(outputs["onnxruntime"].with_name("onnxruntime.tsv.jsonl").read_text().splitlines()[0])
    assert header["config"]["backend"] == "onnxruntime" and header["config"]["artifacts"] == str(exported)
    torch_header = json.loads(outputs["torch"].with_name("torch.tsv.jsonl").read_text().splitlines()[0])
    assert torch_header["config"]["backend"] == "torch"


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_help_documents_the_backend_flags(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--backend", "onnxruntime", "tensorrt", "--artifacts", "--cache-dir", "densepure export"):
        assert flag in out


def _edit_manifest(directory, name, **source):
    path = manifest_path_for(directory / name)
    raw = json.loads(path.read_text())
    raw["source"].update(source)
    path.write_text(json.dumps(raw))


def with_export(*case):
    """A case that edits a copy of the session's digits export (``fp32_copy``): slow, as the export is."""
    return pytest.param(*case, marks=pytest.mark.slow)


@pytest.mark.parametrize("setup,argv,message", [
    (None, ("--backend", "onnxruntime"), "needs --artifacts DIR"),
    (None, ("--backend", "onnxruntime", "--artifacts", "/nonexistent/artifacts"), "not found"),
    with_export("copy", ("--backend", "onnxruntime", "--precision", "bf16"), "fp32, fp16 or int8 graphs"),
    with_export("copy", ("--backend", "torch"), "--artifacts is read by the onnxruntime and tensorrt backends only"),
    with_export("copy", ("--backend", "onnxruntime", "--precision", "fp16"), "no fp16 classifier ONNX graph"),
    with_export("preset", ("--backend", "onnxruntime"), "exported for preset 'cifar10'"),
    with_export("checkpoint", ("--backend", "onnxruntime"), "exported from another checkpoint"),
    # the manifests name the classifier: only a --classifier that names another one is refused
    with_export("classifier", ("--backend", "onnxruntime", "--classifier", "digits"),
                "exported from 'hf:/models/vit': drop --classifier"),
    with_export("bytes", ("--backend", "onnxruntime", "--mode", "gaussian"), "does not match its manifest's sha256"),
    with_export("deleted", ("--backend", "onnxruntime"), "cannot read the exported graph"),
    with_export("swapped", ("--backend", "onnxruntime"), "is not the graph its manifest describes"),
    with_export("copy", ("--backend", "tensorrt"), "TensorRT is not installed"),
])
def test_artifact_errors_are_one_line_before_any_result(capsys, tmp_path, request, setup, argv, message):
    if "tensorrt" in argv:
        try:
            import tensorrt  # noqa: F401
            pytest.skip("TensorRT is installed here")
        except ImportError:
            pass
    flags = ()
    if setup is not None:
        copy = request.getfixturevalue("fp32_copy")
        flags = ("--artifacts", str(copy))
        if setup == "preset":
            _edit_manifest(copy, "unet-fp32.onnx", preset="cifar10")
        elif setup == "checkpoint":
            _edit_manifest(copy, "unet-fp32.onnx", checkpoint_sha256="0" * 64)
        elif setup == "classifier":
            _edit_manifest(copy, "classifier-fp32.onnx", description="hf:/models/vit")
        elif setup == "bytes":
            with open(copy / "classifier-fp32.onnx", "ab") as f:
                f.write(b"\0")
        elif setup == "deleted":
            (copy / "unet-fp32.onnx").unlink()
        elif setup == "swapped":  # the classifier graph in the UNet's place, its manifest's sha256 updated to match
            (copy / "unet-fp32.onnx").write_bytes((copy / "classifier-fp32.onnx").read_bytes())
            path = manifest_path_for(copy / "unet-fp32.onnx")
            raw = json.loads(path.read_text())
            raw["onnx_sha256"] = onnx_sha256(copy / "unet-fp32.onnx")
            path.write_text(json.dumps(raw))
    output = tmp_path / "r.tsv"
    code, out, err = run_cli(capsys, "certify", *COMMON, *argv, *flags, "--output", str(output))
    assert code == 2, err
    assert err.startswith("densepure: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert not output.exists()


def test_classifier_identity_ignores_where_the_model_lives(tmp_path):
    spec = TensorSpec("x", "float32", ("batch", 3, 32, 32))
    manifest = ArtifactManifest(ArtifactKind.CLASSIFIER, ArtifactFormat.ONNX, Precision.FP32, 21,
                                hashlib.sha256(b"g").hexdigest(), (spec,),
                                (TensorSpec("logits", "float32", ("batch", 10)),),
                                SourceInfo("cifar10", None, "hf:/workstation/models/vit"), "classifier-fp32.onnx")
    path = tmp_path / "classifier-fp32.onnx"
    check_identity(path, manifest, ModelIdentity("cifar10", (3, 32, 32), 10, None, "hf:/jetson/vit"))
    with pytest.raises(ArtifactError, match="exported from classifier"):
        check_identity(path, manifest, ModelIdentity("cifar10", (3, 32, 32), 10, None, "timm:vit"))
    with pytest.raises(ArtifactError, match="outputs 10 classes, this job has 7"):
        check_identity(path, manifest, ModelIdentity("cifar10", (3, 32, 32), 7, None, "hf:vit"))
    with pytest.raises(ArtifactError, match=r"takes images \(3, 32, 32\)"):
        check_identity(path, manifest, ModelIdentity("cifar10", (1, 8, 8), 10, None, "hf:vit"))
    library = dataclasses.replace(manifest, source=SourceInfo("cifar10", None, "preprocess Preprocess()"))
    check_identity(path, library, ModelIdentity("cifar10", (3, 32, 32), 10, None, "digits"))  # nothing to compare


# ------------------------------------------------------------------------------------------------------
# TensorRT engine choice, on a cache of stand-in engines (no TensorRT needed)

H100 = MachineInfo("10.13.3", "NVIDIA H100 80GB HBM3", (9, 0), "Linux-x86_64")
ORIN = MachineInfo("10.3.0", "Orin", (8, 7), "Linux-aarch64")


@pytest.fixture
def graph(tmp_path):
    """A stand-in UNet ONNX graph (the UNet's inputs and outputs, identity inside) with its manifest
    (engines are keyed by these bytes)."""
    import onnx
    from onnx import TensorProto, helper

    path = tmp_path / "export" / "unet-fp16.onnx"
    path.parent.mkdir()
    image = ("batch", 3, 32, 32)
    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(image)) for n in ("x", "eps", "v")]
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"])
    nodes = [helper.make_node("Identity", ["x"], ["eps"]), helper.make_node("Identity", ["x"], ["v"])]
    model = helper.make_model(helper.make_graph(nodes, "stand_in", [spec[0], t], spec[1:]),
                              opset_imports=[helper.make_opsetid("", 21)])
    onnx.save_model(model, str(path))
    manifest = ArtifactManifest(ArtifactKind.UNET, ArtifactFormat.ONNX, Precision.FP16, 21, onnx_sha256(path),
                                (TensorSpec("x", "float32", image), TensorSpec("t", "float32", ("batch",))),
                                (TensorSpec("eps", "float32", image), TensorSpec("v", "float32", image)),
                                SourceInfo("cifar10"), path.name)
    manifest.write(manifest_path_for(path))
    return path, manifest


def store_engine(cache: EngineCache, onnx: ArtifactManifest, machine: MachineInfo, buckets, precision=None):
    data = f"engine {machine.gpu_name} {buckets}".encode()
    key = cache_key(onnx.onnx_sha256, {"buckets": list(buckets), "precision": str(precision)}, machine)
    info = EngineInfo(machine, bucket_profiles(buckets), None, TypingMode.STRONG, 3, hashlib.sha256(data).hexdigest(),
                      key)
    manifest = dataclasses.replace(onnx, format=ArtifactFormat.TENSORRT, file="engine.plan", engine=info,
                                   precision=precision or onnx.precision)
    return cache.store(key, data, manifest)


def test_choose_engine_takes_this_machines_largest_bucket(tmp_path, graph):
    path, onnx = graph
    cache = EngineCache(tmp_path / "cache")
    with pytest.raises(ArtifactError, match=r"no TensorRT engine for unet-fp16.onnx .*densepure build --onnx-dir"):
        choose_engine(cache, path, onnx, H100, path.parent)
    store_engine(cache, onnx, ORIN, (1, 8))
    with pytest.raises(ArtifactError, match=r"built for TensorRT 10.3.0 on Orin.*rebuild it here"):
        choose_engine(cache, path, onnx, H100, path.parent)
    small = store_engine(cache, onnx, H100, (1, 8))
    large = store_engine(cache, onnx, H100, (1, 8, 128))
    store_engine(cache, onnx, H100, (1, 8, 512), precision=Precision.FP32)  # another precision: never chosen
    assert choose_engine(cache, path, onnx, H100).key == large.key
    assert choose_engine(cache, path, onnx, ORIN).engine_path.is_file()
    large.engine_path.write_bytes(b"truncated")
    with pytest.raises(ArtifactError, match="unusable .*engine bytes changed"):
        choose_engine(cache, path, onnx, H100)
    shutil.rmtree(large.directory)
    assert choose_engine(cache, path, onnx, H100).key == small.key
    path.write_bytes(b"another graph")
    with pytest.raises(ArtifactError, match="does not match its manifest's sha256"):
        choose_engine(cache, path, onnx, H100)
