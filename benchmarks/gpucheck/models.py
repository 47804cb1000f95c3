"""Model rates: ``densepure bench models`` per precision (no compile), then the compile stage.

Each run times the UNet and the classifier alone at the rows per call ``certify`` fits to the device
(at most 512; digits at 64 in the rehearsal), with and without CUDA graphs, with their FLOPs and MFU
(against the data sheet's peak of the precision and the matmul rate of that precision measured here),
kernels ``auto`` (fused norms where Triton runs); the models: random weights of the real CIFAR-10
architectures, every parameter perturbed (:mod:`densepure.bench.models`).
"""

from __future__ import annotations

import torch

from gpucheck.bench import bench, dynamo_eager
from gpucheck.report import emit


def _where(device: torch.device, rehearse: bool) -> list[str]:
    if device.type == "cuda":
        return ["--preset", "cifar10", "--random-weights", "--batch-size", "512", "--device", "cuda",
                "--repeats", "3"]
    return ["--preset", "digits", "--batch-size", "64", "--device", "cpu", "--repeats", "1"]


def stage_models(device: torch.device, rehearse: bool) -> dict:
    """Every precision on CUDA (fp32 exact, tf32, fp16, bf16), fp32 and bf16 on the CPU; each run on its own
    (one failing precision leaves the others). The rehearsal adds the GPU's models at batch 1 on the CPU."""
    precisions = ["fp32", "tf32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    out = {}
    for precision in precisions:
        out |= bench(precision, "models", *_where(device, rehearse), "--precision", precision, strict=False)
    if rehearse:
        out["constructors"] = constructors()
    if not any(key.endswith("rows_per_s") for key in out):
        raise RuntimeError("no precision was measured: " + "; ".join(str(v) for k, v in out.items()
                                                                      if k.endswith(" error")))
    return out


def stage_compile(device: torch.device, rehearse: bool) -> dict:
    """``bench models --compile default`` in bf16: both models compiled under the CUDA graphs, as ``certify
    --compile`` runs them (the rehearsal: dynamo with the eager backend, the same path without Inductor)."""
    flags = [*_where(device, rehearse), "--precision", "bf16", "--compile", "default"]
    if rehearse:
        flags[flags.index("64")] = "16"
        with dynamo_eager():
            return bench("compiled bf16", "models", *flags) | {"compiler": "dynamo, eager backend (rehearsal)"}
    return bench("compiled bf16", "models", *flags) | {"compiler": "inductor, mode default"}


def constructors() -> dict:
    """The rehearsal's look at the GPU stages' models (``bench models --preset cifar10 --random-weights`` builds
    them with :func:`densepure.bench.models.random_modules`): one forward of the CIFAR-10 UNet and of the
    ViT-B/16 at 224 at batch 1 on the CPU, their FLOPs (the ViT's analytic and counted) and finiteness."""
    import time

    from densepure.bench.common import classifier_flops, flops_per_row
    from densepure.bench.models import random_modules

    cpu, out = torch.device("cpu"), {}
    start = time.perf_counter()
    unet, clf = random_modules("cifar10", cpu)
    x, t = torch.rand(1, 3, 32, 32) * 2 - 1, torch.full((1,), 500.0)
    with torch.inference_mode():
        eps, v = unet.eps_and_var(x, t)
        logits = clf(x)
    counted, analytic = classifier_flops(clf, x)
    out["cifar10_unet"] = {"gflops": round(flops_per_row(unet.eps_and_var, x, t) / 1e9, 3),
                           "finite": bool(torch.isfinite(eps).all() and torch.isfinite(v).all()),
                           "eps_std": round(float(eps.std()), 4)}
    out["vit_b16_224"] = {"gflops_counted": round(counted / 1e9, 3), "gflops_analytic": round(analytic / 1e9, 3),
                          "finite": bool(torch.isfinite(logits).all()), "logits": list(logits.shape),
                          "label": int(logits.argmax())}
    out["seconds"] = round(time.perf_counter() - start, 2)
    emit(constructors=out)
    return out
