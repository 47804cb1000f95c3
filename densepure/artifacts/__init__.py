"""Artifacts: what ``densepure export`` writes and the engine's backends read.

Manifests (:mod:`~densepure.artifacts.manifest`), export directories (:mod:`~densepure.artifacts.directory`),
the content-addressed TensorRT engine cache and its machine checks (:mod:`~densepure.artifacts.cache`,
:mod:`~densepure.artifacts.machine`) and batch buckets (:mod:`~densepure.artifacts.buckets`). Export
writes them, backends read them: neither side imports the other. Importing this package imports neither
onnx, onnxruntime nor tensorrt.
"""

from densepure.artifacts.buckets import bucket_profiles, bucket_sizes, normalize_buckets, pick_bucket, plan_chunks
from densepure.artifacts.cache import (
    ENGINE_FILE,
    CacheEntry,
    CacheLookup,
    EngineCache,
    cache_key,
    engine_file,
    read_engine,
    require_same_machine,
)
from densepure.artifacts.directory import exported_artifacts, find_onnx
from densepure.artifacts.machine import import_tensorrt, machine_info
from densepure.artifacts.manifest import (
    ArtifactFormat,
    ArtifactKind,
    ArtifactManifest,
    BatchProfile,
    EngineInfo,
    MachineInfo,
    SourceInfo,
    TensorSpec,
    TypingMode,
    manifest_path_for,
    onnx_sha256,
    verify_onnx,
)
from densepure.artifacts.quantized import CalibrationInfo, calibration_mismatch, calibration_overlap

__all__ = [
    "ENGINE_FILE", "ArtifactFormat", "ArtifactKind", "ArtifactManifest", "BatchProfile", "CacheEntry", "CacheLookup",
    "CalibrationInfo", "calibration_mismatch", "calibration_overlap",
    "EngineCache", "EngineInfo", "MachineInfo", "SourceInfo", "TensorSpec", "TypingMode", "bucket_profiles",
    "bucket_sizes", "cache_key", "engine_file", "exported_artifacts", "find_onnx", "import_tensorrt",
    "machine_info", "manifest_path_for", "normalize_buckets", "onnx_sha256", "pick_bucket", "plan_chunks",
    "read_engine", "require_same_machine", "verify_onnx",
]
