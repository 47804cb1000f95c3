"""The one precision type of densepure: what the models compute in.

``FP32``, ``FP16`` and ``BF16`` for the torch backend (GroupNorm, the attention softmax and the time
embedding stay float32 inside a half-precision UNet, ALGORITHM §10); exported ONNX graphs and
TensorRT engines exist in ``FP32``, ``FP16`` and ``INT8`` (:attr:`Precision.exportable`). ``INT8`` is
an exported precision only: Q/DQ graphs calibrated on the pipeline's own activations
(:mod:`densepure.export.int8`), run by onnxruntime or TensorRT, never a torch compute precision
(:attr:`Precision.torch_compute`). Model inputs and outputs at every backend boundary are float32
whatever the compute precision.
"""

from __future__ import annotations

import torch

from densepure.choices import Choice
from densepure.errors import ConfigError


class Precision(Choice, what="precision"):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    @classmethod
    def parse_list(cls, text: str) -> tuple["Precision", ...]:
        """``"fp32,fp16"`` -> ``(FP32, FP16)`` (empty items ignored; at least one required)."""
        out = tuple(cls.parse(part.strip()) for part in str(text).split(",") if part.strip())
        if not out:
            raise ConfigError(f"at least one precision is needed, got {text!r}")
        return out

    @property
    def dtype(self) -> torch.dtype:
        """The torch compute dtype; :class:`ConfigError` for ``INT8``, which only exported graphs have."""
        if not self.torch_compute:
            raise ConfigError(f"{self.value} is not a torch compute precision: it runs as exported Q/DQ graphs "
                              f"(`densepure export --precision {self.value}`, then --backend onnxruntime or tensorrt)")
        return {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}[self]

    @property
    def torch_compute(self) -> bool:
        """True for the precisions the torch backend computes in (``INT8`` is exported graphs only)."""
        return self is not Precision.INT8

    @property
    def quantized(self) -> bool:
        """True for integer precisions: graphs with Q/DQ nodes and a calibration record in their manifest."""
        return self is Precision.INT8

    @property
    def exportable(self) -> bool:
        """True for the precisions ONNX graphs and TensorRT engines are made in (fp32, fp16, int8)."""
        return self is not Precision.BF16


EXPORTED_PRECISIONS = tuple(p for p in Precision if p.exportable)
