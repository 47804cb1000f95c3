"""``densepure bench models``: each model alone at the engine's rows per call: rows/s, FLOPs and MFU.

The models are the ones ``densepure certify`` loads for the same flags (``--random-weights``: the real
architectures with seeded random weights, :mod:`densepure.bench.models`), at the job's precision, kernels,
compile mode and device, with the rows per call ``certify`` fits to the device's memory (at most
``--batch-size``). Each model is timed at a full batch of those rows through the torch backend the engine
uses (channels-last on CUDA, TF32 only for ``--precision tf32``), with CUDA graphs as the job has them
(``graphed``: the one full-batch graph captured, its capture and compile time reported apart as
``capture_s``) and, for comparison, without (``ungraphed``). Reported per model and variant: rows/s,
seconds per call, achieved TFLOP/s and MFU (:func:`densepure.bench.common.mfu_metrics`: against the data
sheet's peak of the precision where known, and against the matmul rate of the same precision measured
here); FLOPs per row, the UNet's counted by PyTorch's counter, the random ViT's analytically (and counted
with the transformer fast path off, both reported); the share of a UNet call that generating its batch's
noise would take. A model whose outputs are not finite is an error: its rate would mean nothing.

The engine's end-to-end rate, with sharing, early exit and both models together, is ``bench throughput``.
"""

from __future__ import annotations

import gc
import time

import torch

from densepure.bench.common import classifier_flops, flops_per_row, mfu_metrics, seconds, sync
from densepure.bench.models import bench_engine, weights_provenance
from densepure.bench.options import BenchRun
from densepure.bench.report import ReportBuilder, Unit
from densepure.engine.backends.select import BackendKind
from densepure.errors import ConfigError
from densepure.models import get_preset


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    """Fill ``builder`` with each model's rates (module doc), each figure as it is measured."""
    from densepure.bench.environment import collect_environment
    from densepure.engine.device import resolve_device

    job = run.job
    if job.execution.backend is not BackendKind.TORCH:
        raise ConfigError("bench models times torch modules (their FLOPs and MFU): leave --backend at torch; "
                          "exported graphs are timed end to end by bench throughput")
    device = resolve_device(job.execution.device)
    builder.environment = collect_environment(device)
    preset = get_preset(job.models.preset)
    shape = (preset.unet_config.in_channels, preset.image_size, preset.image_size)
    engine = bench_engine(run, shape, None, image_slots=1)
    precision, rows = job.execution.precision, engine.config.unet_rows
    denoiser, classifier = engine.backends.denoiser, engine.backends.classifier
    graphs = device.type == "cuda" and denoiser is not None and denoiser.call is not None and denoiser.call.graphs
    builder.configuration.update(engine_rows_per_call=rows, kernels_resolved=engine.kernels.describe(),
                                 cuda_graphs_resolved=graphs, weights=weights_provenance(run),
                                 tf32_in_model_calls=precision.tf32 and device.type == "cuda")
    unet_flops = _flops(builder, engine, shape, device)
    variants = ("graphed", "ungraphed") if graphs else ("ungraphed",)
    x = torch.rand((rows, *shape), generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    t = torch.full((rows,), 300.0, device=device)
    try:
        if denoiser is not None:
            for variant in variants:
                call = _unet_backend(denoiser, rows, variant == "graphed")
                _rate(builder, f"unet.{variant}", call, lambda c: c.eps_and_var(x, t), rows, device, run, unet_flops)
            _noise_share(builder, rows, shape, device, variants[0])
        for variant in variants:
            call = _classifier_backend(classifier, rows, shape, variant == "graphed")
            _rate(builder, f"classifier.{variant}", call, lambda c: (c.logits(x),), rows, device, run,
                  builder.metrics["model.classifier_gflop_per_row"].value * 1e9)
    finally:
        _release(device)
    for model in ("unet", "classifier"):
        builder.ratio(f"ratio.{model}_graphed_vs_ungraphed", f"{model}.graphed.rows_per_s",
                      f"{model}.ungraphed.rows_per_s", f"{model} rows/s with CUDA graphs / without")


def _flops(builder: ReportBuilder, engine, shape, device) -> float | None:
    """FLOPs per row of both models as metrics; the UNet's (None without one)."""
    x = torch.rand((1, *shape), device=device) * 2 - 1
    denoiser = engine.backends.denoiser
    unet = None
    if denoiser is not None:
        unet = flops_per_row(denoiser.model.eps_and_var, x, torch.full((1,), 300.0, device=device))
        builder.metric("model.unet_gflop_per_row", unet / 1e9, Unit.GFLOP_PER_ROW,
                       "UNet FLOPs per row (FlopCounterMode)")
    counted, analytic = classifier_flops(engine.backends.classifier.module, x)
    builder.metric("model.classifier_gflop_per_row", (analytic or counted) / 1e9, Unit.GFLOP_PER_ROW,
                   "classifier FLOPs per row (" + ("analytic: the one MFU uses" if analytic else "FlopCounterMode")
                   + ")")
    if analytic is not None:
        builder.metric("model.classifier_gflop_per_row_counted", counted / 1e9, Unit.GFLOP_PER_ROW,
                       "classifier FLOPs per row by FlopCounterMode, the transformer fast path off")
    return unet


def _unet_backend(engine_denoiser, rows: int, graphs: bool):
    """The engine's UNet module behind a backend of one bucket (``rows``), graphed or not, as the engine sets it."""
    from densepure.engine.backends import TorchDenoiser

    return TorchDenoiser(engine_denoiser.model, channels_last=engine_denoiser.channels_last,
                         buckets=(rows,) if graphs else None, cuda_graphs=graphs, tf32=engine_denoiser.tf32)


def _classifier_backend(engine_classifier, rows: int, shape, graphs: bool):
    from densepure.engine.backends import TorchClassifier

    return TorchClassifier(engine_classifier.module, engine_classifier.num_classes, shape, engine_classifier.device,
                           buckets=(rows,) if graphs else None, cuda_graphs=graphs, tf32=engine_classifier.tf32)


def _rate(builder: ReportBuilder, prefix: str, backend, call, rows: int, device, run: BenchRun,
          flops: float | None) -> None:
    """Capture (graphed), check the outputs are finite, time: ``PREFIX.rows_per_s`` and the rest."""
    sync(device)
    start = time.perf_counter()
    with backend, torch.inference_mode():
        sync(device)
        if backend.call is not None and backend.call.graphs:
            builder.metric(f"{prefix}.capture_s", time.perf_counter() - start, Unit.SECONDS,
                           "capturing the full-batch CUDA graph (compilation included with --compile), not timed")
        if not all(bool(torch.isfinite(o).all()) for o in call(backend)):  # also the warm-up call
            raise ConfigError(f"{prefix}: the model's outputs are not all finite at {run.job.execution.precision.value}"
                              ": its rate would mean nothing")
        spent = seconds(lambda backend=backend: call(backend), device, run.bench.repeats, warm=True)
    builder.metric(f"{prefix}.seconds_per_call", spent, Unit.SECONDS, f"one call of {rows} rows (median)")
    builder.metric(f"{prefix}.rows_per_s", rows / spent, Unit.ROWS_PER_S, f"rows per second at {rows} rows per call")
    if flops is not None:
        achieved = rows / spent * flops / 1e12
        builder.metric(f"{prefix}.model_tflops", achieved, Unit.TFLOP_PER_S, "achieved model TFLOP/s")
        mfu_metrics(builder, prefix, achieved, run.job.execution.precision, device, run.throughput.peak_tflops,
                    prefix.replace(".", " "))
    del backend
    _release(device)


def _noise_share(builder: ReportBuilder, rows: int, shape, device, variant: str) -> None:
    """Seconds to generate one batch's Gaussian noise (the counter-based generator), and its share of a UNet call."""
    from densepure.noise import gaussian_words

    words = torch.zeros(rows, 6, dtype=torch.int64, device=device)
    words[:, 2] = torch.arange(rows, device=device)
    words[:, 4:] = torch.tensor([12345, 678], device=device)
    spent = seconds(lambda: gaussian_words(words, shape, device), device, 3)
    builder.metric("noise.seconds_per_batch", spent, Unit.SECONDS, f"Gaussian noise for {rows} rows (torch path)")
    call = builder.metrics.get(f"unet.{variant}.seconds_per_call")
    if call is not None:
        builder.metric("noise.share_of_unet_call", spent / call.value, Unit.FRACTION,
                       f"noise generation against one {variant} UNet call")


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
