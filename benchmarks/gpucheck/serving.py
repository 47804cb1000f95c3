"""Serving latency: the server's engine loop at CIFAR-10 size, then the real HTTP server.

The engine loop is what every HTTP request feeds; it needs no web stack, so it runs on any image.
``densepure serve`` itself needs FastAPI and uvicorn, carried to the GPU machine as wheels
(docs/gpu_check.md); without them the HTTP stage says so and returns no figure.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import torch
import workloads
from common import DIGITS_WEIGHTS, math_record

from densepure.precision import Precision
from gpucheck.report import BENCHMARKS, emit, last_json, stream


class Confident(torch.nn.Module):
    """A network's logits with class 0 ahead by a margin no logit of it reaches: its full cost, a known answer."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        return logits + torch.nn.functional.one_hot(torch.zeros_like(logits[:, 0], dtype=torch.int64),
                                                    logits.shape[1]).to(logits.dtype) * 1e4


def closed_loop(one, clients: int, requests: int) -> tuple[list, float]:
    """``clients`` threads call ``one(i)`` for i = 1 .. ``requests`` back to back; the results and the wall time."""
    results, lock, next_i = [], threading.Lock(), [0]

    def client() -> None:
        while True:
            with lock:
                if next_i[0] >= requests:
                    return
                i = next_i[0] = next_i[0] + 1
            row = one(i)
            with lock:
                results.append(row)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def _level(one, clients: int, requests: int) -> dict:
    rows_out, wall = closed_loop(one, clients, requests)
    if len(rows_out) != requests:
        raise RuntimeError(f"{requests - len(rows_out)} of {requests} requests at concurrency {clients} failed")
    lat, draws = np.array([r[0] for r in rows_out]), np.array([r[1] for r in rows_out])
    return {"requests": requests, "p50_s": round(float(np.percentile(lat, 50)), 4),
            "p95_s": round(float(np.percentile(lat, 95)), 4), "requests_per_s": round(requests / wall, 3),
            "mean_draws": round(float(draws.mean()), 1), "max_draws": int(draws.max()),
            "certified": round(float(np.mean([r[2] for r in rows_out])), 3),
            "draws_per_s": round(float(draws.sum()) / wall, 1),
            "p50_s_per_100_draws": round(float(np.percentile(lat / draws * 100, 50)), 4)}


def stage_serve(device: torch.device, rehearse: bool) -> dict:
    """Issue 16's GPU target: certify_radius at r = sigma through the server's engine loop, CIFAR-10-sized
    DensePure K=10, b=2, bf16, one engine of 64 image slots shared by every client; closed-loop clients at
    concurrency 1 and 16, latency from submitting to the answer. The models have perturbed random weights
    and the classifier's network is wrapped to be sure of class 0 (:class:`Confident`: the ViT's full cost,
    then a margin): every request certifies at its first look, the common case the target is about."""
    from densepure.serve.loop import EngineLoop
    from densepure.serve.params import ServerDefaults, parse_params, task_for

    if rehearse:
        arch, precision, chains, rows, n0, n_max, levels = "digits", "fp32", 2, 64, 10, 100, ((1, 2), (4, 4))
    else:
        arch, precision, chains, rows, n0, n_max, levels = "cifar10", "bf16", 10, 512, 100, 100_000, ((1, 8), (16, 48))
    sigma, built = 0.25, {}
    args = workloads.args_for(arch, rows, chains, 2, sigma)

    def build():
        built["engine"] = workloads.engine_backends(args, precision, device, image_slots=64, wrap_network=Confident)[0]
        return built["engine"]

    loop = EngineLoop(build, max_queue=256, max_queued_draws=10**9)
    loop.start()
    if not loop.wait_ready(timeout=300):
        raise RuntimeError(f"the engine loop did not start: {loop.load_error!r}")
    task = task_for(parse_params({"mode": "certify_radius"},
                                 ServerDefaults(n0, n_max, 0.001, sigma, n0, n_max, 64, False), 1))
    one = _requester(loop, task, sigma, arch)
    out = {"arch": arch, "K": chains, "b": 2, "sigma": sigma, "radius": sigma, "n0": n0, "n_max": n_max,
           "image_slots": 64, **workloads.describe(built["engine"], precision, arch)}
    emit(**out)
    try:
        one(0)  # the first request of each batch size
        for clients, requests in levels:
            out[f"c={clients}"] = _level(one, clients, requests)
            emit(**{f"c={clients}": out[f"c={clients}"]})
    finally:
        loop.drain()
        loop.stop()
    out["p50_at_1_client_s"] = out[f"c={levels[0][0]}"]["p50_s"]
    out["target"] = "CIFAR-10-sized K=10 b=2 certify_radius r=0.25: p50 <= 1 s"
    return out


def _requester(loop, task, sigma: float, arch: str):
    """``one(i)``: submit request ``i`` (one image) to ``loop`` and wait; (seconds, draws, certified class 0)."""
    from densepure.models.digits import load_digits_test_split
    from densepure.serve.loop import Work, WorkResult

    classes, shape = loop.engine.num_classes, loop.engine.image_shape
    images = (load_digits_test_split()[0][:64] if arch == "digits"
              else torch.rand(64, *shape, generator=torch.Generator().manual_seed(0)))

    def one(i: int) -> tuple[float, int, bool]:
        done, box = threading.Event(), []
        work = Work(images[i % len(images)][None].clone(), [task.policy(classes, sigma)], task,
                    lambda outcome: (box.append(outcome), done.set()), task.max_draws)
        start = time.perf_counter()
        loop.submit(work)
        if not done.wait(300) or not isinstance(box[0], WorkResult):
            raise RuntimeError(f"request {i} failed: {box[0] if box else 'no answer in 300 s'}")
        image = box[0].images[0]
        return time.perf_counter() - start, image.draws, image.label == 0

    return one


def stage_serve_http(device: torch.device, rehearse: bool) -> dict:
    """``densepure serve`` on the device (the digits models: the only ones the machine has), one shared engine,
    closed-loop HTTP clients (benchmarks/serve.py, run with ``--partial``)."""
    missing = [m for m in ("fastapi", "uvicorn", "httpx") if not _importable(m)]
    if missing:
        return {"skipped": f"{', '.join(missing)} not importable here: carry the serving wheels (docs/gpu_check.md)"}
    if rehearse:
        argv = ["--concurrency", "1", "--requests", "2", "--server-args", "--K 2 --n0 10 --n 100 --device cpu"]
    else:
        argv = ["--concurrency", "1", "16", "--requests", "8", "32", "--server-args", "--device cuda --K 10 --b 2"]
    code, lines = stream([sys.executable, str(BENCHMARKS / "serve.py"), "--servers", "shared", "--partial",
                          "--timeout", "120", *argv])
    result = last_json(lines)
    if code != 0 or result is None:
        raise RuntimeError(f"serve.py exited {code}: " + "\n".join(lines[-15:]))
    first = result["results"]["shared"][0]
    return {"http_p50_at_1_client_s": first["p50_s"], "http_p95_at_1_client_s": first["p95_s"],
            "weights": DIGITS_WEIGHTS, **math_record(Precision.FP32), **result}


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
