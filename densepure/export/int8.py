"""INT8 Q/DQ graphs from the float32 graphs, calibrated on the pipeline's own activations.

The quantizer is onnxruntime's static post-training quantizer (``onnxruntime.quantization``, shipped
inside the ``onnxruntime`` wheel: the ``int8`` extra). NVIDIA's TensorRT Model Optimizer
(``nvidia-modelopt``) was tried first, on this CPU-only machine (torch 2.13.0+cpu, modelopt 0.47.0): its
torch PTQ installs and calibrates on a CPU, but (1) torch 2.13's ``torch.export``-based ONNX exporter,
the only one that writes opset 21 with native GroupNormalization, cannot trace its quantizer modules
(data-dependent ``if amax.min() < 0`` in ``tensor_quant.py``); (2) the legacy TorchScript exporter can,
at opset <= 20 with GroupNorm decomposed; (3) its Q/DQ sit on the inputs of convolutions only, which
onnxruntime's CPU provider cannot fuse into int8 kernels (the graph runs DQ + float convolution, slower
than fp32), and (4) its ONNX quantizer (``modelopt[onnx]``) pins onnxruntime-gpu 1.24 and onnx 1.21,
which would replace this project's onnxruntime and onnx. So the graphs are quantized here, in ONNX.

Format: QDQ with symmetric int8 activations (per tensor) and symmetric int8 weights (per output channel),
every zero point 0: the only int8 form TensorRT 10/11 accepts (explicit quantization), and one that
onnxruntime's CPU provider runs with int8 kernels (QLinearConv / QLinearMatMul, u8s8 with VNNI).

Placement (:class:`QdqPlacement`): ``onnxruntime`` (default) quantizes the inputs and the output of each
quantized op, the pattern DQ -> Conv -> Q that onnxruntime fuses into an int8 kernel (1.45x fp32 speed
on the digits UNet at 128 rows, this CPU); ``tensorrt`` quantizes inputs only (NVIDIA's recommended
placement: the following SiLU/GroupNorm read a float output), slightly more accurate, and on the CPU
slower than fp32. Both build on TensorRT.

Kept in float (:class:`KeepFloat`): the parts that are numerically fragile, as the fp16 graphs keep
them in float32 (ALGORITHM §10): GroupNorm/LayerNorm, the attention softmax, the timestep-embedding
MLP (Gemm in the UNets), the output head (the last Conv/Gemm/MatMul); optionally the attention
matmuls. benchmarks/int8.py measures what each costs when quantized.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from densepure.artifacts.manifest import ArtifactKind
from densepure.artifacts.quantized import CalibrationInfo
from densepure.choices import Choice
from densepure.errors import ArtifactError, ConfigError, install_hint
from densepure.export.onnx_files import EXTERNAL_DATA_THRESHOLD

QUANTIZER_LIBRARY = "onnxruntime.quantization"


class CalibrationMethod(Choice, what="calibration method"):
    """How activation ranges are read from the calibration rows (symmetric: max |x| per tensor)."""

    MINMAX = "minmax"  # the largest |activation| seen
    PERCENTILE = "percentile"  # the given percentile of |activation| (outliers clipped)


class QdqPlacement(Choice, what="Q/DQ placement"):
    ONNXRUNTIME = "onnxruntime"  # inputs and outputs of quantized ops (int8 kernels on onnxruntime's CPU)
    TENSORRT = "tensorrt"  # inputs of quantized ops only (NVIDIA's placement; float outputs)


class KeepFloat(Choice, what="part kept in float"):
    OUTPUT_HEAD = "output-head"  # the last Conv/Gemm/MatMul: eps/v of the UNet, the classifier's logits
    TIME_EMBEDDING = "time-embedding"  # the UNet's Gemm nodes: the timestep MLP and per-block projections
    NORMALIZATION = "normalization"  # GroupNormalization, LayerNormalization
    SOFTMAX = "softmax"
    ATTENTION = "attention"  # MatMuls of two activations (QK^T, AV)


DEFAULT_KEEP = (KeepFloat.OUTPUT_HEAD, KeepFloat.TIME_EMBEDDING, KeepFloat.NORMALIZATION, KeepFloat.SOFTMAX)


@dataclass(frozen=True)
class QuantizeSettings:
    """How float32 graphs become INT8 graphs (module doc). ``percentile`` applies to PERCENTILE only."""

    method: CalibrationMethod = CalibrationMethod.PERCENTILE
    percentile: float = 99.999
    placement: QdqPlacement = QdqPlacement.ONNXRUNTIME
    keep_float: tuple[KeepFloat, ...] = DEFAULT_KEEP

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", CalibrationMethod.parse(self.method))
        object.__setattr__(self, "placement", QdqPlacement.parse(self.placement))
        keep = sorted({KeepFloat.parse(k) for k in self.keep_float}, key=list(KeepFloat).index)
        object.__setattr__(self, "keep_float", tuple(keep))
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"calibration percentile must be in (50, 100], got {self.percentile!r}")

    def describe_method(self) -> str:
        """``percentile 99.999`` or ``minmax``: what the manifest records as the method."""
        if self.method is CalibrationMethod.PERCENTILE:
            return f"percentile {self.percentile:g} (symmetric)"
        return "minmax (symmetric)"


def require_quantizer():
    """``onnxruntime.quantization``, or a one-line :class:`ConfigError` naming the extra that installs it."""
    try:
        quantization = importlib.import_module("onnxruntime.quantization")
    except ImportError as exc:
        raise ConfigError("int8 export needs onnxruntime's quantizer (onnxruntime.quantization): "
                          f"{install_hint('int8')}") from exc
    return quantization


def quantizer_version() -> str:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:  # a source build: the module still says
        import onnxruntime

        return str(onnxruntime.__version__)


@dataclass(frozen=True)
class QuantizeChoice:
    """What the quantizer is told for one graph: op types, nodes left in float, options."""

    op_types: tuple[str, ...]
    exclude: tuple[str, ...]
    extra_options: dict


def plan_quantization(model, kind: ArtifactKind, settings: QuantizeSettings) -> QuantizeChoice:
    """Op types to quantize and nodes to keep in float for ``model`` (a float32 ``onnx.ModelProto``)."""
    keep = set(settings.keep_float)
    ops = {"Conv", "MatMul"}
    if kind is ArtifactKind.CLASSIFIER or KeepFloat.TIME_EMBEDDING not in keep:
        ops.add("Gemm")  # in the UNets Gemm is only the timestep embedding; in classifiers, linear layers
    if KeepFloat.NORMALIZATION not in keep:
        ops |= {"GroupNormalization", "LayerNormalization"}
    if KeepFloat.SOFTMAX not in keep:
        ops.add("Softmax")
    weights = {init.name for init in model.graph.initializer}
    exclude = []
    if KeepFloat.ATTENTION in keep:
        exclude += [n.name for n in model.graph.node
                    if n.op_type == "MatMul" and not any(i in weights for i in n.input)]
    if KeepFloat.OUTPUT_HEAD in keep:
        heads = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        exclude += heads[-1:]
    nameless = [n.op_type for n in model.graph.node if n.op_type in ops and not n.name]
    if nameless:
        raise ArtifactError(f"cannot quantize a graph with unnamed {nameless[0]} nodes (export it again)")
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibMovingAverage": False}
    if settings.method is CalibrationMethod.PERCENTILE:
        extra["CalibPercentile"] = float(settings.percentile)
    if settings.placement is QdqPlacement.TENSORRT:
        extra["OpTypesToExcludeOutputQuantization"] = sorted(ops)
    return QuantizeChoice(tuple(sorted(ops)), tuple(dict.fromkeys(exclude)), extra)


class _Feeds:
    """onnxruntime's CalibrationDataReader over a fixed list of feeds (rewindable, always the same order)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.position = list(feeds), 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


@dataclass(frozen=True)
class QuantizeReport:
    """What the quantizer did to one graph: Q/DQ counts, the op types quantized and the nodes kept."""

    quantize_nodes: int
    dequantize_nodes: int
    op_types: tuple[str, ...]
    excluded: tuple[str, ...]

    def note(self) -> str:
        return (f"int8: {self.quantize_nodes} QuantizeLinear / {self.dequantize_nodes} DequantizeLinear nodes; "
                f"quantized op types {', '.join(self.op_types)}; kept in float: "
                f"{', '.join(self.excluded) or 'nothing by name'}")


def quantize_graph(model, kind: ArtifactKind, feeds: list[dict], settings: QuantizeSettings):
    """The INT8 Q/DQ ``onnx.ModelProto`` of the float32 ``model`` calibrated on ``feeds`` (a list of
    onnxruntime feed dicts, used in order), and a :class:`QuantizeReport`. Deterministic: the same model,
    feeds and settings give the same graph bytes."""
    import onnx

    q = require_quantizer()
    if not feeds:
        raise ConfigError("int8 calibration needs at least one batch of calibration rows")
    choice = plan_quantization(model, kind, settings)
    method = {CalibrationMethod.MINMAX: q.CalibrationMethod.MinMax,
              CalibrationMethod.PERCENTILE: q.CalibrationMethod.Percentile}[settings.method]
    work = Path(tempfile.mkdtemp(prefix="densepure-int8-"))
    try:
        large = sum(init.ByteSize() for init in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD
        src = work / "float.onnx"
        onnx.save_model(model, str(src), save_as_external_data=large, all_tensors_to_one_file=True,
                        location="float.onnx.data")
        dst = work / "int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()), _quiet_root_warnings():  # progress prints, advice logs
            q.quantize_static(str(src), str(dst), _Feeds(feeds), quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=list(choice.op_types), per_channel=True, reduce_range=False,
                              activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                              nodes_to_exclude=list(choice.exclude), use_external_data_format=large,
                              calibrate_method=method, extra_options=dict(choice.extra_options))
        out = onnx.load(str(dst))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = Counter(n.op_type for n in out.graph.node)
    if not counts["QuantizeLinear"]:
        raise ArtifactError(f"the quantizer inserted no Q/DQ nodes into the {kind.value} graph (nothing of "
                            f"{', '.join(choice.op_types)} to quantize?)")
    return out, QuantizeReport(counts["QuantizeLinear"], counts["DequantizeLinear"], choice.op_types, choice.exclude)


@dataclass(frozen=True, eq=False)
class Int8Spec:
    """What an INT8 export of one model needs: the calibration feeds (onnxruntime feed dicts, in order),
    held-out rows of the same pipeline for the export's check, the record its manifest keeps, the quantizer settings and ``digest``, the sha256 of all of them
    (calibration rows, settings, quantizer version): part of the export key."""

    feeds: list
    check_feeds: tuple  # held-out pipeline rows (torch tensors, the graph's inputs in order) for the export check
    calibration: CalibrationInfo
    settings: QuantizeSettings
    digest: str

    def quantize(self, model, kind: ArtifactKind):
        return quantize_graph(model, kind, self.feeds, self.settings)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


@contextlib.contextmanager
def _quiet_root_warnings():
    """Drop onnxruntime 1.32's "Please consider (to run) pre-processing before quantization" root-logger
    warnings (two per graph): its pre-processing is symbolic shape inference and graph fusions that our
    exported graphs do not need (their shapes are inferred; the quantized ops are plain Conv/MatMul/Gemm)."""
    root, quiet = logging.getLogger(), _DropAdvice()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
