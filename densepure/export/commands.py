"""What ``densepure export`` and ``densepure build`` do, as library functions that print nothing and
return typed reports (the CLI prints :meth:`ExportReport.lines` / :meth:`BuildReport.lines`).

Layout of an export directory (``out_dir``)::

    unet-fp32.onnx        unet-fp32.onnx.manifest.json        (+ unet-fp32.onnx.data above ~1.8 GB)
    unet-fp16.onnx        unet-fp16.onnx.manifest.json
    classifier-fp32.onnx  classifier-fp32.onnx.manifest.json
    classifier-fp16.onnx  classifier-fp16.onnx.manifest.json
    unet-int8.onnx        unet-int8.onnx.manifest.json        (Q/DQ graphs; the manifest records the calibration)
    classifier-int8.onnx  classifier-int8.onnx.manifest.json

Engines go to the content-addressed cache (``<cache_dir>/engines/<key>/engine.plan`` + manifest).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from densepure.artifacts.cache import EngineCache
from densepure.artifacts.directory import exported_artifacts
from densepure.artifacts.manifest import ArtifactKind, SourceInfo
from densepure.diffusion import Mode
from densepure.errors import ArtifactError, ConfigError
from densepure.export.calibration import CalibrationPlan, int8_specs
from densepure.export.int8 import QuantizeSettings
from densepure.export.onnx_export import (
    DEFAULT_OPSET,
    EXTERNAL_DATA_THRESHOLD,
    ExportResult,
    export_classifier,
    export_unet,
)
from densepure.export.onnx_verify import CheckStatus
from densepure.export.tensorrt_build import BuildOutcome, BuildSettings, build_engine
from densepure.hashing import file_sha256
from densepure.models.classifiers import Classifier, ResizeChoice
from densepure.models.presets import DiffusionPreset, build_unet, get_preset, resolve_checkpoint
from densepure.models.sources import ClassifierSpec, check_resize, default_resize, load_classifier
from densepure.paths import check_input
from densepure.precision import Precision


def _numerics(r: ExportResult) -> str:
    n, m = r.numerics, r.manifest
    if n.status is CheckStatus.SKIPPED:
        return f"numerics skipped ({n.skipped_reason})"
    against = "torch" if m.precision is Precision.FP32 else "torch fp32"
    if m.calibration is not None:
        against += f" on held-out pipeline rows ({m.calibration.describe()})"
    return f"onnxruntime vs {against}: max rel err {n.max_rel_error:.2e} (tol {n.tolerance:g})"


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    results: tuple[ExportResult, ...]

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            m = r.manifest
            state = "up to date" if r.reused else f"exported in {r.export_seconds:.1f}s"
            resize = f"; resize {m.source.resize}" if m.source.resize else ""
            out.append(f"{m.kind.value:10s} {m.precision.value}  {r.onnx_path}  {state}; {_numerics(r)}{resize}; "
                       f"sha256 {m.onnx_sha256[:12]}")
        return out


@dataclass(frozen=True)
class ExportEvent:
    """One model of an export starting (``result`` None) or done: the ``index``-th of ``total``."""

    index: int
    total: int
    kind: ArtifactKind
    precision: Precision
    path: Path
    result: ExportResult | None = None

    def line(self) -> str:
        """What the CLI prints as it happens, e.g. ``[2/4] unet fp16: done in 61.2s (check 3.1s) ...``."""
        head = f"[{self.index}/{self.total}] {self.kind.value} {self.precision.value}"
        r = self.result
        if r is None:
            return f"{head}: exporting {self.path} (trace, save, check with onnxruntime) ..."
        state = "up to date, checked again" if r.reused else "exported"
        return f"{head}: {state} in {r.export_seconds:.1f}s (check {r.check_seconds:.1f}s); {_numerics(r)}"


ExportProgress = Callable[[ExportEvent], None]


@dataclass(frozen=True)
class BuildReport:
    cache_dir: Path
    outcomes: tuple[tuple[Path, BuildOutcome], ...]

    def lines(self) -> list[str]:
        out = []
        for onnx_path, o in self.outcomes:
            m = o.entry.manifest
            state = "cache hit" if o.cache_hit else f"built in {o.build_seconds:.1f}s ({o.reason})"
            out.append(f"{m.kind.value:10s} {m.precision.value}  {onnx_path.name} -> {o.entry.engine_path}  {state}; "
                       f"buckets {','.join(map(str, m.engine.buckets))}; {m.engine.machine.describe()}")
        return out


def _check_opset(opset: int) -> None:
    import onnx

    newest = int(onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, int) or not DEFAULT_OPSET <= opset <= newest:
        raise ConfigError(f"opset must be in {DEFAULT_OPSET}..{newest} (from native GroupNormalization to the newest "
                          f"this onnx {onnx.__version__} knows), got {opset!r}")


def _check_output_directory(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` if an export can write there (an existing directory, or one that can be created: the first
    existing parent is a writable directory), else a one-line error; nothing is created."""
    out = Path(out_dir)
    if os.path.lexists(out):
        check_input(out, "--out", file=False, directory=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"the export directory {str(out)!r} is not writable")
        return out
    parent = next((a for a in out.parents if os.path.lexists(a)), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the export directory {str(out)!r}: {str(parent)!r} is not a writable "
                          "directory")
    return out


def _output_directory(out: Path) -> Path:
    """Create the (checked) export directory."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the export directory {str(out)!r}: {exc.strerror or exc}") from exc
    return out


def export_command(preset: str | DiffusionPreset, checkpoint: str | os.PathLike | None, out_dir: str | os.PathLike,
                   *, precisions: Sequence[Precision] = (Precision.FP32, Precision.FP16),
                   classifier: Classifier | str | None = None, classifier_label: str = "", unet: bool = True,
                   opset: int = DEFAULT_OPSET, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
                   reuse: bool = True, resize: ResizeChoice | str | None = None,
                   progress: ExportProgress | None = None, calibration: CalibrationPlan | None = None,
                   quantize: QuantizeSettings = QuantizeSettings()) -> ExportReport:
    """Export the preset's UNet (weights from ``checkpoint``) and, if given, ``classifier`` (a module, or a
    classifier spec such as ``digits`` or ``hf:DIR``, loaded here on the CPU; for the preset's image shape)
    at each precision into ``out_dir``, each checked (see :mod:`densepure.export.onnx_export`). Raises
    :class:`ArtifactError` if a check fails.

    ``resize`` is baked into the classifier graph and recorded in its manifest: for a spec, None means the
    default of :func:`~densepure.models.sources.default_resize` (the papers' bicubic for their presets);
    for a module, None keeps its preprocessing as it is. ``progress`` is called as each model starts and
    ends (:class:`ExportEvent`); the float32 reference of a model is computed once for all precisions.

    ``Precision.INT8`` needs ``calibration`` (images never certified, and the sigma and grid the graphs
    will run): the pipeline is run once in float32 torch to record what each model sees, and each graph
    is quantized with ``quantize`` (:mod:`densepure.export.int8`).
    """
    spec = get_preset(preset) if isinstance(preset, str) else preset
    if not precisions:
        raise ConfigError("at least one precision is needed")
    bad = [p.value for p in precisions if not Precision.parse(p).exportable]
    if bad:
        raise ConfigError(f"graphs are exported in fp32, fp16 or int8, got {', '.join(bad)}")
    int8 = Precision.INT8 in [Precision.parse(p) for p in precisions]
    if int8 and calibration is None:
        raise ConfigError("int8 graphs need calibration images that are never certified, and the sigma and grid "
                          "they will run (CalibrationPlan; the CLI: --calibration-data, --sigma, --b)")
    if not unet and classifier is None:
        raise ConfigError("nothing to export: the UNet is excluded and no classifier was given")
    _check_opset(opset)
    if isinstance(classifier, str):
        classifier_spec = ClassifierSpec.parse(classifier)
        resize = check_resize(classifier_spec, resize) or default_resize(spec.name, classifier_spec)
    elif resize is not None and classifier is None:
        raise ConfigError("--resize applies to the classifier, which this export leaves out")
    elif resize is not None:
        resize = ResizeChoice.parse(resize)
    ckpt = resolve_checkpoint(spec, checkpoint) if unet else None  # before anything is created: one line if unusable
    out = _check_output_directory(out_dir)
    if isinstance(classifier, str):
        classifier_label = classifier_label or classifier
        classifier = load_classifier(classifier_spec, torch.device("cpu"), resize=resize)
    elif classifier is not None and resize is not None:
        classifier = Classifier(classifier.network, resize.apply(classifier.preprocess), classifier.num_classes)
    out = _output_directory(out)  # every input is usable: now the directory may be created
    cfg = spec.unet_config
    plan = [(ArtifactKind.UNET, Precision(p)) for p in precisions if unet]
    plan += [(ArtifactKind.CLASSIFIER, Precision(p)) for p in precisions if classifier is not None]
    results, references, specs = [], {}, {}
    common = {"opset": opset, "external_data_threshold": external_data_threshold, "reuse": reuse,
              "reference_cache": references}
    model = None
    if int8:  # one float32 run of the pipeline calibrates both graphs (module doc of export.calibration)
        kinds = tuple(dict.fromkeys(k for k, p in plan if p is Precision.INT8))
        if calibration.mode is not Mode.GAUSSIAN:  # the UNet makes the denoised images the classifier sees
            ckpt = ckpt or resolve_checkpoint(spec, checkpoint)
            model = build_unet(spec, ckpt, device="cpu", dtype=torch.float32)
            unet_source = SourceInfo(spec.name, file_sha256(ckpt), f"checkpoint {ckpt.name}")
        specs = int8_specs(calibration, quantize, model, spec.schedule, kinds)
    for index, (kind, precision) in enumerate(plan, start=1):
        path = out / f"{kind.value}-{precision.value}.onnx"
        event = ExportEvent(index, len(plan), kind, precision, path)
        if progress is not None:
            progress(event)
        if kind is ArtifactKind.UNET:
            if model is None:
                model = build_unet(spec, ckpt, device="cpu", dtype=torch.float32)
                unet_source = SourceInfo(spec.name, file_sha256(ckpt), f"checkpoint {ckpt.name}")
            result = export_unet(model, path, precision, source=unet_source, int8=specs.get(kind) if
                                 precision is Precision.INT8 else None, **common)
        else:
            source = SourceInfo(spec.name, None, classifier_label, resize=None if resize is None else resize.value)
            result = export_classifier(classifier, (cfg.in_channels, cfg.image_size, cfg.image_size), path, precision,
                                       source=source, int8=specs.get(kind) if precision is Precision.INT8 else None,
                                       **common)
        results.append(result)
        if progress is not None:
            progress(replace(event, result=result))
    return ExportReport(out, tuple(results))


def build_command(onnx_dir: str | os.PathLike, cache_dir: str | os.PathLike, *,
                  settings: BuildSettings = BuildSettings(), device: torch.device | str | int = 0,
                  kinds: Sequence[ArtifactKind] | None = None,
                  precisions: Sequence[Precision] | None = None) -> BuildReport:
    """Build (or find in the cache) a TensorRT engine on this machine for each exported ONNX artifact."""
    artifacts = exported_artifacts(onnx_dir, kinds, precisions)
    if not artifacts:
        raise ArtifactError(f"no matching exported ONNX artifacts in {onnx_dir}: run `densepure export` first")
    cache = EngineCache(cache_dir)
    outcomes = tuple((path, build_engine(path, cache, settings, device)) for path, _ in artifacts)
    return BuildReport(Path(cache_dir), outcomes)
