"""ONNX export of the diffusion UNet and of classifiers (preprocessing inside the graph), checked.

Exporter: torch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``, needs
``onnxscript``). It is torch's default since 2.9 and the only path that emits opset >= 21 with native
``GroupNormalization`` (per-channel scale/bias); the legacy TorchScript exporter stops at opset 20 and
decomposes GroupNorm into InstanceNormalization + reshapes. Its cost is export time (~10 s for a tiny
UNet on a busy CPU core, about a minute for the ImageNet UNet).

Graphs (the batch axis is dynamic, named ``batch``; every boundary tensor is float32):
* UNet: ``x`` (batch, C, H, W), ``t`` (batch,) float32 model timesteps -> ``eps``, ``v`` (batch, C, H, W).
* classifier: ``x`` (batch, C, H, W) in [-1, 1] -> ``logits`` (batch, K); range conversion, resize and
  mean/std normalisation are inside the graph.

Precision ``fp16`` is a strongly typed graph (TensorRT 11 builds exactly the types it contains): the
UNet is exported after :meth:`UNetModel.set_precision` (float16 convolutions and attention matmuls;
GroupNorm, the attention softmax, the sinusoidal timestep embedding and the embedding Linear layers
(Gemm) float32, ALGORITHM §10). Classifiers get float16 weights with LayerNorm/GroupNorm/Softmax
wrapped back into float32 by :func:`keep_in_float32`. Casts at the boundary keep inputs and outputs
float32, so callers never change.

Every export is checked: ``onnx.checker`` on the saved file, the typing contract for fp16 graphs, and
onnxruntime (CPU) against torch on random inputs at a batch other than the traced one.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from densepure.errors import ArtifactError, ConfigError
from densepure.export.manifest import (
    BATCH, ArtifactFormat, ArtifactKind, ArtifactManifest, Precision, SourceInfo, TensorSpec, manifest_path_for,
    onnx_sha256,
)
from densepure.models.classifiers import Classifier
from densepure.models.unet import UNetModel

DEFAULT_OPSET = 21
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights; protobuf cannot serialize a 2 GiB message
TOLERANCES = {Precision.FP32: 1e-4, Precision.FP16: 3e-2}  # max |onnx - torch| / max |torch|
UNET_INPUTS, UNET_OUTPUTS = ("x", "t"), ("eps", "v")
CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS = ("x",), ("logits",)
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16
TRACE_BATCH = 2


@dataclass(frozen=True)
class TypingPolicy:
    """Op types whose compute type (that of their first input) is fixed in an fp16 graph."""

    float32_ops: frozenset[str]
    float16_ops: frozenset[str]


TYPING_POLICIES = {
    # Gemm in the UNet is only the timestep-embedding MLP and the per-block embedding projections.
    ArtifactKind.UNET: TypingPolicy(frozenset({"GroupNormalization", "Softmax", "Sin", "Cos", "Gemm"}),
                                    frozenset({"Conv", "MatMul"})),
    ArtifactKind.CLASSIFIER: TypingPolicy(frozenset({"GroupNormalization", "LayerNormalization", "Softmax"}),
                                          frozenset({"Conv", "MatMul", "Gemm"})),
}


class CheckStatus(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class NumericCheck:
    """onnxruntime (CPU) against torch on ``batch`` random rows: ``max |ort - torch| / max |torch|``.

    ``max_rel_error`` compares with torch at the graph's precision (fp16 UNet: the fp16 torch model;
    fp16 classifier: the fp32 one, as its fp32 islands have no torch twin); ``max_rel_error_vs_fp32``
    always with the float32 model. ``skipped_reason`` says why numerics did not run.
    """

    status: CheckStatus
    batch: int
    tolerance: float
    max_rel_error: float | None = None
    max_rel_error_vs_fp32: float | None = None
    per_output: tuple[tuple[str, float], ...] = ()
    skipped_reason: str | None = None


@dataclass(frozen=True)
class OpTyping:
    op_type: str
    dtype: str  # compute type: that of the node's first input
    count: int


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: ArtifactManifest
    numerics: NumericCheck
    typing: tuple[OpTyping, ...]
    export_seconds: float
    reused: bool = False  # an up-to-date artifact was kept (and checked again) instead of re-traced

    def count(self, op_type: str, dtype: str | None = None) -> int:
        return sum(t.count for t in self.typing if t.op_type == op_type and (dtype is None or t.dtype == dtype))


class _DenoiserGraph(nn.Module):
    def __init__(self, unet: UNetModel):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.unet.eps_and_var(x, t)


@dataclass(frozen=True)
class _Job:
    """One export: the module traced, its float32 reference, verification inputs and the artifact's facts."""

    graph: nn.Module
    ref32: nn.Module
    feeds: tuple[torch.Tensor, ...]
    kind: ArtifactKind
    precision: Precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    path: Path
    source: SourceInfo
    opset: int
    threshold: int
    settings: str  # what the module tree does not show: UNet config flags, classifier preprocessing
    expected_groupnorms: int | None = None

    def key(self) -> str:
        """sha256 of everything the graph depends on: weights, architecture, precision, exporter."""
        h = hashlib.sha256(repr((self.kind.value, self.precision.value, self.opset, self.threshold,
                                 torch.__version__, self.inputs, self.outputs, self.settings,
                                 repr(self.ref32))).encode())
        for name, value in self.ref32.state_dict().items():
            t = value.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def export_unet(model: UNetModel, path: str | Path, precision: Precision = Precision.FP32, *,
                source: SourceInfo = SourceInfo(), opset: int = DEFAULT_OPSET, verify_batch: int = 1,
                external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, reuse: bool = True,
                seed: int = 0) -> ExportResult:
    """Export ``model`` (left unchanged; a CPU copy is traced) to ``path`` and check it (module doc).

    With ``reuse``, an artifact already at ``path`` whose manifest records the same export key (weights,
    architecture, precision, opset, torch version) and whose bytes still hash to the recorded sha256 is
    kept instead of re-traced; it is checked again all the same.
    """
    cfg = model.config
    if not cfg.learn_sigma:
        raise ConfigError("only learn_sigma UNets (output [eps, v]) can be exported for the engine")
    ref32 = copy.deepcopy(model).cpu().eval().float().set_precision(torch.float32)
    graph = ref32 if precision is Precision.FP32 else copy.deepcopy(ref32).set_precision(torch.float16)
    c, s = cfg.in_channels, cfg.image_size
    gen = torch.Generator().manual_seed(seed)
    feeds = (torch.randn(verify_batch, c, s, s, generator=gen), torch.rand(verify_batch, generator=gen) * 1000.0)
    image = (BATCH, c, s, s)
    wrapped32 = _DenoiserGraph(ref32)
    job = _Job(wrapped32 if graph is ref32 else _DenoiserGraph(graph), wrapped32, feeds, ArtifactKind.UNET, precision,
               (TensorSpec("x", "float32", image), TensorSpec("t", "float32", (BATCH,))),
               (TensorSpec("eps", "float32", image), TensorSpec("v", "float32", image)), Path(path), source, opset,
               external_data_threshold, repr((cfg, sorted(cfg.extra.items()))),
               sum(isinstance(m, nn.GroupNorm) for m in ref32.modules()))
    return _export(job, reuse)


def export_classifier(classifier: Classifier, image_shape: Sequence[int], path: str | Path,
                      precision: Precision = Precision.FP32, *, source: SourceInfo = SourceInfo(),
                      opset: int = DEFAULT_OPSET, verify_batch: int = 1,
                      external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, reuse: bool = True,
                      seed: int = 0) -> ExportResult:
    """Export ``classifier`` with its :class:`Preprocess` inside the graph, for images ``(C, H, W)``."""
    if not isinstance(classifier, Classifier):
        raise ConfigError(f"export_classifier needs a densepure Classifier (network + Preprocess), got "
                          f"{type(classifier).__name__}: wrap it as Classifier(net, Preprocess(...))")
    c, h, w = (int(v) for v in image_shape)
    ref32 = copy.deepcopy(classifier).cpu().eval().float()
    ref32.compute_dtype = torch.float32
    graph = ref32
    if precision is Precision.FP16:
        graph = copy.deepcopy(ref32)
        graph.network.half()
        graph.compute_dtype = torch.float16
    gen = torch.Generator().manual_seed(seed)
    feeds = (torch.rand(verify_batch, c, h, w, generator=gen) * 2.0 - 1.0,)
    with torch.no_grad():
        classes = int(ref32(feeds[0][:1]).shape[1])
    job = _Job(graph, ref32, feeds, ArtifactKind.CLASSIFIER, precision, (TensorSpec("x", "float32", (BATCH, c, h, w)),),
               (TensorSpec("logits", "float32", (BATCH, classes)),), Path(path),
               dataclasses.replace(source, description=source.description or f"preprocess {ref32.preprocess}"),
               opset, external_data_threshold, repr(ref32.preprocess))
    return _export(job, reuse)


def _reusable(job: _Job, key: str) -> ArtifactManifest | None:
    mpath = manifest_path_for(job.path)
    if not (job.path.is_file() and mpath.is_file()):
        return None
    try:
        manifest = ArtifactManifest.read(mpath)
        same = manifest.export_key == key and onnx_sha256(job.path, manifest.external_data) == manifest.onnx_sha256
    except (ArtifactError, OSError):
        return None
    return manifest if same else None


def _export(job: _Job, reuse: bool) -> ExportResult:
    import onnx

    if job.opset < DEFAULT_OPSET:
        raise ConfigError(f"opset must be >= {DEFAULT_OPSET} (native GroupNormalization), got {job.opset}")
    if job.feeds[0].shape[0] == TRACE_BATCH or job.feeds[0].shape[0] < 1:
        raise ConfigError(f"verify_batch must be >= 1 and differ from the traced batch {TRACE_BATCH}, "
                          f"got {job.feeds[0].shape[0]}")
    start = time.perf_counter()
    key = job.key()
    previous = _reusable(job, key) if reuse else None
    if previous is None:
        manifest_path_for(job.path).unlink(missing_ok=True)  # no manifest until the new graph passes its checks
        notes, external = _write_graph(job)
    else:
        notes, external = [n for n in previous.notes if not n.startswith("numerics")], previous.external_data
    typing = op_typing(onnx.load(str(job.path), load_external_data=False))
    _check_model(job.path)
    numerics = _compare(job)
    if numerics.status is CheckStatus.FAILED:
        raise ArtifactError(f"{job.path}: onnxruntime disagrees with torch: max relative error "
                            f"{numerics.max_rel_error:.3g} > {numerics.tolerance:g} ({dict(numerics.per_output)}); "
                            "no manifest written")
    if numerics.skipped_reason:
        notes.append(numerics.skipped_reason)
    manifest = ArtifactManifest(job.kind, ArtifactFormat.ONNX, job.precision, job.opset,
                                onnx_sha256(job.path, external), job.inputs, job.outputs,
                                dataclasses.replace(job.source, torch_version=torch.__version__), job.path.name,
                                external, notes=tuple(notes), export_key=key)
    mpath = manifest.write(manifest_path_for(job.path))
    return ExportResult(job.path, mpath, manifest, numerics, typing, time.perf_counter() - start,
                        reused=previous is not None)


def _write_graph(job: _Job) -> tuple[list[str], tuple[str, ...]]:
    """Trace, rewrite, check the fp16 typing contract and save; returns (notes, external data files)."""
    # trace at batch 2 (torch specializes sizes 0 and 1), verify at another batch: proves the axis is dynamic
    example = tuple(f[:1].expand(TRACE_BATCH, *f.shape[1:]).contiguous() for f in job.feeds)
    proto = _trace(job.graph, example, [s.name for s in job.inputs], [s.name for s in job.outputs], job.opset)
    notes = []
    if n := drop_noop_antialias(proto):
        notes.append(f"antialias cleared on {n} upsampling Resize nodes (no effect when upsampling)")
    if n := rewrite_einsum_as_matmul(proto):
        notes.append(f"{n} Einsum nodes rewritten as MatMul")
    if job.kind is ArtifactKind.CLASSIFIER and job.precision is Precision.FP16:
        wrapped = keep_in_float32(proto, sorted(TYPING_POLICIES[job.kind].float32_ops))
        notes.append(f"{wrapped} normalisation/softmax nodes kept in float32")
    if job.precision is Precision.FP16 and (bad := typing_violations(proto, job.kind)):
        raise ArtifactError(f"fp16 {job.kind.value} graph breaks the typing contract: {'; '.join(bad[:5])}"
                            + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))
    gn = sum(n.op_type == "GroupNormalization" for n in proto.graph.node)
    if job.expected_groupnorms is not None and gn != job.expected_groupnorms:
        notes.append(f"exporter decomposed GroupNorm: {gn} GroupNormalization nodes for "
                     f"{job.expected_groupnorms} modules")
    if any(a.name == "antialias" and a.i for n in proto.graph.node if n.op_type == "Resize" for a in n.attribute):
        notes.append("Resize with antialias=1 (downsampling): TensorRT 10 cannot parse it; onnxruntime can")
    return notes, save_onnx(proto, job.path, job.threshold)


def _trace(module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
           opset: int):
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; fail with a clear message instead)
    except ImportError as exc:
        raise ArtifactError("ONNX export needs 'onnx' and 'onnxscript': pip install 'densepure[onnx]'") from exc
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 exporter internals warn about its own pytree use and about our (single) batch axis
            # name; neither concerns the caller. Remove when torch stops emitting them.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used", category=UserWarning)
            program = torch.onnx.export(module.eval(), example, None, dynamo=True, opset_version=opset,
                                        input_names=input_names, output_names=output_names,
                                        dynamic_shapes=tuple({0: batch} for _ in example), verbose=False)
    except Exception as exc:  # the exporter raises many types; all mean the same thing to a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"torch.onnx.export failed: {first}") from exc
    return program.model_proto


# ---------------------------------------------------------------------------------------------------
# Graph passes and typing inspection (on onnx.ModelProto, in place)


def _matmul_plan(equation: str) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    """For a batched-matmul einsum like ``bct,bcs->bts``: (index of the left operand, its permutation to
    (batch, rows, k), the right operand's permutation to (batch, k, cols)); None for other equations."""
    lhs, arrow, out = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow or len(terms) != 2 or any(len(t) != 3 or len(set(t)) != 3 for t in (*terms, out)):
        return None
    a, b = terms
    shared = set(a) & set(b)
    batch, contracted = shared & set(out), shared - set(out)
    only_a, only_b = set(a) - shared, set(b) - shared
    if len(batch) != 1 or len(contracted) != 1 or len(only_a) != 1 or len(only_b) != 1 or out[0] not in batch:
        return None
    (n,), (k,), (i,), (j,) = batch, contracted, only_a, only_b
    if out == n + i + j:
        return 0, tuple(a.index(ch) for ch in n + i + k), tuple(b.index(ch) for ch in n + k + j)
    if out == n + j + i:
        return 1, tuple(b.index(ch) for ch in n + j + k), tuple(a.index(ch) for ch in n + k + i)
    return None


def rewrite_einsum_as_matmul(model) -> int:
    """Replace two-operand batched-matmul Einsum nodes by (Transpose +) MatMul; returns how many.

    TensorRT and onnxruntime have tuned MatMul kernels in every precision; Einsum support is narrower.
    """
    from onnx import helper

    nodes, count = [], 0
    for node in model.graph.node:
        eq = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
        plan = _matmul_plan(eq) if node.op_type == "Einsum" and len(node.input) == 2 else None
        if plan is None:
            nodes.append(node)
            continue
        first, left_perm, right_perm = plan
        operands = []
        for side, (name, perm) in enumerate(((node.input[first], left_perm), (node.input[1 - first], right_perm))):
            if perm != (0, 1, 2):
                out = f"{node.output[0]}/operand{side}_t"
                nodes.append(helper.make_node("Transpose", [name], [out], name=f"{node.name}/transpose{side}",
                                              perm=list(perm)))
                name = out
            operands.append(name)
        nodes.append(helper.make_node("MatMul", operands, [node.output[0]], name=f"{node.name}/matmul"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def keep_in_float32(model, op_types: Sequence[str]) -> int:
    """Compute every float16 node of ``op_types`` in float32: Cast its float16 inputs up and its outputs
    back down (TensorRT folds the Casts on weights). Returns the number of nodes wrapped."""
    from onnx import helper

    types, wanted = value_types(model), set(op_types)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type not in wanted or not node.input or types.get(node.input[0]) != _FLOAT16:
            nodes.append(node)
            continue
        for idx, name in enumerate(node.input):
            if name and types.get(name) == _FLOAT16:
                up = f"{name}/fp32_for_{node.name}"
                nodes.append(helper.make_node("Cast", [name], [up], name=f"{node.name}/cast_in{idx}", to=_FLOAT))
                node.input[idx] = up
        tail = []
        for idx, name in enumerate(node.output):
            # output 0 has the input's type by the ops' definitions, whatever inference managed to say
            if name and (idx == 0 or types.get(name) == _FLOAT16):
                node.output[idx] = f"{name}/fp32"
                tail.append(helper.make_node("Cast", [f"{name}/fp32"], [name], name=f"{node.name}/cast_out{idx}",
                                             to=_FLOAT16))
        nodes += [node, *tail]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def tensor_types(model) -> dict[str, object]:
    """``TypeProto.Tensor`` (element type and shape) of every value, by shape inference on a weight-less
    copy (works for models over 2 GB and for models loaded without their external data)."""
    import onnx

    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    g = skeleton.graph
    for field_name in ("node", "input", "output", "value_info"):
        getattr(g, field_name).extend(getattr(model.graph, field_name))
    for init in model.graph.initializer:
        stub = g.initializer.add()
        if init.data_location != onnx.TensorProto.EXTERNAL and init.ByteSize() <= 4096:
            stub.CopyFrom(init)  # small tensors may be shapes that inference needs the values of
        else:
            stub.name, stub.data_type = init.name, init.data_type
            stub.dims.extend(init.dims)
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    out = {}
    for init in model.graph.initializer:
        out[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims)).tensor_type
    for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        out[vi.name] = vi.type.tensor_type
    return out


def value_types(model) -> dict[str, int]:
    """Element type (``onnx.TensorProto`` enum) of every value of ``model``."""
    return {name: t.elem_type for name, t in tensor_types(model).items()}


def drop_noop_antialias(model) -> int:
    """Clear ``antialias`` on Resize nodes that only upsample, where ONNX defines it to change nothing:
    TensorRT's ONNX parser (10.x) rejects antialias=1 outright (NVIDIA/TensorRT#3560). torch's
    antialiased bicubic keeps its cubic a=-0.5 and exclude_outside (that is what makes it differ from
    plain bicubic); for linear, exclude_outside is cleared too (no tap falls outside when upsampling).
    Returns the number of nodes changed."""
    values, changed = tensor_types(model), 0

    def dims(name: str) -> list[int | None]:
        t = values.get(name)
        return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t is not None else []

    for node in model.graph.node:
        aa = next((a for a in node.attribute if a.name == "antialias" and a.i), None)
        if node.op_type != "Resize" or aa is None:
            continue
        src, dst = dims(node.input[0]), dims(node.output[0])
        if len(src) < 3 or len(src) != len(dst):
            continue
        if all(a is not None and b is not None and b >= a for a, b in zip(src[2:], dst[2:])):
            aa.i = 0
            changed += 1
            if any(a.name == "mode" and a.s == b"linear" for a in node.attribute):
                # linear taps never reach outside when upsampling; onnxruntime rejects exclude_outside here
                for a in node.attribute:
                    if a.name == "exclude_outside":
                        a.i = 0
    return changed


def op_typing(model) -> tuple[OpTyping, ...]:
    """Counts of (op type, compute type) over the graph's nodes."""
    import onnx

    types = value_types(model)
    counts = Counter((n.op_type, onnx.TensorProto.DataType.Name(types.get(n.input[0], 0)) if n.input else "NONE")
                     for n in model.graph.node)
    return tuple(OpTyping(op, dt, c) for (op, dt), c in sorted(counts.items()))


def typing_violations(model, kind: ArtifactKind) -> list[str]:
    """Where an fp16 graph breaks :data:`TYPING_POLICIES` or its float32 boundary (empty: none)."""
    types, policy = value_types(model), TYPING_POLICIES[kind]
    bad = [f"graph {io} {vi.name} is not float32" for io, vis in (("input", model.graph.input),
                                                                  ("output", model.graph.output))
           for vi in vis if vi.type.tensor_type.elem_type != _FLOAT]
    for node in model.graph.node:
        got = types.get(node.input[0]) if node.input else None
        if node.op_type in policy.float32_ops and got != _FLOAT:
            bad.append(f"{node.op_type} {node.name} computes in type {got}, must be float32")
        elif node.op_type in policy.float16_ops and got != _FLOAT16:
            bad.append(f"{node.op_type} {node.name} computes in type {got}, must be float16")
    return bad


# ---------------------------------------------------------------------------------------------------
# Files and checks


def save_onnx(model, path: str | Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> tuple[str, ...]:
    """Write ``model``; weights go to ``<name>.data`` beside it when they exceed ``threshold`` bytes.
    Returns the external data file names (relative to the model's directory)."""
    import onnx

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data_name = p.name + ".data"
    (p.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
    weights = sum(init.ByteSize() for init in model.graph.initializer)
    external = weights > threshold
    # tensors under 1 KiB stay inline: shape constants must be readable by onnxruntime's graph checks
    onnx.save_model(model, str(p), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return (data_name,) if (p.parent / data_name).is_file() else ()


def _check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: handles external data and models over 2 GB
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def run_onnxruntime_cpu(path: str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a saved graph on onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(float(np.abs(want).max()), 1e-12)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _compare(job: _Job) -> NumericCheck:
    tol, batch, feeds = TOLERANCES[job.precision], int(job.feeds[0].shape[0]), job.feeds
    names = [spec.name for spec in job.inputs]
    try:
        got = run_onnxruntime_cpu(job.path, {n: f.numpy() for n, f in zip(names, feeds)})
    except Exception as exc:  # onnxruntime raises its own pybind types (NotImplemented, Fail, ...)
        if job.precision is Precision.FP32:
            raise ArtifactError(f"onnxruntime cannot run {job.path}: {str(exc).splitlines()[0]}") from exc
        reason = f"numerics skipped: onnxruntime CPU cannot run this float16 graph ({str(exc).splitlines()[0]})"
        return NumericCheck(CheckStatus.SKIPPED, batch, tol, skipped_reason=reason)
    with torch.no_grad():
        want32 = [t.float().numpy() for t in _as_tuple(job.ref32(*feeds))]
        # the fp16 UNet graph has an exact torch twin (set_precision); an fp16 classifier graph does not
        same = want32 if job.graph is job.ref32 or job.kind is ArtifactKind.CLASSIFIER else \
            [t.float().numpy() for t in _as_tuple(job.graph(*feeds))]
    per = tuple((spec.name, _rel_error(g, w)) for spec, g, w in zip(job.outputs, got, same))
    worst = max(e for _, e in per)
    vs32 = max(_rel_error(g, w) for g, w in zip(got, want32))
    status = CheckStatus.PASSED if worst <= tol else CheckStatus.FAILED
    return NumericCheck(status, batch, tol, worst, vs32, per)
