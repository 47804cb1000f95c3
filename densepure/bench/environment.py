"""The machine a benchmark ran on, for its report: device, driver, CUDA, library versions, CPU, TF32 flags.

Library versions are read from the installed distributions' metadata, so triton, onnxruntime and TensorRT
are never imported here (importing them costs seconds and may initialise a GPU). The load average is
recorded because a shared machine's numbers depend on what else ran.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

import torch

DISTRIBUTIONS = {"torch": ("torch",), "triton": ("triton",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                 "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "numpy": ("numpy",),
                 "mlcommons_loadgen": ("mlcommons-loadgen",), "ray": ("ray",)}


def installed_version(names: tuple[str, ...]) -> str | None:
    """The version of the first installed distribution of ``names``, None when none is."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version (/proc/driver/nvidia/version, else nvidia-smi), None without one."""
    import re

    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            found = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", f.readline())
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def device_info(device: torch.device | None) -> dict[str, object]:
    """The device a run measured: its name, and on CUDA memory, compute capability and driver."""
    if device is None or device.type != "cuda":
        return {"type": "cpu", "name": cpu_model()}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
            "compute_capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "driver": nvidia_driver(), "cuda_runtime": torch.version.cuda}


def collect_environment(device: torch.device | None = None) -> dict[str, object]:
    """Everything about the machine and software a number depends on (module doc)."""
    from densepure import __version__

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "device": device_info(device),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "cores_available": affinity,
                "torch_threads": torch.get_num_threads(), "load_average_1_5_15": load},
        "versions": {"densepure": __version__, "python": platform.python_version(),
                     **{key: installed_version(names) for key, names in DISTRIBUTIONS.items()},
                     "cuda": torch.version.cuda, "cudnn": _cudnn()},
        "tf32": {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32),
                 "float32_matmul_precision": torch.get_float32_matmul_precision()},
        "platform": platform.platform(),
        "hostname_hash": _host(),
    }


def _cudnn() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:
        return None


def _host() -> str:
    """A short hash of the host name: which reports came from one machine, without naming it."""
    import hashlib

    return hashlib.sha256(platform.node().encode()).hexdigest()[:12]

