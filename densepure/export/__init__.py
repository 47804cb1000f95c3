"""Export: checked ONNX graphs of the UNet and classifiers, and TensorRT engines built from them.

What it writes (manifests, export directories, the engine cache) lives in :mod:`densepure.artifacts`,
which the engine's backends read without importing this package. Importing this package imports
neither onnx, onnxruntime nor tensorrt; they load when used.
"""

from densepure.export.commands import BuildReport, ExportEvent, ExportReport, build_command, export_command
from densepure.export.onnx_export import ExportResult, export_classifier, export_unet
from densepure.export.onnx_typing import OpTyping, op_typing, typing_violations
from densepure.export.onnx_verify import CheckStatus, NumericCheck
from densepure.export.tensorrt_build import BuildOutcome, BuildSettings, build_engine

__all__ = [
    "BuildOutcome", "BuildReport", "BuildSettings", "CheckStatus", "ExportEvent", "ExportReport", "ExportResult",
    "NumericCheck", "OpTyping", "build_command", "build_engine", "export_classifier", "export_command", "export_unet",
    "op_typing", "typing_violations",
]
