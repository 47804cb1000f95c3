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
(:mod:`densepure.export.onnx_typing`), and onnxruntime (CPU) against the float32 torch model on random
inputs at a batch other than the traced one (:mod:`densepure.export.onnx_verify`). An fp16 graph is
compared with the float32 model too: torch's float16 convolutions on a CPU are slow (one ImageNet UNet
convolution took 119 s against 0.22 s in float32), onnxruntime runs the fp16 graph at float32 speed, and
the float32 reference of a model is computed once for all its precisions. The graph is written and
checked in a staging directory and moved into place with its manifest last
(:mod:`densepure.export.onnx_files`). The graph rewrites that make the graphs parse everywhere are in
:mod:`densepure.export.onnx_passes`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import shutil
import time
import warnings
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
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
from densepure.errors import ArtifactError, ConfigError, install_hint
from densepure.export.int8 import Int8Spec
from densepure.export.onnx_files import EXTERNAL_DATA_THRESHOLD, export_lock, fresh_staging_dir, install, save_onnx
from densepure.export.onnx_passes import drop_noop_antialias, rewrite_einsum_as_matmul
from densepure.export.onnx_typing import TYPING_POLICIES, OpTyping, keep_in_float32, op_typing, typing_violations
from densepure.export.onnx_verify import CheckStatus, NumericCheck, check_model, numeric_check
from densepure.models.classifiers import Classifier
from densepure.models.unet import UNetModel
from densepure.precision import Precision

DEFAULT_OPSET = 21
TRACE_BATCH = 2
__all__ = ["DEFAULT_OPSET", "EXTERNAL_DATA_THRESHOLD", "ExportResult", "ReferenceCache", "export_classifier",
           "export_unet", "graph_opset", "save_onnx"]

# float32 outputs of a model on its verification inputs, by content (weights, settings, inputs): a model
# exported at several precisions runs its (slow, for the ImageNet UNet) float32 reference once
ReferenceCache = MutableMapping[str, list]


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: ArtifactManifest
    numerics: NumericCheck
    typing: tuple[OpTyping, ...]
    export_seconds: float
    reused: bool = False  # an up-to-date artifact was kept (and checked again) instead of re-traced
    check_seconds: float = 0.0  # of export_seconds, the time spent checking (onnx.checker, numerics)

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
    int8: Int8Spec | None = None  # INT8: calibration feeds and settings (the traced graph is the float32 one)

    def model_digest(self) -> str:
        """sha256 of the float32 model: architecture, settings and weights (the same at every precision)."""
        digest = self.__dict__.get("_model_digest")  # not a field: computed once (hashing 2.2 GB takes seconds)
        if digest is None:
            h = hashlib.sha256(repr((self.kind.value, self.settings, repr(self.ref32))).encode())
            for name, value in self.ref32.state_dict().items():
                t = value.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            digest = self.__dict__["_model_digest"] = h.hexdigest()
        return digest

    def key(self) -> str:
        """sha256 of everything the graph depends on: weights, architecture, precision, exporter."""
        parts = (self.kind.value, self.precision.value, self.opset, self.threshold, torch.__version__, self.inputs,
                 self.outputs, self.settings, self.model_digest())
        if self.int8 is not None:  # float keys stay what they were: up-to-date float exports are kept
            parts += (self.int8.digest,)
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def reference_key(self) -> str:
        """sha256 of the float32 model and the verification inputs: what its reference outputs depend on."""
        h = hashlib.sha256(self.model_digest().encode())
        for f in self.feeds:
            h.update(f"{f.dtype}:{tuple(f.shape)}".encode() + f.contiguous().numpy().tobytes())
        return h.hexdigest()


def export_unet(model: UNetModel, path: str | Path, precision: Precision = Precision.FP32, *,
                source: SourceInfo = SourceInfo(), opset: int = DEFAULT_OPSET, verify_batch: int = 1,
                external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, reuse: bool = True,
                seed: int = 0, reference_cache: ReferenceCache | None = None,
                int8: Int8Spec | None = None) -> ExportResult:
    """Export ``model`` (left unchanged; a CPU copy is traced) to ``path`` and check it (module doc).
    ``int8`` (required for ``Precision.INT8``): calibration feeds and settings, see :mod:`densepure.export.int8`.

    With ``reuse``, an artifact already at ``path`` whose manifest records the same export key (weights,
    architecture, precision, opset, torch version) and whose bytes still hash to the recorded sha256 is
    kept instead of re-traced; it is checked again all the same. ``reference_cache`` (any dict, shared by
    the exports of one model at several precisions) keeps the float32 reference outputs by content.
    """
    cfg = model.config
    if not cfg.learn_sigma:
        raise ConfigError("only learn_sigma UNets (output [eps, v]) can be exported for the engine")
    _check_int8(precision, int8)
    ref32 = copy.deepcopy(model).cpu().eval().float().set_precision(torch.float32)
    graph = ref32 if precision is not Precision.FP16 else copy.deepcopy(ref32).set_precision(torch.float16)
    c, s = cfg.in_channels, cfg.image_size
    gen = torch.Generator().manual_seed(seed)
    feeds = (torch.randn(verify_batch, c, s, s, generator=gen), torch.rand(verify_batch, generator=gen) * 1000.0)
    feeds = feeds if int8 is None else int8.check_feeds  # held-out pipeline rows: what the scales are for
    image = (BATCH, c, s, s)
    wrapped32 = _DenoiserGraph(ref32)
    job = _Job(wrapped32 if graph is ref32 else _DenoiserGraph(graph), wrapped32, feeds, ArtifactKind.UNET, precision,
               (TensorSpec("x", "float32", image), TensorSpec("t", "float32", (BATCH,))),
               (TensorSpec("eps", "float32", image), TensorSpec("v", "float32", image)), Path(path), source, opset,
               external_data_threshold, repr((cfg, sorted(cfg.extra.items()))),
               sum(isinstance(m, nn.GroupNorm) for m in ref32.modules()), int8)
    return _export(job, reuse, reference_cache)


def export_classifier(classifier: Classifier, image_shape: Sequence[int], path: str | Path,
                      precision: Precision = Precision.FP32, *, source: SourceInfo = SourceInfo(),
                      opset: int = DEFAULT_OPSET, verify_batch: int = 1,
                      external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, reuse: bool = True,
                      seed: int = 0, reference_cache: ReferenceCache | None = None,
                      int8: Int8Spec | None = None) -> ExportResult:
    """Export ``classifier`` with its :class:`Preprocess` inside the graph, for images ``(C, H, W)``
    (``reuse``, ``reference_cache``, ``int8``: as :func:`export_unet`)."""
    _check_int8(precision, int8)
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
    feeds = feeds if int8 is None else int8.check_feeds
    classes = ref32.num_classes
    if classes is None:
        with torch.no_grad():
            classes = int(ref32(feeds[0][:1]).shape[1])
    job = _Job(graph, ref32, feeds, ArtifactKind.CLASSIFIER, precision, (TensorSpec("x", "float32", (BATCH, c, h, w)),),
               (TensorSpec("logits", "float32", (BATCH, classes)),), Path(path),
               dataclasses.replace(source, description=source.description or f"preprocess {ref32.preprocess}"),
               opset, external_data_threshold, repr(ref32.preprocess), int8=int8)
    return _export(job, reuse, reference_cache)


def _check_int8(precision: Precision, int8: Int8Spec | None) -> None:
    if (precision is Precision.INT8) != (int8 is not None):
        raise ConfigError("an int8 export needs its calibration (int8=Int8Spec), and only an int8 export takes one")


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


def _export(job: _Job, reuse: bool, reference_cache: ReferenceCache | None) -> ExportResult:
    import onnx

    newest = int(onnx.defs.onnx_opset_version())
    if not DEFAULT_OPSET <= job.opset <= newest:
        raise ConfigError(f"opset must be in {DEFAULT_OPSET}..{newest} (from native GroupNormalization to the newest "
                          f"this onnx {onnx.__version__} knows), got {job.opset}")
    if job.feeds[0].shape[0] == TRACE_BATCH or job.feeds[0].shape[0] < 1:
        raise ConfigError(f"verify_batch must be >= 1 and differ from the traced batch {TRACE_BATCH}, "
                          f"got {job.feeds[0].shape[0]}")
    start = time.perf_counter()
    reference_cache = {} if reference_cache is None else reference_cache
    job.path.parent.mkdir(parents=True, exist_ok=True)
    with export_lock(job.path.parent):
        key = job.key()
        previous = _reusable(job, key) if reuse else None
        if previous is not None:  # checked again in place; only its manifest is rewritten (numerics notes)
            notes = [n for n in previous.notes if not n.startswith("numerics")]
            typing, numerics, checked = _check(job, job.path, reference_cache)
            manifest = _manifest(job, key, job.path, previous.external_data, notes, numerics)
            mpath = manifest.write(manifest_path_for(job.path))
        else:
            _reference(job, reference_cache)  # before tracing: the exporter leaves fake tensors in module caches
            staged = fresh_staging_dir(job.path)
            try:
                graph_path = staged / job.path.name
                notes, external = _write_graph(job, graph_path)
                typing, numerics, checked = _check(job, graph_path, reference_cache)
                manifest = _manifest(job, key, graph_path, external, notes, numerics)
                mpath = install(graph_path, job.path, external, lambda: manifest.write(manifest_path_for(job.path)))
            finally:
                shutil.rmtree(staged, ignore_errors=True)
    return ExportResult(job.path, mpath, manifest, numerics, typing, time.perf_counter() - start,
                        reused=previous is not None, check_seconds=checked)


def _check(job: _Job, path: Path, reference_cache: ReferenceCache):
    """(op typing, numerics, seconds) of the graph at ``path``, or ArtifactError (nothing is installed)."""
    import onnx

    start = time.perf_counter()
    graph = onnx.load(str(path), load_external_data=False)
    actual = graph_opset(graph)
    if actual != job.opset:
        raise ArtifactError(f"{job.path}: the exporter wrote opset {actual}, not the requested {job.opset}; "
                            "nothing was installed")
    typing = op_typing(graph)
    del graph
    check_model(path)
    numerics = _compare(job, path, reference_cache)
    if numerics.status is CheckStatus.FAILED:
        raise ArtifactError(f"{job.path}: onnxruntime disagrees with torch float32: max relative error "
                            f"{numerics.max_rel_error:.3g} > {numerics.tolerance:g} ({dict(numerics.per_output)}); "
                            "nothing was installed")
    return typing, numerics, time.perf_counter() - start


def _manifest(job: _Job, key: str, path: Path, external: tuple[str, ...], notes: list[str],
              numerics: NumericCheck) -> ArtifactManifest:
    if numerics.skipped_reason:
        notes = [*notes, numerics.skipped_reason]
    return ArtifactManifest(job.kind, ArtifactFormat.ONNX, job.precision, job.opset, onnx_sha256(path, external),
                            job.inputs, job.outputs, dataclasses.replace(job.source, torch_version=torch.__version__),
                            job.path.name, external, notes=tuple(notes), export_key=key,
                            calibration=None if job.int8 is None else job.int8.calibration)


def _write_graph(job: _Job, path: Path) -> tuple[list[str], tuple[str, ...]]:
    """Trace, rewrite, check the fp16 typing contract and save to ``path``; returns (notes, external data files)."""
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
    if job.int8 is not None:
        proto, report = job.int8.quantize(proto, job.kind)
        notes.append(report.note())
    if job.precision is Precision.FP16 and (bad := typing_violations(proto, job.kind)):
        raise ArtifactError(f"fp16 {job.kind.value} graph breaks the typing contract: {'; '.join(bad[:5])}"
                            + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))
    gn = sum(n.op_type == "GroupNormalization" for n in proto.graph.node)
    if job.expected_groupnorms is not None and gn != job.expected_groupnorms:
        notes.append(f"exporter decomposed GroupNorm: {gn} GroupNormalization nodes for "
                     f"{job.expected_groupnorms} modules")
    if any(a.name == "antialias" and a.i for n in proto.graph.node if n.op_type == "Resize" for a in n.attribute):
        notes.append("Resize with antialias=1 (downsampling): TensorRT 10 cannot parse it; onnxruntime can")
    return notes, save_onnx(proto, path, job.threshold)


def _trace(module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
           opset: int):
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; fail with a clear message instead)
    except ImportError as exc:
        raise ArtifactError(f"ONNX export needs 'onnx' and 'onnxscript': {install_hint('onnx')}") from exc
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter_logs():
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


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Drop the exporter's "torchvision is not installed. Skipping torchvision::nms" warnings (four per
    export, torch 2.13): it registers torchvision's detection ops whether or not a model uses them, and no
    densepure model does. Remove when torch stops logging them."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    quiet = _DropMessages(("torchvision is not installed",))
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def graph_opset(model) -> int:
    """The default-domain (``ai.onnx``) opset a loaded ONNX model declares."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ArtifactError("the graph declares no ai.onnx opset")
    return int(versions[0])


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _reference(job: _Job, reference_cache: ReferenceCache) -> list:
    """The float32 torch model's outputs on the verification inputs (numpy), computed once per content."""
    ref = job.reference_key()
    if ref not in reference_cache:
        with torch.no_grad():
            reference_cache[ref] = [t.float().numpy() for t in _as_tuple(job.ref32(*job.feeds))]
    return reference_cache[ref]


def _compare(job: _Job, path: Path, reference_cache: ReferenceCache) -> NumericCheck:
    """onnxruntime (CPU) on the graph at ``path`` against the float32 torch model, at every precision.

    Never a torch float16 forward: on a CPU it is two to three orders of magnitude slower than float32.
    """
    want32 = _reference(job, reference_cache)
    feeds = {spec.name: f.numpy() for spec, f in zip(job.inputs, job.feeds, strict=True)}
    return numeric_check(path, job.precision, feeds, [(s.name, w) for s, w in zip(job.outputs, want32, strict=True)], want32)
