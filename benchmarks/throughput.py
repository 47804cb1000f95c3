"""Draws per second: the engine vs a faithful re-implementation of the official DensePure control flow.

The official protocol (what the research code does): K full certification passes, one per reverse
seed; in each pass the draws of an image are processed in batches of ``--official-batch`` (100 for
CIFAR-10, 16 for ImageNet), each batch = noise, b sequential UNet calls on the whole batch (fresh
noise from the global generator between steps), one classifier call; eager; labels are voted
across the K passes at the end. Same models, same images, same N, same machine, one process; each
side at each precision computes with that precision's float32 math (``fp32`` exact, ``tf32`` TF32).

The engine: the shared first step, exact early exit of the vote, batches refilled across images,
optionally tf32/fp16/bf16, channels-last and CUDA graphs per batch bucket, classifier on a second
stream, built as users get it (:mod:`workloads`: ``--kernels auto``, rows fitted to memory up to
``--rows``). Graph capture happens once when the engine starts and is reported apart, not timed.

Defaults: CPU, the shipped digits models. ``--arch cifar10|imagenet`` uses the real UNet
architectures and a ViT-B/16 at 224 (CIFAR-10) or a ViT-L/16-sized classifier at 512 (the BEiT-L/16
of the ImageNet papers), random weights with every parameter perturbed, meant for a GPU. On CUDA the
report adds UNet forwards/s at the engine's rows, model FLOP utilisation against the measured matmul
rate of the same precision (``common.matmul_peak``; ``--peak-tflops`` overrides it) and certified
images/hour at N0=100, N=100,000.

Usage: python benchmarks/throughput.py [--arch digits|cifar10|imagenet] [--device cpu|cuda]
       [--precision fp32|tf32|fp16|bf16 ...] [--images 4] [--n 1000] [--K 10] [--b 2]
The last line printed is a JSON object with every number; with ``--partial`` each figure is also
printed as a ``{"partial": {...}}`` line the moment it is measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time

import numpy as np
import torch
import workloads
from common import machine, math_record, matmul_peak, peak_note, sync
from workloads import ARCH, activate, describe, engine_backends, load_models, unet_forward_rate

from densepure.certify.tasks import CertifyTask
from densepure.diffusion import (
    GridTables,
    TStarRule,
    build_reverse_grid,
    start_scale,
    step_mean_std,
    t_star,
)
from densepure.engine.engine import Engine, ImageRequest
from densepure.precision import Precision, float32_math

PRECISIONS = [p.value for p in Precision]


@torch.inference_mode()
def official_loop(unet, clf, schedule, images, sigma, k, b, n, batch, device, tf32: bool = False) -> float:
    """Seconds for the official control flow on ``images`` (n draws each); returns the wall time."""
    grid = build_reverse_grid(schedule, t_star(sigma, schedule, TStarRule.AUTO), b)
    tables = GridTables(grid, device)
    scale = math.sqrt(start_scale(sigma))
    sync(device)
    start = time.perf_counter()
    with float32_math(tf32):
        for x in images:
            labels = np.zeros((k, n), dtype=np.int64)
            for seed in range(k):  # one full certification pass per reverse seed
                torch.manual_seed(seed)
                for lo in range(0, n, batch):
                    labels[seed, lo:lo + min(batch, n - lo)] = _official_batch(
                        unet, clf, grid, tables, x, scale, sigma, min(batch, n - lo), device)
            _vote(labels)
    sync(device)
    return time.perf_counter() - start


def _official_batch(unet, clf, grid, tables, x, scale, sigma, m, device) -> np.ndarray:
    xb = x.to(device).unsqueeze(0).repeat(m, 1, 1, 1)
    y = scale * (2.0 * (xb + sigma * torch.randn_like(xb)) - 1.0)
    for i in range(grid.num_steps):
        c = tables.gather(torch.full((m,), i, dtype=torch.int64, device=device))
        eps, v = unet.eps_and_var(y, c.model_time)
        mean, std, _ = step_mean_std(y, eps, v, c)
        y = mean + std * torch.randn_like(mean) if grid.has_noise[i] else mean
    return clf(y.clamp(-1, 1).to(torch.float32)).argmax(1).cpu().numpy()


def _vote(labels: np.ndarray) -> np.ndarray:
    """Per-draw majority over the passes (ties: the first pass's label among the tied)."""
    out = np.empty(labels.shape[1], dtype=np.int64)
    for d in range(labels.shape[1]):
        col = labels[:, d].tolist()
        counts = np.bincount(col)
        out[d] = next(lab for lab in col if counts[lab] == counts.max())
    return out


def engine_seconds(engine: Engine, images, args) -> float:
    task = CertifyTask(args.n0, args.n, 0.001)
    sync(engine.device)
    start = time.perf_counter()
    requests = (ImageRequest(i, x, task.policy(engine.num_classes, args.sigma), 0, noise_id=i)
                for i, x in enumerate(images))
    for _ in engine.run(requests):
        pass
    sync(engine.device)
    return time.perf_counter() - start


def flops_per_row(unet, shape, device) -> float:
    from common import counted_flops

    return counted_flops(unet, torch.randn(1, *shape, device=device), torch.ones(1, device=device))


def _images(args, shape) -> list[torch.Tensor]:
    if args.arch == "digits":
        from densepure.models.digits import load_digits_test_split

        all_images, _ = load_digits_test_split()
        return [all_images[i] for i in np.linspace(0, len(all_images) - 1, args.images).astype(int)]
    g = torch.Generator().manual_seed(0)
    return [torch.rand(shape, generator=g) for _ in range(args.images)]


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Engines:
    """The engines to time, one per precision: kept across repeats on the CPU (cheap, and alternation
    needs them), built and released for each use on a GPU (graph pools of several engines at full rows
    would not fit together)."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.kept, self.capture_s, self.rows_run = args, device, {}, {}, {}

    def seconds(self, p: Precision, images) -> tuple[float, Engine]:
        engine = self.kept.get(p) or engine_backends(self.args, p, self.device)[0]
        before = engine.stats
        self.capture_s.setdefault(p, activate(engine))
        try:
            seconds = engine_seconds(engine, images, self.args)
        finally:
            engine.__exit__(None, None, None)
        after = engine.stats
        runs = self.rows_run.setdefault(p, [0, 0])
        runs[0] += after.unet_rows - before.unet_rows
        runs[1] += after.classifier_rows - before.classifier_rows
        if self.device.type == "cpu":
            self.kept[p] = engine
        return seconds, engine


def measure(args, emit=lambda **figures: None) -> dict:
    """Every number of the benchmark (module docstring); each figure is passed to ``emit`` as it is measured."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    engine_p = [Precision.parse(p) for p in args.precision]
    official_p = [Precision.parse(p) for p in args.official_precision]
    batch = args.official_batch or (ARCH[args.arch][2] if args.arch in ARCH else 100)
    schedule, shape = workloads.geometry(args.arch)
    images, draws = _images(args, shape), args.images * (args.n0 + args.n)
    officials = {p: workloads.cast(*load_models(args.arch, device)[:2], p) for p in official_p}
    engines = _Engines(args, device)
    official_s, engine_s, last = {p: [] for p in official_p}, {p: [] for p in engine_p}, {}
    for _ in range(args.repeats):  # alternate, so drifts in machine speed hit both sides alike
        for p, (o_unet, o_clf) in officials.items():
            official_s[p].append(official_loop(o_unet, o_clf, schedule, images, args.sigma, args.K, args.b,
                                               args.n0 + args.n, batch, device, p.tf32))
            emit(**{f"official {p.value} draws/s": round(draws / official_s[p][-1], 2)})
        for p in engine_p:
            seconds, last[p] = engines.seconds(p, images)
            engine_s[p].append(seconds)
            emit(**{f"engine {p.value} draws/s": round(draws / seconds, 2)})
            if device.type == "cuda":
                last[p] = describe(last[p], p, args.arch) | _unet_alone(args, last[p], p, shape, device, emit)
                _release(device)
            else:
                last[p] = describe(last[p], p, args.arch)
    return _report(args, device, batch, draws, official_s, engine_s, engines, last)


def _unet_alone(args, engine: Engine, p: Precision, shape, device, emit) -> dict:
    """UNet forwards/s at the engine's rows, its FLOPs and MFU against this precision's measured peak."""
    unet = engine.backends.denoiser.model
    rows, graphs = engine.config.unet_rows, engine.backends.denoiser.call is not None
    rate = unet_forward_rate(unet, rows, shape, device, graphs, precision=p)
    flops = flops_per_row(unet, shape, device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(p, device)
    row = {"unet_rows_per_s": rate, "unet_gflops_per_row": flops / 1e9, "mfu": rate * flops / peak,
           "mfu_peak_tflops": peak / 1e12,
           "mfu_peak": f"--peak-tflops {args.peak_tflops:g}" if args.peak_tflops else peak_note(p, device)}
    emit(**{f"engine {p.value} unet rows/s": round(rate, 1), f"engine {p.value} unet mfu": round(row["mfu"], 4)})
    return row


def _report(args, device, batch, draws, official_s, engine_s, engines: _Engines, last) -> dict:
    ref = next(iter(official_s))
    official = float(np.median(official_s[ref]))
    out = {"arch": args.arch, "device": machine(device), "K": args.K, "b": args.b, "images": args.images,
           "n0": args.n0, "n": args.n, "official_batch": batch, "engine_rows_cap": args.rows,
           "repeats": args.repeats, "weights": workloads.weights(args.arch),
           "official_draws_per_s": draws / official, "official_reference": ref.value,
           "official": {p.value: draws / float(np.median(t)) for p, t in official_s.items()},
           "official_math": {p.value: math_record(p) for p in official_s}, "engine": {}}
    print(f"{args.arch} on {out['device']}: K={args.K}, b={args.b}, {args.images} images x {args.n0 + args.n} "
          f"draws, median of {args.repeats} alternating runs")
    for p, rate in out["official"].items():
        print(f"  official protocol ({p}, eager, batch {batch}): {rate:10.1f} draws/s")
    for p, times in engine_s.items():
        seconds = float(np.median(times))
        unet_rows, cls_rows = engines.rows_run[p]
        row = {"draws_per_s": draws / seconds, "speedup": official / seconds,
               "unet_rows_per_draw": unet_rows / draws / args.repeats,
               "classifier_rows_per_draw": cls_rows / draws / args.repeats,
               "capture_s": engines.capture_s[p], **last[p]}
        if "unet_rows_per_s" in row:
            row["certified_images_per_hour_n100k"] = 3600 * row["draws_per_s"] / 100_100
        print(f"  engine ({p.value}, rows {row['rows']}{', CUDA graphs' if row['cuda_graphs'] else ''}, "
              f"kernels {row['kernels'].split(' (')[0]}): {row['draws_per_s']:10.1f} draws/s   "
              f"ratio engine / official: {row['speedup']:.2f}x")
        if "unet_rows_per_s" in row:
            print(f"    UNet alone: {row['unet_rows_per_s']:.0f} rows/s at batch {row['rows']}, "
                  f"{row['unet_gflops_per_row']:.2f} GFLOP/row, MFU {100 * row['mfu']:.1f}% of "
                  f"{row['mfu_peak_tflops']:.0f} TFLOP/s ({row['mfu_peak']}); certified images/hour at N0=100, "
                  f"N=100,000: {row['certified_images_per_hour_n100k']:.2f}")
        out["engine"][p.value] = row
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["digits", "cifar10", "imagenet"], default="digits")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"], help="engine precisions")
    ap.add_argument("--official-precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                    help="precisions of the official loop (its models cast as the engine's are); the first is the "
                         "reference of the speedups")
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--b", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--rows", type=int, default=512, help="engine rows per model call, at most (fitted to memory)")
    ap.add_argument("--official-batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="MFU denominator (default: the measured matmul rate of each precision)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--partial", action="store_true", help="also print each figure as it is measured")
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def emit(**figures) -> None:
        if args.partial:
            print(json.dumps({"partial": figures}), flush=True)

    print(json.dumps(measure(args, emit)))


if __name__ == "__main__":
    main()
