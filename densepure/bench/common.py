"""What the measuring subcommands share: progress bars, device timing and memory, percentiles, model FLOPs
and the peak FLOP rates MFU is measured against."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch

from densepure.bench.models import BenchImages
from densepure.certify.runner import certify_images
from densepure.certify.tasks import CertifyTask
from densepure.precision import Precision

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
    """FLOPs of ``call(*inputs)`` for one row (torch's FlopCounterMode: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        call(*inputs)
    return float(counter.get_total_flops())


def model_flops(engine) -> tuple[float | None, float | None]:
    """(UNet, classifier) FLOPs per row of a torch-backend engine's models; None where not torch modules."""
    shape, device = engine.image_shape, engine.device
    x = torch.rand((1, *shape), device=device) * 2 - 1
    denoiser = getattr(engine.backends.denoiser, "model", None)
    classifier = getattr(engine.backends.classifier, "module", None)
    unet = None if denoiser is None else flops_per_row(denoiser.eps_and_var, x, torch.full((1,), 100.0, device=device))
    clf = None if classifier is None else flops_per_row(classifier, x)
    return unet, clf


def warm_up(engine, images: BenchImages, task, seed: int) -> None:
    """The first image once through ``engine`` (not counted): the first batches of each size run, CUDA
    graphs are captured. A fixed-n task is cut to at most two full batches of draws."""
    if isinstance(task, CertifyTask):
        rows = engine.config.unet_rows
        task = CertifyTask(min(task.n0, rows), min(task.n, 2 * rows), task.alpha)
    with torch.inference_mode():
        for _ in certify_images(engine, IndexedImages(images), images.indices[:1], task, seed):
            pass
