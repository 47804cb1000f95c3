"""The stages of the GPU lease check (``benchmarks/gpu_check.py``, run by ``scripts/gpu_check.sh``).

:data:`STAGES` lists them in the order they run: facts first, compiles and ImageNet last, so a cut-off
call loses the least. Each stage is a function ``(device, rehearse) -> dict`` in one of this package's
modules, run in its own process under a hard time limit; it reports each figure the moment it is
measured (:func:`gpucheck.report.emit`), and the harness keeps those even if the stage is killed. The
measuring stages run ``densepure bench`` (:mod:`gpucheck.bench`): the check measures what users run.
Importing this package imports no torch: the harness that runs the stages stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage: ``function`` as ``module:name`` in this package; ``gpu_s``/``rehearse_s`` its time limits
    (the rehearsal's before ``--slack``); ``rehearsed``: whether the CPU rehearsal runs it; ``returns``:
    what its result holds (docs/gpu_check.md lists them); ``highlights``: keys for the summary table."""

    name: str
    function: str
    gpu_s: float
    rehearse_s: float
    returns: str
    highlights: tuple[str, ...] = ()
    rehearsed: bool = True

    def load(self):
        module, name = self.function.split(":")
        return getattr(importlib.import_module(f"gpucheck.{module}"), name)


STAGES = {s.name: s for s in (
    Stage("env", "env:stage_env", 45, 25, "GPU, driver, torch/CUDA/cuDNN/Triton versions, TF32 defaults, onnxruntime "
          "providers, whether tensorrt and the FastAPI stack import, D2D copy bandwidth, bf16 matmul rate",
          ("gpu", "driver", "d2d_copy_GB_per_s", "bf16_matmul_tflops", "onnxruntime_providers", "tensorrt")),
    Stage("smoke", "env:stage_smoke", 60, 30, "`densepure certify` on the device end to end (in a temporary folder): "
          "exit status, seconds, the result rows, what the sidecar recorded, the output's tail",
          ("smoke_exit", "smoke_seconds", "recorded")),
    Stage("exactness", "exactness:stage_exactness", 90, 30, "counts on the device against the CPU's for every mode, "
          "graphs on/off, torch/Triton kernels, fp32 (must be identical), tf32 and bf16 (size of the differences), "
          "and the TF32 flags seen inside the model calls", ("fp32_identical", "tf32_flags_as_configured")),
    Stage("models", "models:stage_models", 120, 40, "`densepure bench models` per precision: UNet and classifier "
          "rows/s alone at the fitted rows, with and without CUDA graphs, FLOPs per row (ViT analytic and counted), "
          "MFU against the data sheet's and the measured matmul rate of each precision, the noise's share; no compile",
          ("bf16 unet.graphed.rows_per_s", "bf16 unet.graphed.mfu", "bf16 classifier.graphed.rows_per_s",
           "bf16 classifier.graphed.mfu", "bf16 unet.ungraphed.rows_per_s", "bf16 classifier.ungraphed.rows_per_s")),
    Stage("end_to_end", "e2e:stage_end_to_end", 120, 30, "`densepure bench throughput --baseline official`: engine "
          "draws/s against the official loop, both on the device, in bf16, tf32 and fp32, with rows per draw and "
          "call, MFU, capture seconds and certified images/hour", ("ratio bf16 engine / fp32 official",
                                                                  "fp32 ratio.draws_per_s", "bf16 ratio.draws_per_s")),
    Stage("serve", "serving:stage_serve", 90, 30, "`densepure bench latency --concurrency 1 16`: certify_radius "
          "latency through one engine loop of 64 image slots, CIFAR-10-sized DensePure K=10 b=2 bf16",
          ("p50_at_1_client_s", "serve c16.p50_s", "serve c16.requests_per_s")),
    Stage("serve_http", "serving:stage_serve_http", 75, 45, "the real HTTP server (`densepure serve`, digits "
          "models, FastAPI/uvicorn: carried wheels) under `densepure bench serve`: p50/p95 at concurrency 1 and 16",
          ("http_p50_at_1_client_s", "skipped")),
    Stage("gpu_tests", "suites:stage_gpu_tests", 120, 45, "every test marked gpu: per-test outcomes and counts",
          ("passed", "failed", "skipped", "errors")),
    Stage("kernels", "suites:stage_kernels", 90, 50, "`densepure bench kernels` (no compile): each Triton kernel "
          "checked against its torch reference, then timed beside it; UNet forwards, pipeline draws/s",
          ("kernels device.copy_GB_per_s", "kernels unet.fused_norms.pipeline_vs_modules")),
    Stage("compile", "models:stage_compile", 150, 30, "`densepure bench models --compile default` in bf16: both "
          "models compiled under CUDA graphs (fused norms where Triton runs): rows/s, MFU, compile seconds",
          ("compiled bf16 unet.graphed.rows_per_s", "compiled bf16 unet.graphed.capture_s",
           "compiled bf16 unet.ungraphed.rows_per_s")),
    Stage("imagenet", "e2e:stage_imagenet", 90, 0, "`densepure bench throughput` at ImageNet size against the "
          "official loop in bf16", ("imagenet bf16 ratio.draws_per_s",), rehearsed=False),
)}
