"""Export: ONNX graphs of the UNet and classifiers, TensorRT engines, and the manifests and content-
addressed cache that tie each artifact to its source and (for engines) to the machine it was built on.

Importing this package imports neither onnx, onnxruntime nor tensorrt; they load when used.
"""

from densepure.export.cache import CacheEntry, CacheLookup, EngineCache, cache_key, read_engine, require_same_machine
from densepure.export.commands import BuildReport, ExportReport, build_command, export_command, exported_artifacts
from densepure.export.manifest import (
    ArtifactFormat, ArtifactKind, ArtifactManifest, BatchProfile, EngineInfo, MachineInfo, Precision, SourceInfo,
    TensorSpec, TypingMode, manifest_path_for, onnx_sha256,
)
from densepure.export.onnx_export import ExportResult, export_classifier, export_unet
from densepure.export.onnx_typing import OpTyping, op_typing, typing_violations
from densepure.export.onnx_verify import CheckStatus, NumericCheck
from densepure.export.tensorrt_build import (
    BuildOutcome, BuildSettings, bucket_profiles, build_engine, find_engine, machine_info,
)

__all__ = [
    "ArtifactFormat", "ArtifactKind", "ArtifactManifest", "BatchProfile", "BuildOutcome", "BuildReport",
    "BuildSettings", "CacheEntry", "CacheLookup", "CheckStatus", "EngineCache", "EngineInfo", "ExportReport",
    "ExportResult", "MachineInfo", "NumericCheck", "OpTyping", "Precision", "SourceInfo", "TensorSpec", "TypingMode",
    "bucket_profiles", "build_command", "build_engine", "cache_key", "export_classifier", "export_command",
    "export_unet", "exported_artifacts", "find_engine", "machine_info", "manifest_path_for", "onnx_sha256", "op_typing",
    "read_engine", "require_same_machine", "typing_violations",
]
