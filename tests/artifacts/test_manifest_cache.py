"""Artifact manifests (JSON round trip, validation) and the content-addressed engine cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from densepure.artifacts import (
    ArtifactFormat,
    ArtifactKind,
    ArtifactManifest,
    BatchProfile,
    EngineCache,
    EngineInfo,
    MachineInfo,
    SourceInfo,
    TensorSpec,
    TypingMode,
    cache_key,
    manifest_path_for,
    onnx_sha256,
    read_engine,
    require_same_machine,
)
from densepure.errors import ArtifactError
from densepure.export.tensorrt_build import BuildSettings
from densepure.precision import Precision

H100 = MachineInfo("10.13.3", "NVIDIA H100 80GB HBM3", (9, 0), "Linux-x86_64")
ORIN = MachineInfo("10.3.0", "Orin", (8, 7), "Linux-aarch64")
SHA = hashlib.sha256(b"graph").hexdigest()


def onnx_manifest() -> ArtifactManifest:
    image = ("batch", 3, 32, 32)
    return ArtifactManifest(
        ArtifactKind.UNET, ArtifactFormat.ONNX, Precision.FP16, 21, SHA,
        (TensorSpec("x", "float32", image), TensorSpec("t", "float32", ("batch",))),
        (TensorSpec("eps", "float32", image), TensorSpec("v", "float32", image)),
        SourceInfo("cifar10", hashlib.sha256(b"ckpt").hexdigest(), "checkpoint c.pt", "2.13.0"),
        "unet-fp16.onnx", notes=("14 Einsum nodes rewritten as MatMul",), export_key=hashlib.sha256(b"k").hexdigest())


def engine_manifest(engine: bytes, key: str, machine: MachineInfo = H100) -> ArtifactManifest:
    settings = BuildSettings(buckets=(1, 8, 64), workspace_bytes=1 << 30)
    info = EngineInfo(machine, settings.profiles, settings.workspace_bytes, TypingMode.STRONG, 3,
                      hashlib.sha256(engine).hexdigest(), key)
    return dataclasses.replace(onnx_manifest(), format=ArtifactFormat.TENSORRT, file="engine.plan", engine=info)


def test_round_trip(tmp_path):
    for manifest in (onnx_manifest(), engine_manifest(b"plan", "a" * 64)):
        again = ArtifactManifest.from_json(manifest.to_json())
        assert again == manifest
        path = manifest.write(tmp_path / f"{manifest.format.value}.manifest.json")
        assert ArtifactManifest.read(path) == manifest
        raw = json.loads(path.read_text())
        assert raw["kind"] == "unet" and raw["precision"] == "fp16" and raw["inputs"][0]["shape"][0] == "batch"
    assert json.loads(engine_manifest(b"p", "b" * 64).to_json())["engine"]["profiles"][1] == \
        {"min": 2, "opt": 8, "max": 8}
    assert engine_manifest(b"p", "b" * 64).engine.buckets == (1, 8, 64)
    assert onnx_manifest().input("t").with_batch(5) == (5,)


@pytest.mark.parametrize("change,match", [
    ({"onnx_sha256": "xyz"}, "onnx_sha256"),
    ({"opset": 0}, "opset"),
    ({"format": ArtifactFormat.TENSORRT}, "engine facts"),
    ({"format_version": 99}, "not supported"),
    ({"outputs": ()}, "output"),
    ({"kind": "vae"}, "vae"),
])
def test_invalid_manifests(change, match):
    with pytest.raises((ArtifactError, ValueError), match=match):
        dataclasses.replace(onnx_manifest(), **change)


def test_bad_json_is_an_artifact_error(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text('{"kind": "unet"}')
    with pytest.raises(ArtifactError, match="not a valid densepure manifest"):
        ArtifactManifest.read(bad)
    with pytest.raises(ArtifactError, match="dimensions must be >= 1"):
        TensorSpec("x", "float32", ("batch", 0))
    with pytest.raises(ArtifactError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)


def test_cache_key_covers_content_settings_and_machine():
    settings = BuildSettings().key_fields()
    key = cache_key(SHA, settings, H100)
    assert key == cache_key(SHA, dict(reversed(list(settings.items()))), H100)  # order-independent
    others = [cache_key(hashlib.sha256(b"other").hexdigest(), settings, H100),
              cache_key(SHA, BuildSettings(buckets=(1, 8)).key_fields(), H100),
              cache_key(SHA, BuildSettings(workspace_bytes=1 << 28).key_fields(), H100),
              cache_key(SHA, settings, dataclasses.replace(H100, trt_version="11.4.1")),
              cache_key(SHA, settings, dataclasses.replace(H100, gpu_name="NVIDIA H200")),
              cache_key(SHA, settings, dataclasses.replace(H100, platform="Linux-aarch64"))]
    assert len({key, *others}) == 7


def test_cache_hit_and_misses(tmp_path):
    cache = EngineCache(tmp_path)
    key = cache_key(SHA, BuildSettings().key_fields(), H100)
    first = cache.lookup(key)
    assert not first.hit and "no entry" in first.reason
    entry = cache.store(key, b"engine-bytes", engine_manifest(b"engine-bytes", key))
    found = cache.lookup(key)
    assert found.hit and found.entry.engine_path.read_bytes() == b"engine-bytes" and found.reason == "hit"
    assert cache.entries() == [entry]
    assert not cache.lookup(cache_key(SHA, BuildSettings(buckets=(4,)).key_fields(), H100)).hit

    entry.engine_path.write_bytes(b"engine-bytez")  # same size, other content: never trusted
    stale = cache.lookup(key)
    assert not stale.hit and "engine bytes changed" in stale.reason and cache.entries() == []
    cache.store(key, b"engine-bytes", engine_manifest(b"engine-bytes", key))  # rebuild replaces the entry
    assert cache.lookup(key).hit

    entry.manifest_path.write_text("{not json")
    assert "unreadable manifest" in cache.lookup(key).reason
    with pytest.raises(ArtifactError, match="engine_sha256"):
        cache.store(key, b"other", engine_manifest(b"engine-bytes", key))
    with pytest.raises(ArtifactError, match="naming the cache key"):
        cache.store(key, b"engine-bytes", engine_manifest(b"engine-bytes", "c" * 64))
    assert cache.timing_cache_path(H100) != cache.timing_cache_path(ORIN)


def test_built_from_lists_engines_of_one_graph_by_manifest(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.built_from(SHA) == []
    keys = [cache_key(SHA, BuildSettings().key_fields(), m) for m in (H100, ORIN)]
    entries = [cache.store(k, b"plan", engine_manifest(b"plan", k, m)) for k, m in zip(keys, (H100, ORIN), strict=True)]
    other = hashlib.sha256(b"other graph").hexdigest()
    okey = cache_key(other, BuildSettings().key_fields(), H100)
    cache.store(okey, b"plan", dataclasses.replace(engine_manifest(b"plan", okey), onnx_sha256=other))
    assert cache.built_from(SHA) == sorted(entries, key=lambda e: e.key)
    entries[0].engine_path.write_bytes(b"PLAN")  # bytes are not hashed here: lookup() does that
    assert len(cache.built_from(SHA)) == 2 and not cache.lookup(keys[0]).hit
    entries[1].manifest_path.write_text("{not json")
    assert [e.key for e in cache.built_from(SHA)] == [keys[0]]


def test_read_engine_checks_machine_and_bytes(tmp_path):
    key = cache_key(SHA, BuildSettings().key_fields(), H100)
    entry = EngineCache(tmp_path).store(key, b"plan", engine_manifest(b"plan", key))
    manifest, data = read_engine(entry.directory, H100)
    assert data == b"plan" and manifest == entry.manifest
    assert read_engine(entry.manifest_path, H100)[1] == b"plan"

    with pytest.raises(ArtifactError) as other_gpu:
        read_engine(entry.engine_path, dataclasses.replace(H100, gpu_name="NVIDIA A100-SXM4-80GB",
                                                           compute_capability=(8, 0)))
    msg = str(other_gpu.value)
    assert "built for TensorRT 10.13.3 on NVIDIA H100 80GB HBM3 (sm_90" in msg
    assert "this machine has TensorRT 10.13.3 on NVIDIA A100-SXM4-80GB (sm_80" in msg
    assert "densepure build" in msg

    with pytest.raises(ArtifactError, match=r"TensorRT version 10\.13\.3 vs 11\.4\.1"):
        read_engine(entry.engine_path, dataclasses.replace(H100, trt_version="11.4.1"))
    with pytest.raises(ArtifactError, match="platform Linux-x86_64 vs Linux-aarch64"):
        require_same_machine(entry.manifest, dataclasses.replace(H100, platform="Linux-aarch64"))
    with pytest.raises(ArtifactError, match="not a TensorRT engine"):
        require_same_machine(onnx_manifest(), H100)

    entry.engine_path.write_bytes(b"PLAN")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        read_engine(entry.directory, H100)


def test_machine_differences():
    assert H100.differences(H100) == ()
    assert len(H100.differences(ORIN)) == 4
    assert ORIN.describe() == "TensorRT 10.3.0 on Orin (sm_87, Linux-aarch64)"


def test_onnx_sha256_covers_external_data(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"graph")
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    both = onnx_sha256(tmp_path / "m.onnx", ("m.onnx.data",))
    assert both != onnx_sha256(tmp_path / "m.onnx")
    (tmp_path / "m.onnx.data").write_bytes(b"weightz")
    assert onnx_sha256(tmp_path / "m.onnx", ("m.onnx.data",)) != both
    assert manifest_path_for(tmp_path / "m.onnx").name == "m.onnx.manifest.json"
