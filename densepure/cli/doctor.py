"""``densepure doctor``: what can run here, and why not. Each probe imports its package lazily."""

from __future__ import annotations

import importlib
import platform

from densepure.errors import install_hint


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
            free, total = torch.cuda.mem_get_info(i)
            bf16 = "bf16 yes" if torch.cuda.is_bf16_supported() else "bf16 no"
            lines.append(f"  cuda:{i}       {p.name}, compute capability {p.major}.{p.minor}, "
                         f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free, {bf16}")
    else:
        lines.append("  cuda         unavailable: no CUDA device or a CPU-only torch build")
    return lines


def _kernels_lines() -> list[str]:
    from densepure.kernels import resolve_kernels, triton_status

    device = "cuda" if _cuda() else "cpu"
    status = triton_status(device)
    chosen = resolve_kernels("auto", device)
    state = "available" if status.available else "unavailable"
    return [f"kernels        --kernels auto uses {chosen.name} on {device}; triton {state} ({status.reason})"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _buckets_lines() -> list[str]:
    """The rows per model call and the CUDA-graph buckets the default (digits) job would use here."""
    import torch

    from densepure.artifacts.buckets import bucket_sizes
    from densepure.engine.memory import rows_that_fit
    from densepure.models.classifiers import Classifier, Preprocess
    from densepure.models.digits import load_digits_classifier, load_digits_unet

    device = torch.device("cuda" if _cuda() else "cpu")
    unet = load_digits_unet(device)
    clf = Classifier(load_digits_classifier(device), Preprocess(), num_classes=10)

    def unet_probe(rows: int) -> None:
        with torch.inference_mode():
            unet.eps_and_var(torch.rand(rows, 1, 8, 8, device=device), torch.ones(rows, device=device))

    def clf_probe(rows: int) -> None:
        with torch.inference_mode():
            clf(torch.rand(rows, 1, 8, 8, device=device))

    rows = rows_that_fit([unet_probe, clf_probe], device, cap=500)
    graphs = f"; CUDA-graph buckets {', '.join(map(str, bucket_sizes(rows)))}" if device.type == "cuda" else ""
    return [f"batches        the default digits job: {rows} rows per model call on {device} (--batch-size 500, "
            f"fitted to free memory){graphs}"]


def _onnxruntime_lines() -> list[str]:
    version, why = _version("onnxruntime")
    if version is None:
        return [f"onnxruntime    unavailable ({why}); {install_hint('onnx')}"]
    import onnxruntime

    return [f"onnxruntime    {version}, providers: {', '.join(onnxruntime.get_available_providers())}"]


def _tensorrt_lines() -> list[str]:
    version, why = _version("tensorrt")
    if version is None:
        return [f"tensorrt       unavailable ({why}); needs an NVIDIA GPU; {install_hint('tensorrt')}"]
    return [f"tensorrt       {version}"]


def collect_report() -> list[str]:
    """Lines describing the platform and each backend's availability."""
    from densepure import __version__

    lines = [f"densepure      {__version__}", f"python         {platform.python_version()} on {platform.machine()}"]
    lines += _torch_lines() + _kernels_lines() + _buckets_lines() + _onnxruntime_lines() + _tensorrt_lines()
    for module in ("onnx", "onnxscript", "cuda.bindings", "transformers", "timm", "safetensors", "fastapi", "uvicorn",
                   "prometheus_client", "ray"):
        version, why = _version(module)
        lines.append(f"{module:14s} {version if version else 'unavailable (' + str(why) + ')'}")
    return lines
