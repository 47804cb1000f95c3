"""Choosing and constructing the engine's backends: torch modules, or the artifacts of ``densepure export``.

* ``torch``: the in-process modules (any device; the UNet at any precision ``set_precision`` allows;
  ``tf32``: float32 tensors with TF32 matmuls and convolutions on CUDA, exact float32 otherwise).
* ``onnxruntime``: the ONNX graphs of an export directory (``densepure export --out DIR``), found by
  their manifests. A CPU device runs the CPU execution provider; a CUDA device the CUDA provider (with
  CPU for the nodes CUDA lacks). The TensorRT execution provider is not picked on its own: the
  onnxruntime-gpu wheels list it whether or not TensorRT's libraries are installed, and without
  explicit shape profiles it rebuilds an engine for every new batch size. TensorRT is the
  ``tensorrt`` backend; library users can still pass ``providers`` to the onnxruntime backends.
* ``tensorrt``: the engines ``densepure build --onnx-dir DIR`` put in the engine cache for the export
  directory's graphs, built on this machine (TensorRT version, GPU and platform from the engine's
  manifest; the engine bytes checked against its sha256).

Artifacts are trusted only through their manifests and are checked against the job before anything
runs or any result is written: kind and precision; the preset and checkpoint sha256 they were
exported from; image shape and number of classes; the classifier spec they were exported with. Each
mismatch is one :class:`~densepure.errors.DensePureError` saying what was found, what was expected and
the command that fixes it. Both graphs run at the job's precision (``fp32``, ``fp16`` or ``int8``). An
``int8`` graph is also checked against the job's pipeline: its scales were calibrated at one sigma and
grid (:mod:`densepure.artifacts.quantized`), and a job with another is refused naming both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from densepure.artifacts.directory import exported_artifacts, find_onnx
from densepure.artifacts.manifest import (
    ArtifactKind,
    ArtifactManifest,
    MachineInfo,
    verify_graph_signature,
    verify_onnx,
)
from densepure.artifacts.quantized import calibration_mismatch, calibration_overlap
from densepure.choices import Choice
from densepure.engine.backends.base import Backends
from densepure.errors import ArtifactError, BackendError, ConfigError, install_hint
from densepure.kernels import CompileMode
from densepure.models.sources import ClassifierSource
from densepure.precision import EXPORTED_PRECISIONS, Precision


class BackendKind(Choice, what="backend"):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


def check_backend_options(kind: BackendKind, artifacts: str | os.PathLike | None, precision: Precision) -> None:
    """Validate a backend choice before any model is loaded (:class:`ConfigError` saying why)."""
    kind, precision = BackendKind.parse(kind), Precision.parse(precision)
    if kind is BackendKind.TORCH:
        if not precision.torch_compute:
            raise ConfigError(f"{precision.value} runs as exported Q/DQ graphs, not on the torch backend: "
                              f"`densepure export --precision {precision.value} ...`, then --backend onnxruntime "
                              "--artifacts DIR (or tensorrt)")
        if artifacts is not None:
            raise ConfigError("--artifacts is read by the onnxruntime and tensorrt backends only; the torch backend "
                              "runs the checkpoint itself (add --backend onnxruntime or --backend tensorrt)")
        return
    if artifacts is None:
        raise ConfigError(f"the {kind.value} backend needs --artifacts DIR, a directory written by "
                          "`densepure export --out DIR`")
    if not precision.exportable:
        names = [p.value for p in EXPORTED_PRECISIONS]
        raise ConfigError(f"the {kind.value} backend runs exported {', '.join(names[:-1])} or {names[-1]} graphs, "
                          f"got precision {precision.value}")


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs the models. ``artifacts``: the export directory (exported backends);
    ``cache_dir``: the TensorRT engine cache; ``threads``: onnxruntime intra-op threads (0: its default);
    ``rows``: the engine's rows per model call; ``cuda_graphs``: torch on CUDA runs bucketed CUDA graphs
    (with channels-last convolutions) up to ``rows``; ``compile``: torch, ``torch.compile`` both models
    (:mod:`densepure.kernels.compile`, composed with the bucketed graphs)."""

    kind: BackendKind = BackendKind.TORCH
    artifacts: Path | None = None
    precision: Precision = Precision.FP32
    cache_dir: Path | None = None
    threads: int = 0
    rows: int = 512
    cuda_graphs: bool = True
    compile: CompileMode | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", BackendKind.parse(self.kind))
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        if self.compile is not None:
            object.__setattr__(self, "compile", CompileMode(self.compile))
        for name in ("artifacts", "cache_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        check_backend_options(self.kind, self.artifacts, self.precision)
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class ExportedModels:
    """What the graphs of an export directory at one precision were made from, by their manifests: the
    preset, the UNet's checkpoint sha256 (None without a UNet graph), the classifier spec (or label), the
    resize baked into the classifier graph (None: not recorded), its classes and the image shape."""

    directory: Path
    preset: str | None
    checkpoint_sha256: str | None
    classifier: str
    resize: str | None
    num_classes: int
    image_shape: tuple[int, ...]


def exported_models(directory: str | os.PathLike, precision: Precision) -> ExportedModels:
    """Read what ``densepure export --out DIR`` recorded about the graphs of ``precision`` (the classifier
    graph is required, the UNet's is not: Gaussian smoothing runs without it). Graphs exported for
    different presets are an :class:`ArtifactError`."""
    base = Path(directory)
    precision = Precision.parse(precision)
    classifier_path, classifier = find_onnx(base, ArtifactKind.CLASSIFIER, precision)
    graphs = [(classifier_path, classifier), *exported_artifacts(base, (ArtifactKind.UNET,), (precision,))]
    presets = {m.source.preset for _, m in graphs if m.source.preset is not None}
    if len(presets) > 1:
        said = ", ".join(f"{p.name} ({m.kind.value}) was exported for preset {m.source.preset!r}" for p, m in graphs)
        raise ArtifactError(f"the graphs in {base} disagree: {said}; export them again together: "
                            f"`densepure export --preset PRESET --out {base}`")
    unet = [m for _, m in graphs if m.kind is ArtifactKind.UNET]
    return ExportedModels(base, presets.pop() if presets else None, unet[0].source.checkpoint_sha256 if unet else None,
                          classifier.source.description, classifier.source.resize,
                          int(classifier.outputs[0].shape[-1]), tuple(classifier.input("x").shape[1:]))


def same_classifier(a: str | None, b: str | None) -> bool:
    """Whether two classifier specs name the same model, wherever it lives (``hf:/models/vit`` and
    ``hf:/jetson/vit`` do); True when either is not a spec (nothing to compare)."""
    tag_a, tag_b = _classifier_tag(a), _classifier_tag(b)
    return tag_a is None or tag_b is None or tag_a == tag_b


@dataclass(frozen=True)
class Pipeline:
    """What a job feeds its models: the smoothing ``sigma``, the base classifier ``mode`` and the model
    ``timesteps`` its UNet runs (empty for gaussian)."""

    sigma: float
    mode: str
    timesteps: tuple[float, ...] = ()

    @classmethod
    def of(cls, smoothing) -> Pipeline:
        """From a :class:`~densepure.diffusion.SmoothingConfig`."""
        grid = smoothing.grid()
        return cls(float(smoothing.sigma), smoothing.mode.value,
                   () if grid is None else tuple(float(t) for t in grid.model_times))


@dataclass(frozen=True)
class ModelIdentity:
    """What exported artifacts must have been made from. ``checkpoint_sha256`` and ``classifier`` (a
    certify classifier spec such as ``digits`` or ``hf:DIR``) are checked when both sides record them."""

    preset: str
    image_shape: tuple[int, int, int]
    num_classes: int
    checkpoint_sha256: str | None = None
    classifier: str | None = None
    pipeline: Pipeline | None = None  # what the job runs (int8 graphs must have been calibrated for it)


def make_backends(choice: BackendChoice, identity: ModelIdentity, device: torch.device, *, needs_denoiser: bool,
                  unet=None, classifier=None) -> Backends:
    """The engine's backends for ``choice``. ``unet``/``classifier``: the torch modules (torch backend only)."""
    device = torch.device(device)
    if choice.kind is BackendKind.TORCH:
        from densepure.artifacts.buckets import bucket_sizes
        from densepure.engine.backends.torch_backend import TorchClassifier, TorchDenoiser

        if classifier is None or (needs_denoiser and unet is None):
            raise ConfigError("the torch backend needs the torch classifier (and UNet, for modes that denoise)")
        gpu = device.type == "cuda"
        buckets = bucket_sizes(choice.rows) if gpu and choice.cuda_graphs else None
        graphs, tf32 = buckets is not None, choice.precision.tf32
        if choice.compile is not None:
            _compile(choice.compile, unet if needs_denoiser else None, classifier, buckets)
        return Backends(
            TorchDenoiser(unet, channels_last=gpu, buckets=buckets, cuda_graphs=graphs, tf32=tf32)
            if needs_denoiser else None,
            TorchClassifier(classifier, identity.num_classes, identity.image_shape, device, buckets=buckets,
                            cuda_graphs=graphs, tf32=tf32))
    precision = choice.precision
    kinds = (ArtifactKind.UNET, ArtifactKind.CLASSIFIER) if needs_denoiser else (ArtifactKind.CLASSIFIER,)
    found = {}
    for kind in kinds:
        path, manifest = find_onnx(choice.artifacts, kind, precision)
        check_identity(path, manifest, identity)
        found[kind] = path, manifest
    if choice.kind is BackendKind.ONNXRUNTIME:
        return _onnxruntime(found, device, choice.threads)
    return _tensorrt(found, device, choice)


def _compile(mode: CompileMode, unet, classifier, buckets) -> None:
    """``torch.compile`` the models in place, one compilation per batch shape: a bucket each under CUDA
    graphs (warm-up compiles, outside capture); on the CPU, each distinct batch size compiles once."""
    from densepure.kernels import compile_module

    shapes = len(buckets) + 1 if buckets is not None else 64
    for module in (unet, classifier):
        if module is not None:
            compile_module(module, mode, shapes=shapes)


def check_identity(path: Path, manifest: ArtifactManifest, identity: ModelIdentity) -> None:
    """:class:`ArtifactError` unless the artifact at ``path`` was exported from the job's models. Each
    message names both ways out: run what the artifacts hold (drop the flag), or export the job's models."""
    src, what = manifest.source, f"{path.name} ({manifest.kind.value})"
    out = path.parent

    def fix(flag: str, flags: str = "") -> str:
        return (f"drop {flag} to run what {out} holds, or export the job's models there: "
                f"`densepure export --preset {identity.preset}{flags} --out {out}`")

    if src.preset is not None and src.preset != identity.preset:
        raise ArtifactError(f"{what} was exported for preset {src.preset!r}, this job uses {identity.preset!r}: "
                            f"{fix('--preset')}")
    shape = tuple(manifest.input("x").shape[1:])
    if shape != tuple(identity.image_shape):
        raise ArtifactError(f"{what} takes images {shape}, this job's are {tuple(identity.image_shape)}: "
                            f"{fix('--preset')}")
    if manifest.calibration is not None and identity.pipeline is not None:
        p = identity.pipeline
        why = calibration_mismatch(manifest.calibration, sigma=p.sigma, mode=p.mode, timesteps=p.timesteps)
        if why:
            raise ArtifactError(f"{what} is an int8 graph {why}: export int8 graphs for this job there "
                                f"(`densepure export --precision int8 --sigma {p.sigma:g} ... --out {out}`), "
                                "or run the job they were calibrated for")
    if manifest.kind is ArtifactKind.UNET:
        ours, theirs = identity.checkpoint_sha256, src.checkpoint_sha256
        if ours is not None and theirs is not None and ours != theirs:
            raise ArtifactError(f"{what} was exported from another checkpoint (sha256 {theirs[:12]}..., this job's "
                                f"is {ours[:12]}...): {fix('--checkpoint', ' --checkpoint CHECKPOINT')}")
        return
    classes = int(manifest.outputs[0].shape[-1])
    if classes != identity.num_classes:
        raise ArtifactError(f"{what} outputs {classes} classes, this job has {identity.num_classes}: "
                            f"{fix('--classifier')}")
    if not same_classifier(src.description, identity.classifier):
        raise ArtifactError(f"{what} was exported from classifier {src.description!r}, this job uses "
                            f"{identity.classifier!r}: {fix('--classifier', f' --classifier {identity.classifier}')}")


def _classifier_tag(spec: str | None) -> tuple[str, ...] | None:
    """A classifier spec without its directories (``hf:/models/vit`` -> ``('hf', 'vit')``): exports are
    often made on another machine, where the same model lives elsewhere. None: not a spec."""
    if not spec or spec.split(":", 1)[0] not in {source.value for source in ClassifierSource}:
        return None
    head, *rest = spec.split(":")
    return (head, *(Path(part).name for part in rest))


def _onnxruntime(found, device: torch.device, threads: int) -> Backends:
    from densepure.engine.backends.onnxruntime_backend import (
        OnnxRuntimeClassifier,
        OnnxRuntimeDenoiser,
        default_providers,
        select_providers,
    )

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError(f"the onnxruntime backend needs onnxruntime: {install_hint('onnx')}") from exc
    providers = default_providers(device)
    try:
        select_providers(providers, ort.get_available_providers(), device)
    except BackendError as exc:
        raise BackendError(f"{exc}; or run the onnxruntime backend on the CPU (--device cpu)") from exc
    for path, manifest in found.values():
        verify_onnx(path, manifest)
        verify_graph_signature(path, manifest)
    unet = found.get(ArtifactKind.UNET)
    denoiser = None if unet is None else OnnxRuntimeDenoiser(unet[0], device, providers, intra_op_threads=threads)
    classifier = OnnxRuntimeClassifier(found[ArtifactKind.CLASSIFIER][0], device, providers,
                                       intra_op_threads=threads)
    return Backends(denoiser, classifier)


def _tensorrt(found, device: torch.device, choice: BackendChoice) -> Backends:
    from densepure.artifacts.cache import EngineCache
    from densepure.artifacts.machine import import_tensorrt, machine_info
    from densepure.engine.backends.tensorrt_backend import TensorRTClassifier, TensorRTDenoiser

    import_tensorrt()  # "not installed" says more than any device or cache problem
    if device.type != "cuda":
        raise BackendError(f"the tensorrt backend runs on a CUDA device, got {device} (use --device cuda)")
    if choice.cache_dir is None:
        raise ConfigError("the tensorrt backend needs the engine cache `densepure build` wrote into (--cache-dir)")
    cache, machine = EngineCache(choice.cache_dir), machine_info(device)
    entries = {kind: choose_engine(cache, path, manifest, machine, choice.artifacts)
               for kind, (path, manifest) in found.items()}
    unet = entries.get(ArtifactKind.UNET)
    return Backends(None if unet is None else TensorRTDenoiser(unet.directory, device),
                    TensorRTClassifier(entries[ArtifactKind.CLASSIFIER].directory, device))


def choose_engine(cache, onnx_path: Path, onnx_manifest: ArtifactManifest, machine: MachineInfo,
                  onnx_dir: Path | None = None):
    """The cache entry to run for the ONNX graph at ``onnx_path`` on ``machine``: among engines built
    from its content at its precision for this machine, the one with the largest batch bucket (then
    the smallest key); hash-checked. Engines only for other machines raise the machine mismatch."""
    from densepure.artifacts.cache import require_same_machine

    sha = verify_onnx(onnx_path, onnx_manifest)
    built = [e for e in cache.built_from(sha) if e.manifest.precision is onnx_manifest.precision]
    here = [e for e in built if not e.manifest.engine.machine.differences(machine)]
    build = f"`densepure build --onnx-dir {onnx_dir or onnx_path.parent} --cache-dir {cache.root}`"
    if not here and built:
        require_same_machine(built[0].manifest, machine, where=f"the engine for {onnx_path.name}")
    if not here:
        raise ArtifactError(f"no TensorRT engine for {onnx_path.name} in {cache.root}: build it with {build}")
    verify_graph_signature(onnx_path, onnx_manifest)  # what the engine was built from is the graph described
    best = min(here, key=lambda e: (-e.manifest.engine.buckets[-1], e.key))
    lookup = cache.lookup(best.key)
    if lookup.entry is None:
        raise ArtifactError(f"the engine for {onnx_path.name} in {best.directory} is unusable ({lookup.reason}): "
                            f"rebuild it with {build}")
    return lookup.entry


def check_calibration_split(directory: str | os.PathLike, precision: Precision, data_sha256: str,
                            indices) -> None:
    """:class:`ConfigError` when an int8 graph of ``directory`` was calibrated on images this job certifies
    (the same data, by sha256, and a shared index): a certified image must never be a calibration one."""
    precision = Precision.parse(precision)
    if not precision.quantized:
        return
    for path, manifest in exported_artifacts(directory, precisions=(precision,)):
        shared = calibration_overlap(manifest.calibration, data_sha256, indices) if manifest.calibration else []
        if shared:
            raise ConfigError(f"{path.name} was calibrated on {len(shared)} of the images this job certifies "
                              f"(first: index {shared[0]} of {manifest.calibration.data or 'the same data'}): "
                              "certify other images (--skip/--max), or calibrate on a split that is never "
                              "certified (`densepure export --precision int8 --calibration-data ...`)")
