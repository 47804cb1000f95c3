"""Serving latency: the engine loop a server runs, at CIFAR-10 size, then the real HTTP server.

``serve``: ``densepure bench latency --concurrency``: closed-loop clients of one engine of 64 image slots
driven by its own thread, as ``densepure serve``'s engine loop is; it needs no web stack, so it runs on any
image. ``serve_http``: ``densepure serve`` itself (FastAPI and uvicorn, carried to the GPU machine as
wheels: docs/gpu_check.md) under ``densepure bench serve``; without the wheels it says so and returns no
figure.
"""

from __future__ import annotations

import importlib.util

import torch
from common import LocalServer

from gpucheck.bench import bench


def stage_serve(device: torch.device, rehearse: bool) -> dict:
    """Issue 16's GPU target: certify_radius at r = sigma, CIFAR-10-sized DensePure K=10, b=2, bf16, one engine
    of 64 image slots shared by every client; closed-loop clients at concurrency 1 and 16, latency from
    submitting to the answer. Random weights; the random ViT is sure of class 0 (:mod:`densepure.bench.models`),
    so every request certifies at its first look: the common case the target is about."""
    if rehearse:
        flags = ["--K", "2", "--n0", "10", "--n", "100", "--concurrency", "1", "4", "--requests", "2", "4",
                 "--batch-size", "64", "--device", "cpu"]
    else:
        flags = ["--preset", "cifar10", "--random-weights", "--precision", "bf16", "--K", "10", "--n0", "100",
                 "--n", "100000", "--concurrency", "1", "16", "--requests", "8", "48", "--batch-size", "512",
                 "--device", "cuda"]
    out = bench("serve", "latency", "--b", "2", "--sigma", "0.25", "--radius", "0.25", "--image-slots", "64",
                *flags)
    out["p50_at_1_client_s"] = out.get("serve c1.p50_s")
    out["target"] = "CIFAR-10-sized K=10 b=2 certify_radius r=0.25: p50 <= 1 s"
    return out


def stage_serve_http(device: torch.device, rehearse: bool) -> dict:
    """``densepure serve`` on the device (the digits models: the only ones the machine has), one shared engine,
    closed-loop HTTP clients measured by ``densepure bench serve``."""
    missing = [m for m in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"{', '.join(missing)} not importable here: carry the serving wheels (docs/gpu_check.md)"}
    if rehearse:
        server, load = ["--K", "2", "--n0", "10", "--n", "100", "--device", "cpu"], ["--concurrency", "1",
                                                                                     "--requests", "2"]
    else:
        server, load = ["--device", "cuda", "--K", "10", "--b", "2"], ["--concurrency", "1", "16", "--requests",
                                                                        "8", "32"]
    with LocalServer([*server, "--image-slots", "64"], threads=1, ready_timeout=120) as local:
        out = bench("http", "serve", local.url, "--param", "mode=certify_radius", "--timeout", "120", *load)
    out["http_p50_at_1_client_s"] = out.get("http c1.p50_s")
    out["http_p95_at_1_client_s"] = out.get("http c1.p95_s")
    out["server_args"] = [*server, "--image-slots", "64"]
    return out
