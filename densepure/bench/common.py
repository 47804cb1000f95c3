"""What the measuring subcommands share: progress bars, device timing and memory, percentiles, model FLOPs
(counted with the transformer fast path off, or analytic for a ViT) and the rates results are measured
against: the data sheets' peaks, the measured matmul rate of each precision and the device's copy bandwidth."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from functools import cache

import numpy as np
import torch

from densepure.bench.models import BenchImages
from densepure.certify.runner import certify_images
from densepure.certify.tasks import CertifyTask
from densepure.precision import Precision, float32_math

# Dense tensor-core peaks in TFLOP/s (vendor data sheets, no sparsity): (fp16/bf16, tf32, fp32 without
# tensor cores). Matched against the device name, the first key that occurs in it wins.
PEAK_TFLOPS = {
    "H200": (989.4, 494.7, 66.9),
    "H100 PCIe": (756.0, 378.0, 51.2),
    "H100 NVL": (835.0, 417.5, 60.0),
    "H100": (989.4, 494.7, 66.9),  # SXM5
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "L4": (121.0, 60.0, 30.3),
}


def peak_tflops(device_name: str, precision: Precision, tf32: bool) -> float | None:
    """The device's peak for ``precision`` (fp32: the TF32 tensor-core peak when ``tf32`` is allowed for
    convolutions and matmuls, else the plain fp32 peak); None for a device not in :data:`PEAK_TFLOPS`."""
    for key, (half, tf32_peak, fp32) in PEAK_TFLOPS.items():
        if key in device_name:
            if precision in (Precision.FP16, Precision.BF16):
                return half
            return tf32_peak if tf32 else fp32
    return None


def progress_bar(total: int | None, desc: str, unit: str = "draw"):
    """A tqdm bar on stderr (refreshed at most once a second: logs stay short)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, leave=False,
                mininterval=1.0, file=sys.stderr)


def now(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): CUDA's peak allocation since the last reset, or on the CPU the process's peak
    resident set size over its whole life (Linux reports kilobytes)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "peak CUDA memory allocated by torch during the run"
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale), \
        "peak resident memory of the whole process so far (models, data and both sides included)"


def percentiles(values, points=(50, 90, 95, 99)) -> dict[int, float]:
    """``{p: the p-th percentile}`` (linear interpolation) of a non-empty sequence."""
    arr = np.asarray(list(values), dtype=np.float64)
    return {p: float(np.percentile(arr, p)) for p in points}


class IndexedImages:
    """The benchmark's images as the dataset ``densepure.certify.runner`` reads: ``[index] -> (image, label)``."""

    def __init__(self, images: BenchImages):
        self._by_index = {i: (x, y) for i, x, y in zip(images.indices, images.images, images.labels, strict=True)}
        self.name, self.num_classes = images.source, images.classes

    def __len__(self) -> int:
        return len(self._by_index)

    def __getitem__(self, index: int):
        return self._by_index[index]


def flops_per_row(call, *inputs) -> float:
    """FLOPs of ``call(*inputs)`` for one row by torch's FlopCounterMode (matmuls and convolutions), with the
    transformer fast path off: ``nn.TransformerEncoderLayer``'s fused inference kernel is invisible to the
    counter (0.23 instead of 35 GFLOP for a ViT-B/16 row); compiled modules run eagerly."""
    from torch.utils.flop_counter import FlopCounterMode

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False)
        # a compiled module runs eagerly here: counting must not compile a batch size of 1
        with counter, torch.inference_mode(), torch.compiler.set_stance("force_eager"):
            call(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(counter.get_total_flops())


def classifier_flops(classifier, x: torch.Tensor) -> tuple[float, float | None]:
    """(counted, analytic or None) FLOPs per row of a classifier module on ``x`` (1, C, H, W); analytic for
    the random ViT of :mod:`densepure.bench.models` (its ``flops()``: :func:`~densepure.bench.models.vit_flops`)."""
    network = getattr(classifier, "network", classifier)
    analytic = network.flops() if hasattr(network, "flops") else None
    return flops_per_row(classifier, x), analytic


def model_flops(engine) -> tuple[float | None, float | None]:
    """(UNet, classifier) FLOPs per row of a torch-backend engine's models (the classifier's analytic count
    where there is one); None where not torch modules."""
    shape, device = engine.image_shape, engine.device
    x = torch.rand((1, *shape), device=device) * 2 - 1
    denoiser = getattr(engine.backends.denoiser, "model", None)
    classifier = getattr(engine.backends.classifier, "module", None)
    unet = None if denoiser is None else flops_per_row(denoiser.eps_and_var, x, torch.full((1,), 100.0, device=device))
    clf = None
    if classifier is not None:
        counted, analytic = classifier_flops(classifier, x)
        clf = analytic if analytic is not None else counted
    return unet, clf


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device, repeats: int, budget: float = 0.2, warm: bool = False) -> float:
    """Median seconds per call: a warm-up call (compiles, autotunes; ``warm``: the caller made it), then
    ``repeats`` timings of enough calls to fill ``budget`` seconds each (at most 200)."""
    sync(device)
    t0 = time.perf_counter()
    if not warm:
        fn()
        sync(device)
    if warm or time.perf_counter() - t0 < budget:  # time one warm call to size the inner loop
        t0 = time.perf_counter()
        fn()
        sync(device)
    inner = max(1, min(200, int(budget / max(time.perf_counter() - t0, 1e-6))))
    runs = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        runs.append((time.perf_counter() - t0) / inner)
    return statistics.median(runs)


def copy_bandwidth(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (read + write), 1 GiB buffers; None off CUDA."""
    if device.type != "cuda":
        return None
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / seconds(lambda: dst.copy_(src), device, 5)


def matmul_size(device: torch.device) -> int:
    """The square matmul that measures a device's rate: 8192 on a GPU, 1024 on a CPU (seconds, not minutes)."""
    return 8192 if device.type == "cuda" else 1024


@cache
def matmul_rate(precision: Precision, device: torch.device, size: int | None = None) -> float:
    """FLOP/s of a ``size``^3 matmul of random data in ``precision`` on ``device`` (fp32: exact float32, tf32:
    TF32 tensor cores): what a model in that precision could reach at best here, measured, not a data sheet's."""
    precision = Precision.parse(precision)
    size = size or matmul_size(device)
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=g, device=device, dtype=precision.dtype) for _ in range(2))
    with float32_math(precision.tf32), torch.inference_mode():
        spent = seconds(lambda: a @ b, device, repeats=5 if device.type == "cuda" else 2)
    return 2 * size**3 / spent


def mfu_metrics(builder, prefix: str, achieved_tflops: float, precision: Precision, device: torch.device,
                peak_override: float | None, what: str) -> None:
    """``PREFIX.mfu`` against the data sheet's peak of ``precision`` (or ``--peak-tflops``) where known, and
    ``PREFIX.mfu_of_matmul`` against the measured matmul rate of the same precision (CUDA; the rate is
    reported once as ``device.matmul_tflops.PRECISION``). Each description names its peak."""
    from densepure.bench.report import Unit

    precision = Precision.parse(precision)
    if device.type == "cuda":
        tf32 = precision.tf32  # the engine sets the flags around its calls: the precision decides
        peak = peak_override or peak_tflops(torch.cuda.get_device_name(device), precision, tf32)
        if peak:
            source = "--peak-tflops" if peak_override else "the data sheet"
            builder.metric(f"{prefix}.mfu", achieved_tflops / peak, Unit.FRACTION,
                           f"{what}: model FLOP utilisation against {peak:g} TFLOP/s ({precision.value}, {source})")
        else:
            builder.note(f"no data-sheet MFU for {prefix}: pass --peak-tflops for this GPU")
    key = f"device.matmul_tflops.{precision.value}"
    if key not in builder.metrics:
        size = matmul_size(device)
        builder.metric(key, matmul_rate(precision, device) / 1e12, Unit.TFLOP_PER_S,
                       f"measured {size}^3 {precision.value} matmul of random data on {device.type}")
    measured = builder.metrics[key].value
    builder.metric(f"{prefix}.mfu_of_matmul", achieved_tflops / measured, Unit.FRACTION,
                   f"{what}: against the measured {precision.value} matmul rate ({measured:.3g} TFLOP/s)")


def warm_up(engine, images: BenchImages, task, seed: int) -> None:
    """The first image once through ``engine`` (not counted): the first batches of each size run, CUDA
    graphs are captured. A fixed-n task is cut to at most two full batches of draws."""
    if isinstance(task, CertifyTask):
        rows = engine.config.unet_rows
        task = CertifyTask(min(task.n0, rows), min(task.n, 2 * rows), task.alpha)
    with torch.inference_mode():
        for _ in certify_images(engine, IndexedImages(images), images.indices[:1], task, seed):
            pass
