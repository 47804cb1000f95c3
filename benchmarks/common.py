"""Shared by the benchmark scripts: the one-line description of the machine a result was taken on."""

from __future__ import annotations

import platform

import torch


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
