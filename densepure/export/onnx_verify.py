"""Checks of a saved ONNX graph: ``onnx.checker``, and onnxruntime (CPU) against torch's outputs.

Numerics are ``max |onnxruntime - torch float32| / max |torch float32|`` per output, within
:data:`TOLERANCES` for the graph's precision. An fp32 graph that onnxruntime cannot run is an error; an
fp16 graph that the CPU provider cannot run is reported as skipped (TensorRT may still build it).

Tolerances. fp32: 1e-4, about a thousand float32 ulps (the graphs match torch to ~1e-6: a larger error is
a wrong graph, not rounding). fp16: 3e-2. float16 rounds to 2**-11 = 4.9e-4 relative; the weights and
the activations between nodes are rounded (onnxruntime's CPU provider runs the float16 nodes it has no
kernel for in float32, between casts), so a deep network drifts by a few roundings relative to the
largest output: measured 2.7e-4 (digits UNet), 2.5e-4 (digits CNN), 1.0e-3 and 1.1e-3 (the real CIFAR-10
and ImageNet UNet architectures, random weights). 3e-2 is ~60 roundings, loose enough for that drift
with trained weights, and ~30x tighter than what a broken fp16 graph gives: a GroupNorm or softmax left in
float16 overflows (inf/NaN: always a failure), a wrong cast or op is an O(1) error. It checks the graph,
not fp16 accuracy, which certification measures end to end. Cost on 2 shared CPU cores: the fp16 ImageNet
UNet exports and checks in 4.5 min (the check: 100 s), peak memory 10 GB; the CIFAR-10 UNet in 65 s.

int8: 0.25, on held-out rows of the calibrated pipeline (other noise, same sigma and timesteps), not on
random inputs, which the scales were not made for. An int8 step is 1/127 of a tensor's calibrated range
(up to 1/254 relative rounding per activation, more where the percentile clips): measured 0.020-0.025
(eps, v; the digits UNet), 0.006-0.009 (digits CNN logits), 0.076 (a random-weight 8x8 test UNet). A
wrong scale, a lost weight or a Q/DQ pair on the wrong tensor gives errors of order 1; trained-model
accuracy is measured end to end (benchmarks/int8.py).

``onnx`` and ``onnxruntime`` are imported inside the functions only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densepure.errors import ArtifactError
from densepure.precision import Precision

TOLERANCES = {Precision.FP32: 1e-4, Precision.FP16: 3e-2, Precision.INT8: 0.25}  # max |onnx - torch| / max |torch|


class CheckStatus(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class NumericCheck:
    """onnxruntime (CPU) against torch on ``batch`` random rows: ``max |ort - torch| / max |torch|``.

    ``max_rel_error`` compares with the ``expected`` outputs the exporter passes, the float32 torch model
    at every precision (a torch float16 forward is far too slow on a CPU); ``max_rel_error_vs_fp32``
    always with the float32 model. ``skipped_reason`` says why numerics did not run.
    """

    status: CheckStatus
    batch: int
    tolerance: float
    max_rel_error: float | None = None
    max_rel_error_vs_fp32: float | None = None
    per_output: tuple[tuple[str, float], ...] = ()
    skipped_reason: str | None = None


def check_model(path: Path) -> None:
    """``onnx.checker`` on the saved file; :class:`ArtifactError` with its first line if it fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: handles external data and models over 2 GB
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def run_onnxruntime_cpu(path: str | Path, feeds: dict[str, np.ndarray], quantized: bool = False) -> list[np.ndarray]:
    """Run a saved graph on onnxruntime's CPU provider (``quantized``: a Q/DQ graph, see
    :data:`~densepure.artifacts.quantized.ORT_INT8_DISABLED_OPTIMIZERS`)."""
    import onnxruntime as ort

    from densepure.artifacts.quantized import ort_disabled_optimizers

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=ort_disabled_optimizers(quantized))
    return session.run(None, feeds)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """``max |got - want| / max |want|`` in float64."""
    scale = max(float(np.abs(want).max()), 1e-12)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale


def numeric_check(path: Path, precision: Precision, feeds: Mapping[str, np.ndarray],
                  expected: Sequence[tuple[str, np.ndarray]], expected32: Sequence[np.ndarray]) -> NumericCheck:
    """Run ``path`` on onnxruntime CPU with ``feeds`` and compare with torch's outputs.

    ``expected``: (output name, torch output at the graph's precision), in graph output order;
    ``expected32``: the float32 model's outputs, same order. Raises :class:`ArtifactError` when an fp32
    graph cannot run; the caller decides what a FAILED check means.
    """
    tol, batch = TOLERANCES[precision], int(next(iter(feeds.values())).shape[0])
    try:
        got = run_onnxruntime_cpu(path, dict(feeds), precision.quantized)
    except Exception as exc:  # onnxruntime raises its own pybind types (NotImplemented, Fail, ...)
        if precision is not Precision.FP16:  # fp32 and int8 graphs are made to run on the CPU provider
            raise ArtifactError(f"onnxruntime cannot run {path}: {str(exc).splitlines()[0]}") from exc
        reason = f"numerics skipped: onnxruntime CPU cannot run this float16 graph ({str(exc).splitlines()[0]})"
        return NumericCheck(CheckStatus.SKIPPED, batch, tol, skipped_reason=reason)
    per = tuple((name, rel_error(g, w)) for (name, w), g in zip(expected, got, strict=True))
    worst = max(e for _, e in per)
    vs32 = max(rel_error(g, w) for g, w in zip(got, expected32, strict=True))
    status = CheckStatus.PASSED if worst <= tol else CheckStatus.FAILED
    return NumericCheck(status, batch, tol, worst, vs32, per)
