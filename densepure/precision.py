"""The one precision type of densepure: what the models compute in.

``FP32``, ``FP16`` and ``BF16`` for the torch backend (GroupNorm, the attention softmax and the time
embedding stay float32 inside a half-precision UNet, ALGORITHM §10); exported ONNX graphs and
TensorRT engines exist in ``FP32`` and ``FP16`` only (:attr:`Precision.exportable`). Model inputs and
outputs at every backend boundary are float32 whatever the compute precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from densepure.choices import Choice
from densepure.errors import ConfigError

if TYPE_CHECKING:
    import torch


class Precision(Choice, what="precision"):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @classmethod
    def parse_list(cls, text: str) -> tuple["Precision", ...]:
        """``"fp32,fp16"`` -> ``(FP32, FP16)`` (empty items ignored; at least one required)."""
        out = tuple(cls.parse(part.strip()) for part in str(text).split(",") if part.strip())
        if not out:
            raise ConfigError(f"at least one precision is needed, got {text!r}")
        return out

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (torch is imported here, so the enum itself is importable without it)."""
        import torch

        return {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}[self]

    @property
    def exportable(self) -> bool:
        """True for the precisions ONNX graphs and TensorRT engines are made in (fp32, fp16)."""
        return self is not Precision.BF16


EXPORTED_PRECISIONS = tuple(p for p in Precision if p.exportable)
