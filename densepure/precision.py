"""The one precision type of densepure: what the models compute in.

``FP32``, ``TF32``, ``FP16`` and ``BF16`` for the torch backend (GroupNorm, the attention softmax and the
time embedding stay float32 inside a half-precision UNet, ALGORITHM §10); exported ONNX graphs and
TensorRT engines exist in ``FP32`` and ``FP16`` only (:attr:`Precision.exportable`). Model inputs and
outputs at every backend boundary are float32 whatever the compute precision.

``FP32`` is exact float32 on every device. On a CUDA GPU since Ampere, PyTorch runs float32
convolutions in TF32 by default (10-bit mantissa products), so a GPU's "fp32" counts would differ from
the CPU's; a certification tool must not change its answers with the machine unasked. ``TF32`` asks for
that speed: float32 tensors, TF32 tensor-core matmuls and convolutions on CUDA (on the CPU it is fp32).
The backends set the flags around each model call (:func:`float32_math`), never globally, and the
precision is recorded with every result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from densepure.choices import Choice
from densepure.errors import ConfigError


class Precision(Choice, what="precision"):
    FP32 = "fp32"
    TF32 = "tf32"
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
        """The tensors' dtype (TF32 is a float32 math mode, not a storage type)."""
        return {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}.get(self, torch.float32)

    @property
    def tf32(self) -> bool:
        """Whether float32 matmuls and convolutions may run in TF32 on CUDA (:func:`float32_math`)."""
        return self is Precision.TF32

    @property
    def exportable(self) -> bool:
        """True for the precisions ONNX graphs and TensorRT engines are made in (fp32, fp16)."""
        return self in (Precision.FP32, Precision.FP16)


EXPORTED_PRECISIONS = tuple(p for p in Precision if p.exportable)


def tf32_flags() -> dict[str, bool]:
    """PyTorch's process-wide TF32 switches as they are now (what eager float32 CUDA work would use)."""
    return {"cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


@contextmanager
def float32_math(allow_tf32: bool) -> Iterator[None]:
    """Inside: float32 matmuls (cuBLAS) and convolutions (cuDNN) run in TF32 on CUDA iff ``allow_tf32``;
    the flags are restored on exit. Flags are read when a kernel is chosen: at each eager call, and
    once at CUDA graph capture (the captured kernels keep them)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = bool(allow_tf32)
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
