"""Model rates: UNet and classifier rows/s with MFU per precision (no compile), then the compile stage.

Each MFU is against the measured matmul rate of its own precision (:func:`common.matmul_peak`: fp32
exact, tf32, fp16, bf16), stated beside it. FLOPs per row: the UNet counted by PyTorch's counter, the ViT
analytically and counted with the transformer fast path off (both reported). Models: perturbed random
weights of the real architectures, kernels ``auto`` (fused norms where Triton runs), rows fitted to the
device's memory up to 512 as ``certify`` fits them (digits at 64 rows in the rehearsal).
"""

from __future__ import annotations

import gc
import time

import torch
import workloads
from common import counted_flops, math_record, matmul_peak, peak_note, sync

from densepure.kernels import resolve_kernels
from densepure.noise import gaussian_words
from densepure.precision import Precision
from gpucheck.report import emit


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _plan(device: torch.device, rehearse: bool) -> dict:
    cuda = device.type == "cuda"
    return {"arch": "cifar10" if cuda else "digits", "repeats": 3 if rehearse else 20,
            "unet": list(Precision) if cuda else [Precision.FP32, Precision.BF16],
            "classifier": [Precision.FP32, Precision.TF32, Precision.BF16] if cuda else
            [Precision.FP32, Precision.BF16],
            "graphs": (False, True) if cuda else (False,), "peak_size": 256 if rehearse else 8192}


def peaks(precisions, device: torch.device, size: int) -> dict[Precision, float]:
    out = {}
    for p in precisions:
        out[p] = matmul_peak(p, device, size)
        emit(**{f"peak {p.value} TFLOP/s": round(out[p] / 1e12, 2), f"peak {p.value}": peak_note(p, device, size)})
    return out


def _unet(arch: str, device: torch.device, precision: Precision):
    unet = workloads.load_models(arch, device)[0] if arch == "digits" else workloads.load_unet(arch, device)
    kernels = resolve_kernels("auto", device)
    if kernels.name == "triton" and device.type == "cuda":
        unet.set_kernels(kernels)
    return unet.set_precision(precision.dtype), kernels


def unet_rates(plan: dict, rows: int, shape, device, peak: dict, flops: float) -> dict:
    out = {}
    for p in plan["unet"]:
        unet, kernels = _unet(plan["arch"], device, p)
        out["unet kernels"] = kernels.describe()
        for graphs in plan["graphs"]:
            rate = workloads.unet_forward_rate(unet, rows, shape, device, graphs, plan["repeats"], precision=p)
            figures = {f"unet {p.value} graphs={graphs} rows/s": round(rate, 1),
                       f"unet {p.value} graphs={graphs} mfu": round(rate * flops / peak[p], 4)}
            out |= figures
            emit(**figures)
            _release(device)
        del unet
    return out


def classifier_rates(plan: dict, rows: int, shape, device, peak: dict, flops: float) -> dict:
    out = {}
    for p in plan["classifier"]:
        clf = workloads.load_models(plan["arch"], device)[1] if plan["arch"] == "digits" else \
            workloads.load_classifier(plan["arch"], device)
        clf.set_precision(p.dtype)
        for graphs in plan["graphs"]:
            rate = workloads.classifier_rate(clf, rows, shape, device, graphs, max(3, plan["repeats"] // 2),
                                             precision=p)
            figures = {f"classifier {p.value} graphs={graphs} rows/s": round(rate, 1),
                       f"classifier {p.value} graphs={graphs} mfu": round(rate * flops / peak[p], 4)}
            out |= figures
            emit(**figures)
            _release(device)
    return out


def stage_models(device: torch.device, rehearse: bool) -> dict:
    plan = _plan(device, rehearse)
    arch, (_, shape) = plan["arch"], workloads.geometry(plan["arch"])
    out = {"arch": arch, "weights": workloads.weights(arch), "kernels": resolve_kernels("auto", device).describe(),
           "math": {p.value: math_record(p) for p in Precision}}
    peak = peaks(sorted(set(plan["unet"]) | set(plan["classifier"]), key=list(Precision).index), device,
                 plan["peak_size"])
    unet, clf = workloads.load_models(arch, device)[:2]
    out["rows"] = workloads.fitted_rows(unet, clf, shape, device, 64 if rehearse else 512, 10)
    out["unet_flops"] = counted_flops(unet, torch.randn(1, *shape, device=device), torch.ones(1, device=device))
    out["classifier_flops_counted"] = counted_flops(clf, torch.rand(1, *shape, device=device))
    if arch != "digits":  # the MFU's: the counter misses attention products it has no formula for (CPU SDPA)
        out["classifier_flops_analytic"] = workloads.classifier_flops(arch)
    emit(**out)
    del unet, clf
    _release(device)
    out |= unet_rates(plan, out["rows"], shape, device, peak, out["unet_flops"])
    out |= classifier_rates(plan, out["rows"], shape, device, peak,
                            out.get("classifier_flops_analytic", out["classifier_flops_counted"]))
    if device.type == "cuda":  # channels-last forces layout conversions around every GroupNorm: keep the faster
        unet, _ = _unet(arch, device, Precision.BF16)
        out["unet bf16 graphs=True NCHW rows/s"] = round(workloads.unet_forward_rate(
            unet, out["rows"], shape, device, True, plan["repeats"], channels_last=False, precision=Precision.BF16), 1)
        emit(**{"unet bf16 graphs=True NCHW rows/s": out["unet bf16 graphs=True NCHW rows/s"]})
    out |= _noise_share(out, shape, device)
    if rehearse:
        out["constructors"] = constructors()
    return out


def _noise_share(out: dict, shape, device: torch.device) -> dict:
    rows = out["rows"]
    words = torch.zeros(rows, 6, dtype=torch.int64, device=device)
    words[:, 2] = torch.arange(rows, device=device)
    words[:, 4:] = torch.tensor([12345, 678], device=device)
    from common import median_seconds

    noise = median_seconds(lambda: gaussian_words(words, shape, device), device, 3)
    first = next(k for k in out if k.startswith("unet ") and k.endswith("graphs=False rows/s"))
    figures = {"noise_seconds_per_batch": round(noise, 5),
               "noise_share_of_unet_batch": round(noise / (rows / out[first]), 3)}
    emit(**figures)
    return figures


def constructors() -> dict:
    """The rehearsal's look at the GPU stages' models: one forward of the CIFAR-10 UNet and of the ViT-B/16
    at 224 (batch 1, on the CPU): seconds, finiteness and FLOPs (counted, and analytic for the ViT)."""
    cpu, out = torch.device("cpu"), {}
    unet = workloads.load_unet("cifar10", cpu)
    start = time.perf_counter()
    flops = counted_flops(unet, torch.randn(1, 3, 32, 32), torch.full((1,), 500.0))
    with torch.inference_mode():
        eps, v = unet.eps_and_var(torch.randn(1, 3, 32, 32), torch.full((1,), 500.0))
    out["cifar10_unet"] = {"gflops": round(flops / 1e9, 3), "seconds": round(time.perf_counter() - start, 2),
                           "finite": bool(torch.isfinite(eps).all() and torch.isfinite(v).all()),
                           "eps_std": round(float(eps.std()), 4)}
    emit(constructors=dict(out))
    del unet
    clf = workloads.load_classifier("cifar10", cpu)
    start = time.perf_counter()
    counted = counted_flops(clf, torch.rand(1, 3, 32, 32) * 2 - 1)
    with torch.inference_mode():
        logits = clf(torch.rand(1, 3, 32, 32) * 2 - 1)
    out["vit_b16_224"] = {"gflops_counted": round(counted / 1e9, 3),
                          "gflops_analytic": round(workloads.classifier_flops("cifar10") / 1e9, 3),
                          "seconds": round(time.perf_counter() - start, 2),
                          "finite": bool(torch.isfinite(logits).all()),
                          "logits": list(logits.shape)}
    emit(constructors=out)
    return out


def stage_compile(device: torch.device, rehearse: bool) -> dict:
    """torch.compile of the UNet under the engine's CUDA graphs, bf16 (the rehearsal: dynamo with the
    eager backend on the digits UNet, the same code path without Inductor's C++ build)."""
    from densepure.kernels import compile_module

    plan = _plan(device, rehearse)
    arch, (_, shape) = plan["arch"], workloads.geometry(plan["arch"])
    rows = 64 if rehearse else workloads.fitted_rows(*workloads.load_models(arch, device)[:2], shape, device, 512, 10)
    peak = matmul_peak(Precision.BF16, device, plan["peak_size"])
    flops = counted_flops(workloads.load_models(arch, device)[0], torch.randn(1, *shape, device=device),
                          torch.ones(1, device=device))
    out = {"arch": arch, "rows": rows, "peak bf16 TFLOP/s": round(peak / 1e12, 2), "weights": workloads.weights(arch),
           **math_record(Precision.BF16), "cuda_graphs": device.type == "cuda",
           "compiler": "dynamo, eager backend (rehearsal)" if rehearse else "inductor, mode default"}
    for fused in (False, True):
        unet, kernels = _unet(arch, device, Precision.BF16)
        if not fused:
            unet.set_kernels(None)
        elif kernels.name != "triton":
            continue
        name = "unet bf16 compiled" + (" + fused norms" if fused else "")
        if rehearse:
            unet.compile(backend="eager", dynamic=False)
        else:
            compile_module(unet, shapes=4)
        start = time.perf_counter()
        rate = workloads.unet_forward_rate(unet, rows, shape, device, device.type == "cuda", plan["repeats"],
                                           precision=Precision.BF16)
        figures = {f"{name} rows/s": round(rate, 1), f"{name} mfu": round(rate * flops / peak, 4),
                   f"{name} seconds with compile": round(time.perf_counter() - start, 1)}
        out |= figures
        emit(**figures)
        del unet
        _release(device)
    sync(device)
    return out
