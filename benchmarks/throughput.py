"""A thin entry point kept for ``benchmarks/gpu_stages.py`` until the GPU check calls ``densepure bench``:
users run ``densepure bench throughput --baseline official`` (densepure/bench/throughput.py), which this
script's numbers match.

Draws/s of the engine against the official DensePure loop (:mod:`densepure.bench.official`: K full
passes, one per reverse seed, per-batch b UNet calls and one classifier call), both on the same images
in one process, alternating over ``--repeats``; medians. ``--arch cifar10|imagenet``: the presets' UNets
and classifiers of the papers' size with seeded random weights (``--random-weights`` of densepure bench).
On CUDA it adds UNet rows/s at the largest bucket and the MFU against ``--peak-tflops``.

Usage: python benchmarks/throughput.py [--arch digits|cifar10|imagenet] [--device cpu|cuda]
       [--precision fp32 bf16] [--official-precision fp32] [--images 4] [--n 1000] [--K 10] [--b 2]
The last line printed is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import machine

from densepure.artifacts.buckets import bucket_sizes
from densepure.bench.common import now
from densepure.bench.models import random_modules
from densepure.bench.official import OfficialLoop, official_batch_default
from densepure.certify.tasks import CertifyTask
from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.presets import get_preset

PRESETS = {"digits": "digits", "cifar10": "cifar10", "imagenet": "imagenet256"}


def load_models(arch: str, device: torch.device):
    """(unet, classifier, schedule, image shape, num classes), fp32 on ``device``."""
    preset = get_preset(PRESETS[arch])
    if arch == "digits":
        from densepure.models.digits import load_digits_classifier, load_digits_unet

        clf = Classifier(load_digits_classifier(device), Preprocess(), num_classes=10)
        return load_digits_unet(device), clf, preset.schedule, (1, 8, 8), 10
    unet, clf = random_modules(preset.name, device)
    size = unet.config.image_size
    return unet, clf, preset.schedule, (3, size, size), clf.num_classes


def make_engine(args, unet, clf, schedule, shape, classes, device, rows: int, image_slots: int = 8) -> Engine:
    graphs = args.cuda_graphs and device.type == "cuda"
    buckets = bucket_sizes(rows) if graphs else None
    denoiser = TorchDenoiser(unet, channels_last=device.type == "cuda", buckets=buckets, cuda_graphs=graphs)
    classifier = TorchClassifier(clf, classes, shape, device, buckets=buckets, cuda_graphs=graphs)
    config = EngineConfig(unet_rows=rows, classifier_rows=rows, draw_capacity=2 * rows, image_slots=image_slots)
    smoothing = SmoothingConfig(Mode.DENSEPURE, args.sigma, args.K, args.b, schedule=schedule)
    return Engine(smoothing, Backends(denoiser, classifier), shape, device, config)


def engine_backends(args, precision: str, device: torch.device, image_slots: int = 8, wrap_network=None):
    """(engine, its UNet, image shape): fresh models in ``precision`` in an engine of ``args.rows`` rows per call;
    ``wrap_network`` (optional) replaces the classifier's network by ``wrap_network(network)``."""
    unet, clf, schedule, shape, classes = load_models(args.arch, device)
    if wrap_network is not None:
        clf.network = wrap_network(clf.network)
    unet, clf = _cast((unet, clf), precision)
    return make_engine(args, unet, clf, schedule, shape, classes, device, args.rows, image_slots), unet, shape


def _cast(models, precision: str):
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return models[0].set_precision(dtype), models[1].set_precision(dtype)


def unet_forward_rate(unet, rows: int, shape, device, graphs: bool, repeats: int = 20,
                      channels_last: bool | None = None) -> float:
    """UNet rows per second at a full batch of ``rows`` (after warm-up); channels-last by default on CUDA."""
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    backend = TorchDenoiser(unet, channels_last=channels_last, buckets=(rows,) if graphs else None, cuda_graphs=graphs)
    x, t = torch.randn(rows, *shape, device=device), torch.full((rows,), 300.0, device=device)
    with backend:
        for _ in range(3):
            backend.eps_and_var(x, t)
        start = now(device)
        for _ in range(repeats):
            backend.eps_and_var(x, t)
        return rows * repeats / (now(device) - start)


def flops_per_row(unet, shape, device) -> float:
    from densepure.bench.common import flops_per_row as count

    return count(unet, torch.randn(1, *shape, device=device), torch.ones(1, device=device))


def engine_seconds(engine: Engine, images, args) -> float:
    task = CertifyTask(args.n0, args.n, 0.001)
    start = now(engine.device)
    requests = (ImageRequest(i, x, task.policy(engine.num_classes, args.sigma), 0, noise_id=i)
                for i, x in enumerate(images))
    for _ in engine.run(requests):
        pass
    return now(engine.device) - start


def official_seconds(loop: OfficialLoop, images, args, classes: int) -> float:
    start = now(loop.device)
    for i, x in enumerate(images):
        loop.certify(x, i, 0, args.n0, args.n, 0.001, classes)
    return now(loop.device) - start


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=list(PRESETS), default="digits")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "fp16", "bf16"], default=["fp32"])
    ap.add_argument("--official-precision", nargs="+", choices=["fp32", "fp16", "bf16"], default=["fp32"],
                    help="precisions of the official loop; the first is the reference of the speedups")
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    for flag, value in (("--images", 4), ("--n0", 100), ("--n", 1000), ("--K", 10), ("--b", 2), ("--rows", 512),
                        ("--repeats", 3), ("--threads", 0)):
        ap.add_argument(flag, type=int, default=value)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--official-batch", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    return ap.parse_args()


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch = args.official_batch or official_batch_default(PRESETS[args.arch])
    _, _, schedule, shape, classes = load_models(args.arch, device)
    if args.arch == "digits":
        from densepure.models.digits import load_digits_test_split

        all_images, _ = load_digits_test_split()
        images = [all_images[i] for i in np.linspace(0, len(all_images) - 1, args.images).astype(int)]
    else:
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(shape, generator=g) for _ in range(args.images)]
    draws = args.images * (args.n0 + args.n)
    engines = {p: engine_backends(args, p, device) for p in args.precision}
    smoothing = SmoothingConfig(Mode.DENSEPURE, args.sigma, args.K, args.b, schedule=schedule)
    officials = {p: OfficialLoop(*_cast(load_models(args.arch, device)[:2], p), smoothing, batch, device)
                 for p in args.official_precision}
    official_s, engine_s = {p: [] for p in officials}, {p: [] for p in engines}
    with torch.inference_mode():
        for _ in range(args.repeats):  # alternate, so drifts in machine speed hit both sides alike
            for p, loop in officials.items():
                official_s[p].append(official_seconds(loop, images, args, classes))
            for p, (engine, _, _) in engines.items():
                engine_s[p].append(engine_seconds(engine, images, args))
    report(args, device, batch, draws, engines, official_s, engine_s, shape)


def report(args, device, batch, draws, engines, official_s, engine_s, shape) -> None:
    official = float(np.median(official_s[args.official_precision[0]]))
    graphs = args.cuda_graphs and device.type == "cuda"
    out = {"arch": args.arch, "device": machine(device), "K": args.K, "b": args.b, "images": args.images,
           "n0": args.n0, "n": args.n, "official_batch": batch, "engine_rows": args.rows, "cuda_graphs": graphs,
           "repeats": args.repeats, "official_draws_per_s": draws / official, "engine": {},
           "official": {p: draws / float(np.median(t)) for p, t in official_s.items()}}
    print(f"{args.arch} on {out['device']}: K={args.K}, b={args.b}, {args.images} images x {args.n0 + args.n} draws")
    for p, rate in out["official"].items():
        print(f"  official protocol ({p}, eager, batch {batch}): {rate:10.1f} draws/s")
    for p, (engine, p_unet, _) in engines.items():
        seconds = float(np.median(engine_s[p]))
        row = {"draws_per_s": draws / seconds, "speedup": official / seconds,
               "unet_rows_per_draw": engine.stats.unet_rows / draws / args.repeats,
               "classifier_rows_per_draw": engine.stats.classifier_rows / draws / args.repeats}
        print(f"  engine ({p}, rows {args.rows}): {row['draws_per_s']:10.1f} draws/s   ratio engine / official: "
              f"{row['speedup']:.2f}x")
        if device.type == "cuda":
            rate = unet_forward_rate(p_unet, args.rows, shape, device, graphs)
            flops = flops_per_row(p_unet, shape, device)
            row.update(unet_rows_per_s=rate, unet_gflops_per_row=flops / 1e9,
                       mfu=rate * flops / (args.peak_tflops * 1e12),
                       certified_images_per_hour_n100k=3600 * row["draws_per_s"] / 100_100)
        out["engine"][p] = row
    out["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
