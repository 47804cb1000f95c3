"""Draws per second: the engine vs a faithful re-implementation of the official DensePure control flow.

The official protocol (what the research code does): K full certification passes, one per reverse
seed; in each pass the draws of an image are processed in batches of ``--official-batch`` (100 for
CIFAR-10, 16 for ImageNet), each batch = noise, b sequential UNet calls on the whole batch (fresh
noise from the global generator between steps), one classifier call; fp32, eager; labels are voted
across the K passes at the end. Same models, same images, same N, same machine, one process.

The engine: the shared first step, exact early exit of the vote, batches refilled across images,
optionally fp16/bf16, channels-last and CUDA graphs per batch bucket, classifier on a second stream.

Defaults: CPU, the shipped digits models. ``--arch cifar10|imagenet`` uses the real UNet
architectures with random weights and a random-weight ViT-B/16 at 224 (CIFAR-10) or a ViT-L/16-sized
classifier at 512 (the BEiT-L/16 of the ImageNet papers), meant for a GPU. On CUDA the report adds
UNet forwards/s at the largest bucket, model FLOP utilisation against ``--peak-tflops`` (989 for an
H100 SXM's dense fp16/bf16) and certified images/hour at N0=100, N=100,000.

Usage: python benchmarks/throughput.py [--arch digits|cifar10|imagenet] [--device cpu|cuda]
       [--precision fp32|fp16|bf16] [--images 4] [--n 1000] [--K 10] [--b 2]
The last line printed is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from common import machine
from torch import nn

from densepure.artifacts.buckets import bucket_sizes
from densepure.certify.tasks import CertifyTask
from densepure.diffusion import (
    GridTables,
    Mode,
    SmoothingConfig,
    TStarRule,
    build_reverse_grid,
    start_scale,
    step_mean_std,
    t_star,
)
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.models import UNetConfig, UNetModel
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.presets import get_preset


class RandomViT(nn.Module):
    """A plain ViT (patch embedding, pre-norm encoder, class token) with random weights."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1) + self.pos.to(h.dtype)
        return self.head(self.norm(self.encoder(h)[:, 0]))


ARCH = {  # preset, classifier (image, patch, dim, depth, heads), official batch
    "cifar10": ("cifar10", (224, 16, 768, 12, 12), 100),
    "imagenet": ("imagenet256", (512, 16, 1024, 24, 16), 16),
}


def load_models(arch: str, device: torch.device):
    """(unet, classifier module, schedule, image shape, num classes) in fp32 on ``device``."""
    if arch == "digits":
        from densepure.models.digits import load_digits_classifier, load_digits_unet

        clf = Classifier(load_digits_classifier(device), Preprocess(), num_classes=10)
        return load_digits_unet(device), clf, get_preset("digits").schedule, (1, 8, 8), 10
    preset_name, (image, patch, dim, depth, heads), _ = ARCH[arch]
    preset = get_preset(preset_name)
    torch.manual_seed(0)
    unet = UNetModel(UNetConfig.from_flags(preset.flags)).to(device).eval()
    classes = 10 if arch == "cifar10" else 1000
    net = RandomViT(image, patch, dim, depth, heads, classes).to(device).eval()
    clf = Classifier(net, Preprocess(size=image, mean=(0.5,) * 3, std=(0.5,) * 3), num_classes=classes)
    size = unet.config.image_size
    return unet, clf, preset.schedule, (3, size, size), classes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def official_loop(unet, clf, schedule, images, sigma, k, b, n, batch, device) -> float:
    """Seconds for the official control flow on ``images`` (n draws each); returns the wall time."""
    grid = build_reverse_grid(schedule, t_star(sigma, schedule, TStarRule.AUTO), b)
    tables = GridTables(grid, device)
    scale = math.sqrt(start_scale(sigma))
    sync(device)
    start = time.perf_counter()
    for x in images:
        labels = np.zeros((k, n), dtype=np.int64)
        for seed in range(k):  # one full certification pass per reverse seed
            torch.manual_seed(seed)
            for lo in range(0, n, batch):
                m = min(batch, n - lo)
                xb = x.to(device).unsqueeze(0).repeat(m, 1, 1, 1)
                y = scale * (2.0 * (xb + sigma * torch.randn_like(xb)) - 1.0)
                for i in range(grid.num_steps):
                    c = tables.gather(torch.full((m,), i, dtype=torch.int64, device=device))
                    eps, v = unet.eps_and_var(y, c.model_time)
                    mean, std, _ = step_mean_std(y, eps, v, c)
                    y = mean + std * torch.randn_like(mean) if grid.has_noise[i] else mean
                labels[seed, lo:lo + m] = clf(y.clamp(-1, 1).to(torch.float32)).argmax(1).cpu().numpy()
        _vote(labels)
    sync(device)
    return time.perf_counter() - start


def _vote(labels: np.ndarray) -> np.ndarray:
    """Per-draw majority over the passes (ties: the first pass's label among the tied)."""
    out = np.empty(labels.shape[1], dtype=np.int64)
    for d in range(labels.shape[1]):
        col = labels[:, d].tolist()
        counts = np.bincount(col)
        out[d] = next(lab for lab in col if counts[lab] == counts.max())
    return out


def make_engine(args, unet, clf, schedule, shape, classes, device, rows: int, image_slots: int = 8) -> Engine:
    graphs = args.cuda_graphs and device.type == "cuda"
    buckets = bucket_sizes(rows) if graphs else None
    denoiser = TorchDenoiser(unet, channels_last=device.type == "cuda", buckets=buckets, cuda_graphs=graphs)
    classifier = TorchClassifier(clf, classes, shape, device, buckets=buckets, cuda_graphs=graphs)
    config = EngineConfig(unet_rows=rows, classifier_rows=rows, draw_capacity=2 * rows, image_slots=image_slots)
    smoothing = SmoothingConfig(Mode.DENSEPURE, args.sigma, args.K, args.b, schedule=schedule)
    return Engine(smoothing, Backends(denoiser, classifier), shape, device, config)


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


def unet_forward_rate(unet, rows: int, shape, device, graphs: bool, repeats: int = 20,
                      channels_last: bool | None = None) -> float:
    """UNet rows per second at a full batch of ``rows`` (after warm-up); channels-last by default on CUDA."""
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    backend = TorchDenoiser(unet, channels_last=channels_last, buckets=(rows,) if graphs else None,
                            cuda_graphs=graphs)
    x, t = torch.randn(rows, *shape, device=device), torch.full((rows,), 300.0, device=device)
    with backend:
        for _ in range(3):
            backend.eps_and_var(x, t)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            backend.eps_and_var(x, t)
        sync(device)
    return rows * repeats / (time.perf_counter() - start)


def flops_per_row(unet, shape, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        unet(torch.randn(1, *shape, device=device), torch.ones(1, device=device))
    return float(counter.get_total_flops())


def _cast(models, precision: str):
    """(unet, classifier) of ``load_models`` in ``precision`` (GroupNorm, softmax, time embedding stay fp32)."""
    unet, clf = models[0], models[1]
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return unet.set_precision(dtype), clf.set_precision(dtype)


def engine_backends(args, precision: str, device: torch.device, image_slots: int = 8, wrap_network=None):
    """Fresh models in ``precision`` (the UNet keeps its fp32 islands; the classifier network is cast)
    in an engine of ``args.rows`` rows per call and ``image_slots`` images at once; ``wrap_network``
    (optional) replaces the classifier's network by ``wrap_network(network)``."""
    unet, clf, schedule, shape, classes = load_models(args.arch, device)
    if wrap_network is not None:
        clf.network = wrap_network(clf.network)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    unet.set_precision(dtype)
    clf.set_precision(dtype)
    return make_engine(args, unet, clf, schedule, shape, classes, device, args.rows, image_slots), unet, shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["digits", "cifar10", "imagenet"], default="digits")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "fp16", "bf16"], default=["fp32"],
                    help="engine precisions to measure (the official loop is always fp32)")
    ap.add_argument("--official-precision", nargs="+", choices=["fp32", "fp16", "bf16"], default=["fp32"],
                    help="precisions of the official loop (its models cast as the engine's are); the first is the "
                         "reference of the speedups")
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--b", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--rows", type=int, default=512, help="engine rows per model call")
    ap.add_argument("--official-batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch = args.official_batch or (ARCH[args.arch][2] if args.arch in ARCH else 100)
    unet, clf, schedule, shape, classes = load_models(args.arch, device)
    if args.arch == "digits":
        from densepure.models.digits import load_digits_test_split

        all_images, _ = load_digits_test_split()
        images = [all_images[i] for i in np.linspace(0, len(all_images) - 1, args.images).astype(int)]
    else:
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(shape, generator=g) for _ in range(args.images)]
    draws = args.images * (args.n0 + args.n)
    engines = {p: engine_backends(args, p, device) for p in args.precision}
    officials = {p: _cast(load_models(args.arch, device), p) for p in args.official_precision}
    official_s, engine_s = {p: [] for p in officials}, {p: [] for p in args.precision}
    for _ in range(args.repeats):  # alternate, so drifts in machine speed hit both sides alike
        for p, (o_unet, o_clf) in officials.items():
            official_s[p].append(official_loop(o_unet, o_clf, schedule, images, args.sigma, args.K, args.b,
                                               args.n0 + args.n, batch, device))
        for p, (engine, _, _) in engines.items():
            engine_s[p].append(engine_seconds(engine, images, args))
    official = float(np.median(official_s[args.official_precision[0]]))
    graphs = args.cuda_graphs and device.type == "cuda"
    out = {"arch": args.arch, "device": machine(device), "K": args.K, "b": args.b, "images": args.images,
           "n0": args.n0, "n": args.n, "official_batch": batch, "engine_rows": args.rows, "cuda_graphs": graphs,
           "repeats": args.repeats, "official_draws_per_s": draws / official, "engine": {}}
    print(f"{args.arch} on {out['device']}: K={args.K}, b={args.b}, {args.images} images x {args.n0 + args.n} "
          f"draws, median of {args.repeats} alternating runs")
    out["official"] = {p: draws / float(np.median(t)) for p, t in official_s.items()}
    for p, rate in out["official"].items():
        print(f"  official protocol ({p}, eager, batch {batch}): {rate:10.1f} draws/s")
    for p, (engine, p_unet, _) in engines.items():
        seconds = float(np.median(engine_s[p]))
        row = {"draws_per_s": draws / seconds, "speedup": official / seconds,
               "unet_rows_per_draw": engine.stats.unet_rows / draws / args.repeats,
               "classifier_rows_per_draw": engine.stats.classifier_rows / draws / args.repeats}
        print(f"  engine ({p}, rows {args.rows}{', CUDA graphs' if graphs else ''}): {row['draws_per_s']:10.1f} "
              f"draws/s   ratio engine / official: {row['speedup']:.2f}x")
        if device.type == "cuda":
            rate = unet_forward_rate(p_unet, args.rows, shape, device, graphs)
            flops = flops_per_row(p_unet, shape, device)
            row.update(unet_rows_per_s=rate, unet_gflops_per_row=flops / 1e9,
                       mfu=rate * flops / (args.peak_tflops * 1e12),
                       certified_images_per_hour_n100k=3600 * row["draws_per_s"] / 100_100)
            print(f"    UNet alone: {rate:.0f} rows/s at batch {args.rows}, {flops / 1e9:.2f} GFLOP/row, MFU "
                  f"{100 * row['mfu']:.1f}% of {args.peak_tflops:g} TFLOP/s; certified images/hour at N0=100, "
                  f"N=100,000: {row['certified_images_per_hour_n100k']:.2f}")
        out["engine"][p] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
