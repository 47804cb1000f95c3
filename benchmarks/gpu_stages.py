"""The stages of ``benchmarks/gpu_check.py``: each one a function of (device, rehearse) returning a JSON-able
dict of what it measured. On a GPU they run at full size; with ``rehearse`` the same code runs on the CPU
at tiny sizes, so the lease script cannot rot between the sessions that are lent a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402  (benchmarks/ is on the path)
from common import machine  # noqa: E402

from densepure.diffusion import Mode, SmoothingConfig  # noqa: E402
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser  # noqa: E402
from densepure.engine.engine import Engine, EngineConfig, ImageRequest  # noqa: E402
from densepure.engine.policy import FixedPolicy  # noqa: E402
from densepure.kernels import resolve_kernels, triton_status  # noqa: E402
from densepure.models import get_preset  # noqa: E402
from densepure.models.classifiers import Classifier, Preprocess  # noqa: E402
from densepure.models.digits import load_digits_classifier, load_digits_test_split, load_digits_unet  # noqa: E402
from densepure.noise import NoisePhase, gaussian_words  # noqa: E402

ROOT = HERE.parent


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after two warm-ups."""
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def stage_env(device: torch.device, rehearse: bool) -> dict:
    """The machine, and a certify run on the device end to end (the smoke test)."""
    out = {"device": machine(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "triton": triton_status(device).reason}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    size = ["--max", "1", "--n0", "10", "--n", "20", "--K", "2"] if rehearse else ["--max", "2", "--n0", "20", "--n", "100"]
    argv = [sys.executable, "-m", "densepure.cli", "certify", *size, "--seed", "1", "--device", device.type,
            "--overwrite", "--output", str(Path(os.environ["GPU_CHECK_OUT"]) / "smoke.tsv")]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    out.update(smoke_seconds=round(time.perf_counter() - start, 1), smoke_exit=done.returncode,
               smoke_tail=(done.stdout + done.stderr)[-600:])
    return out


_MODELS: dict = {}


def _digits_models(device: torch.device):
    """The shipped digits UNet and classifier on ``device``, loaded once per process."""
    if device not in _MODELS:
        _MODELS[device] = (load_digits_unet(device),
                           Classifier(load_digits_classifier(device), Preprocess(), num_classes=10))
    return _MODELS[device]


def _digits_counts(device: torch.device, mode: Mode, graphs: bool, kernels: str, n: int, images: tuple) -> list:
    """Counts of a few digits images for ``mode`` on ``device`` (fixed seed and noise identities)."""
    unet, clf = _digits_models(device)
    dense = mode is Mode.DENSEPURE
    smoothing = SmoothingConfig(mode, 0.25, 4 if dense else 1, 2 if dense else 1, schedule=get_preset("digits").schedule)
    buckets = (8, 16, 32, 64, 128) if graphs else None
    backends = Backends(TorchDenoiser(unet, buckets=buckets, cuda_graphs=graphs),
                        TorchClassifier(clf, 10, (1, 8, 8), device, buckets=buckets, cuda_graphs=graphs))
    engine = Engine(smoothing, backends, (1, 8, 8), device,
                    EngineConfig(unet_rows=128, classifier_rows=128, draw_capacity=256, image_slots=4),
                    resolve_kernels(kernels, device))
    data, _ = load_digits_test_split()
    phases = {NoisePhase.SELECTION: 10, NoisePhase.ESTIMATION: n}
    requests = [ImageRequest(i, data[i], FixedPolicy(10, phases), 11, noise_id=i) for i in images]
    with torch.inference_mode():
        done = {r.key: r.policy.counts for r in engine.run(requests)}
    return [[done[i][p].tolist() for p in phases] for i in sorted(done)]


def stage_exactness(device: torch.device, rehearse: bool) -> dict:
    """Counts on the device against the CPU's, every mode, fp32 with TF32 off, graphs on and off,
    and with the Triton kernels where they run."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    n, images = (8, (120,)) if rehearse else (400, (0, 120, 225, 390))
    cpu = torch.device("cpu")
    out = {}
    kernel_choices = ["torch"] + (["triton"] if triton_status(device).available and not rehearse else [])
    for mode in Mode:
        want = _digits_counts(cpu, mode, False, "torch", n, images)
        for graphs in ((False, True) if device.type == "cuda" else (False,)):
            for kernels in kernel_choices:
                got = _digits_counts(device, mode, graphs, kernels, n, images)
                same = sum(a == b for a, b in zip(got, want, strict=True))
                out[f"{mode.value} graphs={graphs} kernels={kernels}"] = f"{same}/{len(want)} images identical"
    return out


def _matmul_rate(device: torch.device, rehearse: bool) -> float:
    size = 256 if rehearse else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    seconds = _timed(lambda: a @ b, device, 3 if rehearse else 10)
    return 2 * size**3 / seconds


def stage_models(device: torch.device, rehearse: bool) -> dict:
    """UNet and classifier rows/s, MFU against the measured matmul rate, graphs on and off, eager and
    compiled; the noise generator's share of a UNet step."""
    arch, rows = ("digits", 64) if rehearse else ("cifar10", 512)
    peak = _matmul_rate(device, rehearse)
    out = {"matmul_tflops_measured": round(peak / 1e12, 2), "arch": arch, "rows": rows}
    unet, clf, _, shape, _ = throughput.load_models(arch, device)
    flops = throughput.flops_per_row(unet, shape, device)
    precisions = ["fp32"] if rehearse else ["fp32", "fp16", "bf16"]
    for p in precisions:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]
        model = throughput.load_models(arch, device)[0].set_precision(dtype)
        for graphs in ((False, True) if device.type == "cuda" else (False,)):
            rate = throughput.unet_forward_rate(model, rows, shape, device, graphs, repeats=3 if rehearse else 20)
            out[f"unet {p} graphs={graphs} rows/s"] = round(rate, 1)
            out[f"unet {p} graphs={graphs} mfu"] = round(rate * flops / peak, 4)
    if device.type == "cuda":  # channels-last forces layout conversions around every GroupNorm: keep the faster
        model = throughput.load_models(arch, device)[0].set_precision(torch.bfloat16)
        out["unet bf16 graphs=True NCHW rows/s"] = round(
            throughput.unet_forward_rate(model, rows, shape, device, True, channels_last=False), 1)
    if device.type == "cuda" and not rehearse:
        from densepure.kernels import compile_module

        model = compile_module(throughput.load_models(arch, device)[0].set_precision(torch.bfloat16), shapes=4)
        with torch.inference_mode():
            out["unet bf16 compiled rows/s"] = round(throughput.unet_forward_rate(model, rows, shape, device, True), 1)
    x = torch.rand(rows, *shape, device=device) * 2 - 1
    with torch.inference_mode():
        out["classifier fp32 rows/s"] = round(rows / _timed(lambda: clf(x), device, 3), 1)
    words = torch.zeros(rows, 6, dtype=torch.int64, device=device)
    words[:, 2] = torch.arange(rows, device=device)
    words[:, 4:] = torch.tensor([12345, 678], device=device)
    noise = _timed(lambda: gaussian_words(words, shape, device), device, 3)
    out["noise_seconds_per_batch"] = round(noise, 5)
    out["noise_share_of_unet_batch"] = round(noise / (rows / out[f"unet {precisions[0]} graphs=False rows/s"]), 3)
    out["unet_gflops_per_row"] = round(flops / 1e9, 3)
    return out


def stage_end_to_end(device: torch.device, rehearse: bool) -> dict:
    """Draws/s of the engine against the faithful official loop, both on this device; the official
    loop in fp32 and bf16 so the algorithm's gain and precision's gain show apart."""
    args = ["--device", device.type, "--repeats", "1", "--K", "10", "--b", "2"]
    if rehearse:
        args += ["--arch", "digits", "--images", "1", "--n0", "10", "--n", "30", "--precision", "fp32", "--threads", "1"]
    else:
        args += ["--arch", "cifar10", "--images", "2", "--n0", "10", "--n", "490", "--rows", "512",
                 "--precision", "fp32", "bf16", "--official-precision", "fp32", "bf16"]
    done = subprocess.run([sys.executable, str(HERE / "throughput.py"), *args], capture_output=True, text=True,
                          timeout=None, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-1500:])
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


class _Confident(torch.nn.Module):
    """A network's logits with class 0 ahead by a margin no logit of it reaches: its full cost, a known answer."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        return logits + torch.nn.functional.one_hot(torch.zeros_like(logits[:, 0], dtype=torch.int64),
                                                    logits.shape[1]).to(logits.dtype) * 1e4


def _closed_loop(one, clients: int, requests: int) -> tuple[list, float]:
    """``clients`` threads call ``one(i)`` for i = 1 .. ``requests`` back to back; the results and the wall time."""
    import threading

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


def stage_serve(device: torch.device, rehearse: bool) -> dict:
    """Issue 16's GPU target: certify_radius at r = sigma through the server's engine loop (the loop every
    HTTP request feeds; the GPU image has no FastAPI), CIFAR-10-sized DensePure K=10, b=2, bf16, one engine
    of 64 image slots shared by every client; closed-loop clients at concurrency 1 and 16, latency from
    submitting to the answer. No checkpoint can reach the machine, so the models have random weights and
    the classifier's network is wrapped to be sure of class 0 (:class:`_Confident`: the ViT's full cost,
    then a margin): every request is an image whose certificate the test gives at its first look, the
    common case the target is about; its draws and seconds per 100 draws are reported beside the time."""
    import threading
    from types import SimpleNamespace

    from densepure.serve.loop import EngineLoop, Work, WorkResult
    from densepure.serve.params import ServerDefaults, parse_params, task_for

    if rehearse:
        arch, precision, chains, rows, n0, n_max, levels = "digits", "fp32", 2, 64, 10, 100, ((1, 2), (4, 4))
    else:
        arch, precision, chains, rows, n0, n_max, levels = "cifar10", "bf16", 10, 512, 100, 100_000, ((1, 8), (16, 48))
    sigma = 0.25
    args = SimpleNamespace(arch=arch, sigma=sigma, K=chains, b=2, rows=rows, cuda_graphs=device.type == "cuda")
    loop = EngineLoop(lambda: throughput.engine_backends(args, precision, device, image_slots=64,
                                                         wrap_network=_Confident)[0],
                      max_queue=256, max_queued_draws=10**9)
    loop.start()
    if not loop.wait_ready(timeout=300):
        raise RuntimeError(f"the engine loop did not start: {loop.load_error!r}")
    task = task_for(parse_params({"mode": "certify_radius"},
                                 ServerDefaults(n0, n_max, 0.001, sigma, n0, n_max, 64, False), 1))
    classes = loop.engine.num_classes
    shape = loop.engine.image_shape
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

    out = {"arch": arch, "precision": precision, "K": chains, "b": 2, "sigma": sigma, "radius": sigma, "n0": n0,
           "n_max": n_max, "image_slots": 64, "rows": rows}
    try:
        one(0)  # the first request of each batch size (and graph bucket)
        for clients, requests in levels:
            rows_out, wall = _closed_loop(one, clients, requests)
            lat = np.array([r[0] for r in rows_out])
            draws = np.array([r[1] for r in rows_out])
            if len(lat) != requests:
                raise RuntimeError(f"{requests - len(lat)} of {requests} requests at concurrency {clients} failed")
            out[f"c={clients}"] = {
                "requests": requests, "p50_s": round(float(np.percentile(lat, 50)), 4),
                "p95_s": round(float(np.percentile(lat, 95)), 4), "requests_per_s": round(requests / wall, 3),
                "mean_draws": round(float(draws.mean()), 1), "max_draws": int(draws.max()), "certified": round(float(np.mean([r[2] for r in rows_out])), 3),
                "draws_per_s": round(float(draws.sum()) / wall, 1),
                "p50_s_per_100_draws": round(float(np.percentile(lat / draws * 100, 50)), 4)}
    finally:
        loop.drain()
        loop.stop()
    first = out[f"c={levels[0][0]}"]
    out["p50_at_1_client_s"] = first["p50_s"]
    out["target"] = "CIFAR-10-sized K=10 b=2 certify_radius r=0.25: p50 <= 1 s"
    return out


def stage_gpu_tests(device: torch.device, rehearse: bool) -> dict:
    """The ``gpu``-marked tests (on the CPU they skip, which the rehearsal checks they still collect)."""
    where = ["tests/engine/test_syncs.py", "tests/noise/test_noise.py"] if rehearse else ["tests"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *where],
                          capture_output=True, text=True, cwd=ROOT)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    return {"exit": done.returncode, "summary": tail}


def stage_extra(device: torch.device, rehearse: bool) -> dict:
    """If time is left: ImageNet-sized throughput and the kernel benchmark."""
    out = {}
    if rehearse:
        argv = [str(HERE / "kernels.py"), "--device", "cpu", "--arch", "tiny", "--rows", "2", "--repeats", "1"]
    else:
        argv = [str(HERE / "kernels.py"), "--arch", "cifar10", "--rows", "512", "--precision", "fp16", "--repeats", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"TRITON_INTERPRET": "1"} if rehearse else {})}
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env)
    out["kernels"] = (done.stdout + done.stderr)[-2500:]
    if not rehearse:
        done = subprocess.run([sys.executable, str(HERE / "throughput.py"), "--arch", "imagenet", "--precision",
                               "bf16", "--images", "1", "--n0", "8", "--n", "56", "--rows", "64", "--repeats", "1"],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        out["imagenet"] = (done.stdout + done.stderr)[-1500:]
    return out


STAGES = {  # name: (function, seconds on a GPU, seconds in the rehearsal)
    "env": (stage_env, 60, 45),
    "exactness": (stage_exactness, 90, 30),
    "models": (stage_models, 120, 30),
    "end_to_end": (stage_end_to_end, 120, 30),
    "serve": (stage_serve, 90, 30),
    "gpu_tests": (stage_gpu_tests, 60, 30),
    "extra": (stage_extra, 120, 60),
}
