"""``densepure doctor``: what can run here, and why not. Each probe imports its package lazily."""

from __future__ import annotations

import importlib
import platform


def _version(module: str) -> tuple[str | None, str | None]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # report any import failure, it is the answer to "why not"
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return str(getattr(mod, "__version__", "unknown")), None


def _torch_lines() -> list[str]:
    import torch

    lines = [f"torch          {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"  cuda:{i}       {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("  cuda         unavailable: no CUDA device or a CPU-only torch build")
    return lines


def _onnxruntime_lines() -> list[str]:
    version, why = _version("onnxruntime")
    if version is None:
        return [f"onnxruntime    unavailable ({why}); pip install 'densepure[onnx]'"]
    import onnxruntime

    return [f"onnxruntime    {version}, providers: {', '.join(onnxruntime.get_available_providers())}"]


def _tensorrt_lines() -> list[str]:
    version, why = _version("tensorrt")
    if version is None:
        return [f"tensorrt       unavailable ({why}); needs an NVIDIA GPU and pip install 'densepure[tensorrt]'"]
    return [f"tensorrt       {version}"]


def collect_report() -> list[str]:
    """Lines describing the platform and each backend's availability."""
    from densepure import __version__

    lines = [f"densepure      {__version__}", f"python         {platform.python_version()} on {platform.machine()}"]
    lines += _torch_lines() + _onnxruntime_lines() + _tensorrt_lines()
    for module in ("onnx", "onnxscript", "cuda.bindings", "transformers", "timm", "safetensors"):
        version, why = _version(module)
        lines.append(f"{module:14s} {version if version else 'unavailable (' + str(why) + ')'}")
    return lines
