"""The first two stages: the machine's facts (seconds), and ``densepure certify`` end to end on it."""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from densepure.bench.common import copy_bandwidth, matmul_rate
from densepure.kernels import triton_status
from densepure.precision import Precision, tf32_flags
from gpucheck.report import emit, stream


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - why it does not import is the fact
        return f"missing ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"


def _driver() -> dict:
    if shutil.which("nvidia-smi") is None:
        return {"driver": "no nvidia-smi"}
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                           "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    fields = [f.strip() for f in done.stdout.strip().split(",")]
    keys = ("smi_name", "driver", "smi_memory", "max_sm_clock", "power_limit")
    return dict(zip(keys, fields, strict=False)) if done.returncode == 0 else {"driver": done.stderr.strip()[:200]}


def _gpu(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported()}


def _runtimes() -> dict:
    out = {"onnxruntime": _version("onnxruntime")}
    try:
        import onnxruntime

        out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001 - already reported as missing
        pass
    try:
        from densepure.artifacts.machine import import_tensorrt

        out["tensorrt"] = str(import_tensorrt().__version__)
    except Exception as exc:  # noqa: BLE001 - the reason is the fact
        out["tensorrt"] = f"does not import: {str(exc).splitlines()[0][:200]}"
    out["serving_stack"] = {m: _version(m) for m in ("fastapi", "starlette", "pydantic", "uvicorn", "httpx")}
    return out


def stage_env(device: torch.device, rehearse: bool) -> dict:
    """Facts first (docs/gpu_check.md): each group is emitted as soon as it is known."""
    facts = {"device": machine(device), "python": platform.python_version(), "torch": torch.__version__,
             "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
             "pythonpath": os.environ.get("PYTHONPATH", ""), "triton": triton_status(device).reason,
             "tf32_defaults": tf32_flags(), "float32_matmul_precision": torch.get_float32_matmul_precision(),
             "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
    emit(**facts)
    if device.type == "cuda":
        facts |= _gpu(device) | _driver()
        emit(**facts)
    runtimes = _runtimes()
    emit(**runtimes)
    rates = {}
    bandwidth = copy_bandwidth(device)
    if bandwidth is not None:
        rates["d2d_copy_GB_per_s"] = round(bandwidth / 1e9, 1)
        emit(**rates)
    size = 256 if rehearse else 8192
    rates["bf16_matmul_tflops"] = round(matmul_rate(Precision.BF16, device, size) / 1e12, 2)
    rates["bf16_matmul"] = f"measured {size}^3 bf16 matmul on {device.type}, random data (densepure.bench.common)"
    emit(**rates)
    return facts | runtimes | rates


def stage_smoke(device: torch.device, rehearse: bool) -> dict:
    """``densepure certify`` on the device with the shipped digits models, outputs in a temporary folder."""
    size = ["--max", "1", "--n0", "10", "--n", "20", "--K", "2"] if rehearse else \
        ["--max", "2", "--n0", "20", "--n", "100"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-smoke-") as tmp:
        output = Path(tmp) / "smoke.tsv"
        argv = [sys.executable, "-m", "densepure.cli", "certify", *size, "--seed", "1", "--device", device.type,
                "--overwrite", "--output", str(output)]
        start = time.perf_counter()
        code, lines = stream(argv)
        out = {"smoke_exit": code, "smoke_seconds": round(time.perf_counter() - start, 1)}
        emit(**out)
        if output.is_file():
            out["rows"] = output.read_text().splitlines()
            out["recorded"] = _recorded(Path(f"{output}.jsonl"))
    out["tail"] = "\n".join(lines)[-600:]
    return out


def _recorded(sidecar: Path) -> dict:
    """What the result's sidecar says the run computed with (its first record)."""
    if not sidecar.is_file():
        return {}
    first = json.loads(sidecar.read_text().splitlines()[0])
    found = {}

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("precision", "kernels", "backend", "device", "mode") and not isinstance(item, dict):
                    found.setdefault(key, item)
                walk(item)

    walk(first)
    return found
