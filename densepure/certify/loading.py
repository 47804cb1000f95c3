"""Loading a job's models into an engine: the same models for the dataset job, the server and cluster
workers. Rows per model call are fitted to the memory of the device (:mod:`densepure.engine.memory`),
measured through the torch modules, or through the exported backends themselves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from densepure.certify.options import JobOptions
from densepure.engine.backends.select import BackendChoice, BackendKind, ModelIdentity, Pipeline, exported_models
from densepure.engine.device import resolve_device
from densepure.engine.engine import Engine, EngineConfig
from densepure.engine.memory import rows_that_fit
from densepure.errors import ConfigError


@dataclass(frozen=True)
class _Models:
    """What :func:`build_engine` loaded: the torch UNet and classifier (None where the exported graphs run),
    the checkpoint the UNet graph must have been exported from, and the number of classes."""

    denoiser: object | None
    classifier: object | None
    checkpoint: Path | None
    classes: int


def build_engine(options: JobOptions, image_shape: tuple[int, int, int], num_classes: int | None = None,
                 image_slots: int = 8, modules: tuple | None = None) -> Engine:
    """The engine for ``options``' models, backend, precision, kernels and device, for images of ``image_shape``.

    ``num_classes`` is used when the classifier does not say (a dataset's class count). ``image_slots``:
    images in flight at once (a server admits many clients' images). Shared by the dataset job, the
    server and cluster workers, so all of them run exactly the same models. ``modules``: (UNet,
    classifier) torch modules on the device to run instead of loading the job's (torch backend; the
    benchmarks' random-weight models of the real architectures), cast to the job's precision here.
    """
    from densepure.kernels import resolve_kernels
    from densepure.models import get_preset
    from densepure.models.sources import ClassifierSpec, load_classifier

    run = options.execution
    preset = get_preset(options.models.preset)
    smoothing = options.smoothing_config(preset.schedule)
    device = resolve_device(run.device)
    kernels = resolve_kernels(run.kernels, device)
    torch_backend = run.backend is BackendKind.TORCH
    classifier, own_classes = None, None
    if modules is not None and not torch_backend:
        raise ConfigError("modules run on the torch backend only")
    if torch_backend:
        classifier = modules[1] if modules is not None else load_classifier(
            ClassifierSpec.parse(options.models.classifier), device, resize=options.models.resize)
        own_classes = classifier.num_classes
        if run.precision.dtype is not torch.float32:  # tf32 keeps float32 weights
            classifier.set_precision(run.precision.dtype)  # most of the work for ViT-sized models
    else:  # the graphs are the models: the classifier itself need not be on this machine
        own_classes = exported_models(run.artifacts, run.precision).num_classes
    classes = own_classes or num_classes
    if classes is None:
        raise ConfigError("cannot tell the number of classes from the classifier or the data")
    if num_classes is not None and own_classes is not None and own_classes < num_classes:
        raise ConfigError(f"the classifier has {own_classes} classes but the data has {num_classes}: "
                          "its labels could never be predicted")
    if modules is not None:
        denoiser, checkpoint = _given_denoiser(modules[0], options, smoothing.needs_denoiser, device, kernels), None
    else:
        denoiser, checkpoint = _denoiser(options, preset, smoothing.needs_denoiser, device, kernels)
    models = _Models(denoiser, classifier, checkpoint, classes)
    shape = tuple(int(d) for d in image_shape)
    slot_bytes = 2 * (smoothing.chains + 2) * math.prod(shape) * 4  # draw pools: 2 draws per row (EngineConfig)
    if torch_backend:
        rows = rows_that_fit(_module_probes(models, shape, device), device, run.batch_size, slot_bytes)
        backends = _backends(options, models, preset=preset, shape=shape, rows=rows, device=device,
                             smoothing=smoothing)
    else:  # the graphs' runtime is measured through the backends themselves
        backends = _backends(options, models, preset=preset, shape=shape, rows=run.batch_size, device=device,
                             smoothing=smoothing)
        rows = rows_that_fit(_backend_probes(backends, shape, device), device, run.batch_size, slot_bytes)
    config = EngineConfig(unet_rows=rows, classifier_rows=rows, draw_capacity=2 * rows, image_slots=image_slots,
                          chain_prefixes=options.sampling.also_chains, lookahead=run.lookahead)
    return Engine(smoothing, backends, shape, device, config, kernels)


def _denoiser(options: JobOptions, preset, needed: bool, device: torch.device, kernels):
    """(the torch UNet or None, the checkpoint path or None). With Triton kernels on CUDA the UNet's
    GroupNorm+SiLU chains run fused; on the CPU they stay torch's (the interpreter is exact but slow)."""
    from densepure.models import build_unet, resolve_checkpoint

    if not needed:
        return None, None
    if options.execution.backend is not BackendKind.TORCH:  # exported backends run the graphs, not the checkpoint
        return None, _checkpoint_to_compare(options, preset)
    checkpoint = resolve_checkpoint(preset, options.models.checkpoint)
    unet = build_unet(preset, checkpoint, device, options.execution.precision.dtype)
    if kernels.name == "triton" and device.type == "cuda":
        unet.set_kernels(kernels)
    return unet, checkpoint


def _given_denoiser(unet, options: JobOptions, needed: bool, device: torch.device, kernels):
    """A UNet module given to :func:`build_engine`, at the job's precision (kernels as :func:`_denoiser`)."""
    if not needed:
        return None
    unet = unet.set_precision(options.execution.precision.dtype)
    if kernels.name == "triton" and device.type == "cuda":
        unet.set_kernels(kernels)
    return unet


def _checkpoint_to_compare(options: JobOptions, preset) -> Path | None:
    """Exported backends: the checkpoint whose sha256 the UNet graph must record, the given one or the one the
    preset ships; None when there is neither (the graph's own checkpoint runs)."""
    from densepure.models import resolve_checkpoint

    try:
        return resolve_checkpoint(preset, options.models.checkpoint)
    except ConfigError:
        return None


def _backends(options: JobOptions, models: _Models, *, preset, shape, rows: int, device: torch.device, smoothing):
    from densepure.engine.backends.select import make_backends
    from densepure.hashing import file_sha256

    run = options.execution
    exported = run.backend is not BackendKind.TORCH
    identity = ModelIdentity(preset.name, shape, models.classes,
                             file_sha256(models.checkpoint) if exported and models.checkpoint is not None else None,
                             options.models.classifier, Pipeline.of(smoothing))
    choice = BackendChoice(run.backend, run.artifacts, run.precision, run.cache_dir, torch.get_num_threads(), rows,
                           run.cuda_graphs, run.compile)
    return make_backends(choice, identity, device, needs_denoiser=smoothing.needs_denoiser, unet=models.denoiser,
                         classifier=models.classifier)


def _inputs(rows: int, shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand((rows, *shape), device=device) * 2 - 1, torch.full((rows,), 100.0, device=device)


def _module_probes(models: _Models, shape, device) -> list:
    """One batch through each torch model (the memory cost of a row of each)."""
    denoiser, classifier = models.denoiser, models.classifier

    def unet(rows: int) -> None:
        with torch.inference_mode():
            denoiser.eps_and_var(*_inputs(rows, shape, device))

    def classify(rows: int) -> None:
        with torch.inference_mode():
            classifier(_inputs(rows, shape, device)[0])

    return [classify] if denoiser is None else [unet, classify]


def _backend_probes(backends, shape, device) -> list:
    """One batch through each exported model, inside its backend's ``with`` block."""
    def through(backend, call):
        def probe(rows: int) -> None:
            with backend, torch.inference_mode():
                call(*_inputs(rows, shape, device))
        return probe

    probes = [through(backends.classifier, lambda x, t: backends.classifier.logits(x))]
    if backends.denoiser is not None:
        probes.insert(0, through(backends.denoiser, backends.denoiser.eps_and_var))
    return probes
