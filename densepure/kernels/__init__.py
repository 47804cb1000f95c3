"""GPU kernels, each beside its torch reference, behind a registry with a fallback.

* :mod:`densepure.kernels.rows` (reference) / :mod:`~densepure.kernels.rows_triton`: the engine's
  per-row start, spawn and reverse step with keyed Philox noise (:mod:`densepure.noise`), fused.
* :mod:`densepure.kernels.groupnorm` (reference) / :mod:`~densepure.kernels.groupnorm_triton`:
  GroupNorm (+ scale-shift) + SiLU for the UNet.
* :mod:`densepure.kernels.registry`: ``--kernels auto|torch|triton`` -> :class:`Kernels`.
* :mod:`densepure.kernels.compile`: ``--compile`` (``torch.compile`` under the engine's CUDA graphs).

Importing this package does not import triton; only the ``*_triton`` modules do.
"""

from densepure.kernels.compile import CompileMode, compile_module
from densepure.kernels.registry import MIN_TRITON, KernelChoice, Kernels, TritonStatus, resolve_kernels, triton_status
from densepure.kernels.rows import AdvanceRows, KeepRows, StartRule

__all__ = [
    "MIN_TRITON", "AdvanceRows", "CompileMode", "KeepRows", "KernelChoice", "Kernels", "StartRule",
    "TritonStatus", "compile_module", "resolve_kernels", "triton_status",
]  # fmt: skip
