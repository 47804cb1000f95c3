"""The one precision type of densepure: what the models compute in.

``FP32``, ``TF32``, ``FP16`` and ``BF16`` for the torch backend (GroupNorm, the attention softmax and the
time embedding stay float32 inside a half-precision UNet, ALGORITHM §10); exported ONNX graphs and
TensorRT engines exist in ``FP32``, ``FP16`` and ``INT8`` (:attr:`Precision.exportable`). ``INT8`` is an
exported precision only: Q/DQ graphs calibrated on the pipeline's own activations
(:mod:`densepure.export.int8`), run by onnxruntime or TensorRT, never a torch compute precision
(:attr:`Precision.torch_compute`). Model inputs and outputs at every backend boundary are float32
whatever the compute precision.

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
from typing import TYPE_CHECKING

from densepure.choices import Choice
from densepure.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used, so the enum loads without it (light CLI commands)
    import torch


class Precision(Choice, what="precision"):
    FP32 = "fp32"
    TF32 = "tf32"
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
        """The tensors' dtype (TF32 is a float32 math mode, not a storage type); :class:`ConfigError` for
        ``INT8``, which only exported graphs have."""
        if not self.torch_compute:
            raise ConfigError(f"{self.value} is not a torch compute precision: it runs as exported Q/DQ graphs "
                              f"(`densepure export --precision {self.value}`, then --backend onnxruntime or tensorrt)")
        import torch

        return {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}.get(self, torch.float32)

    @property
    def tf32(self) -> bool:
        """Whether float32 matmuls and convolutions may run in TF32 on CUDA (:func:`float32_math`)."""
        return self is Precision.TF32

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
        """True for the precisions ONNX graphs and TensorRT engines are made in (fp32, fp16, int8; TF32 is a
        CUDA math mode of float32 graphs, bf16 a torch precision)."""
        return self in (Precision.FP32, Precision.FP16, Precision.INT8)


EXPORTED_PRECISIONS = tuple(p for p in Precision if p.exportable)


def tf32_flags() -> dict[str, bool]:
    """PyTorch's process-wide TF32 switches as they are now (what eager float32 CUDA work would use)."""
    import torch

    return {"cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


@contextmanager
def float32_math(allow_tf32: bool) -> Iterator[None]:
    """Inside: float32 matmuls (cuBLAS) and convolutions (cuDNN) run in TF32 on CUDA iff ``allow_tf32``;
    the flags are restored on exit. Flags are read when a kernel is chosen: at each eager call, and
    once at CUDA graph capture (the captured kernels keep them)."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = bool(allow_tf32)
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
