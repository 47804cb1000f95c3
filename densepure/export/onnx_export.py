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
wrapped back into float32 by :func:`~densepure.export.onnx_typing.keep_in_float32`. Casts at the
boundary keep inputs and outputs float32, so callers never change.

Every export is checked: ``onnx.checker`` on the saved file, the typing contract for fp16 graphs
(:mod:`densepure.export.onnx_typing`), and onnxruntime (CPU) against torch on random inputs at a batch
other than the traced one (:mod:`densepure.export.onnx_verify`). The graph rewrites that make the
graphs parse everywhere are in :mod:`densepure.export.onnx_passes`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from densepure.artifacts.manifest import (
    BATCH,
    ArtifactFormat,
    ArtifactKind,
    ArtifactManifest,
    SourceInfo,
    TensorSpec,
    manifest_path_for,
    onnx_sha256,
)
from densepure.errors import ArtifactError, ConfigError
from densepure.export.onnx_passes import drop_noop_antialias, rewrite_einsum_as_matmul
from densepure.export.onnx_typing import TYPING_POLICIES, OpTyping, keep_in_float32, op_typing, typing_violations
from densepure.export.onnx_verify import CheckStatus, NumericCheck, check_model, numeric_check
from densepure.models.classifiers import Classifier
from densepure.models.unet import UNetModel
from densepure.precision import Precision

DEFAULT_OPSET = 21
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights; protobuf cannot serialize a 2 GiB message
TRACE_BATCH = 2


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

    newest = int(onnx.defs.onnx_opset_version())
    if not DEFAULT_OPSET <= job.opset <= newest:
        raise ConfigError(f"opset must be in {DEFAULT_OPSET}..{newest} (from native GroupNormalization to the newest "
                          f"this onnx {onnx.__version__} knows), got {job.opset}")
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
    graph = onnx.load(str(job.path), load_external_data=False)
    actual = graph_opset(graph)
    if actual != job.opset:
        raise ArtifactError(f"{job.path}: the exporter wrote opset {actual}, not the requested {job.opset}; "
                            "no manifest written")
    typing = op_typing(graph)
    check_model(job.path)
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
# Files


def graph_opset(model) -> int:
    """The default-domain (``ai.onnx``) opset a loaded ONNX model declares."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ArtifactError("the graph declares no ai.onnx opset")
    return int(versions[0])


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


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _compare(job: _Job) -> NumericCheck:
    with torch.no_grad():
        want32 = [t.float().numpy() for t in _as_tuple(job.ref32(*job.feeds))]
        # the fp16 UNet graph has an exact torch twin (set_precision); an fp16 classifier graph does not
        same = want32 if job.graph is job.ref32 or job.kind is ArtifactKind.CLASSIFIER else \
            [t.float().numpy() for t in _as_tuple(job.graph(*job.feeds))]
    feeds = {spec.name: f.numpy() for spec, f in zip(job.inputs, job.feeds)}
    return numeric_check(job.path, job.precision, feeds, [(s.name, w) for s, w in zip(job.outputs, same)], want32)
