"""Shared by the benchmark scripts: the machine a result was taken on, the models' weights, the rates
results are measured against (matmul peaks per precision, device-to-device copy bandwidth) and FLOP
counts that hold for every module (PyTorch's FLOP counter misses the transformer fast path)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from functools import cache

import torch
from torch import nn

from densepure.precision import Precision, float32_math, tf32_flags

# Random weights stand in for checkpoints no benchmark machine can download. Zero-initialised output
# convolutions (the UNet's ResBlocks, attention projections and head) would make eps exactly 0 and
# half the convolutions multiply zeros: every parameter is perturbed, so timings see real values.
PERTURB_STD = 0.02
RANDOM_WEIGHTS = (f"random: torch.manual_seed(0) init on the device, then every parameter + N(0, {PERTURB_STD}^2) "
                  "(seed 1)")
DIGITS_WEIGHTS = "the shipped digits checkpoints (densepure/assets/digits)"


def machine(device: torch.device | None = None) -> str:
    """GPU name and CUDA version for a CUDA device; otherwise the CPU model and torch's thread count."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def pythonpath(*first: str) -> str:
    """``first`` prepended to this process's ``PYTHONPATH`` (never replacing it: carried wheels live there)."""
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([*first, *([rest] if rest else [])])


@torch.no_grad()
def perturb_(module: nn.Module, std: float = PERTURB_STD, seed: int = 1) -> nn.Module:
    """Add N(0, std^2) noise to every parameter of ``module`` in place, drawn on the parameters' device
    (seeded: the same weights on every run of one device); returns it."""
    generators: dict[torch.device, torch.Generator] = {}
    for p in module.parameters():
        g = generators.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
        p.add_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) * std)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` synchronised calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@cache
def matmul_peak(precision: Precision, device: torch.device, size: int = 8192) -> float:
    """FLOP/s of a ``size``^3 matmul of random data in ``precision`` on ``device`` (fp32: exact float32,
    tf32: TF32 tensor cores): the denominator of every MFU at that precision (measured, not datasheet)."""
    precision = Precision.parse(precision)
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=g, device=device, dtype=precision.dtype) for _ in range(2))
    with float32_math(precision.tf32):
        seconds = median_seconds(lambda: a @ b, device, repeats=5 if device.type == "cuda" else 2)
    return 2 * size**3 / seconds


def peak_note(precision: Precision, device: torch.device, size: int = 8192) -> str:
    return f"measured {size}^3 {Precision.parse(precision).value} matmul on {device.type}, random data"


def copy_bandwidth(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (read + write), 1 GiB buffers; None on the CPU."""
    if device.type != "cuda":
        return None
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), device, 5)


def vit_flops(image: int, patch: int, dim: int, depth: int, classes: int, mlp_ratio: int = 4) -> float:
    """FLOPs (2 x multiply-adds) of one ViT forward (one image), counted analytically: the patch
    embedding, per block the qkv, output and MLP projections (``(4 + 2 * mlp_ratio) d^2`` per token)
    and the attention products (``2 T d`` per token), and the head. Norms, softmax and GELU are left
    out (O(T d), under 0.5%). ViT-B/16 at 224: 35.1 GFLOP."""
    tokens = (image // patch) ** 2 + 1
    embed = (tokens - 1) * 3 * patch * patch * dim
    block = tokens * (4 + 2 * mlp_ratio) * dim * dim + 2 * tokens * tokens * dim
    return 2.0 * (embed + depth * block + dim * classes)


def counted_flops(module: nn.Module, *inputs: torch.Tensor) -> float:
    """FLOPs of ``module(*inputs)`` by PyTorch's FLOP counter, with the transformer fast path off
    (``nn.TransformerEncoderLayer``'s fused inference kernel is invisible to the counter: 0.23 instead
    of 35 GFLOP for a ViT-B/16 row)."""
    from torch.utils.flop_counter import FlopCounterMode

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            module(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(counter.get_total_flops())


def math_record(precision: Precision) -> dict:
    """What a result computed in ``precision`` ran with: the TF32 switches inside its model calls, and the
    process-wide ones outside (PyTorch's defaults unless something changed them)."""
    precision = Precision.parse(precision)
    on = precision.tf32 and precision.dtype is torch.float32
    return {"precision": precision.value, "tf32_in_model_calls": on, "tf32_process_flags": tf32_flags()}
