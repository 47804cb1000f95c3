"""Exact model-call counts per certified image: the engine vs the official DensePure protocol.

The official code runs K full certification passes (one per reverse seed), each b UNet calls and one
classifier call per draw: UNet = K*b*(N0+N), classifier = K*(N0+N) per image. The engine shares the
first reverse step across the K chains of a draw and stops launching chains once the vote is
decided; its certificates are identical (tests/engine/test_engine_exact.py). Counts are exact, not
timed, so any machine gives the same numbers for the same seed.

Usage: python benchmarks/evals.py [--images 10] [--n 1000] [--seq-nmax 10000]
The last line printed is a JSON object with unet_calls_ratio, classifier_calls_ratio (fixed N,
K=10, b=2), sequential_draws_ratio (sequential at r = sigma / fixed N = seq-nmax, over images whose
estimated p_A >= 0.99) and sequential_unet_rows_per_draw (every image, sequential at r = sigma with
n_max = N, with the look-ahead into empty batch rows and without it: the same decisions, and the UNet
rows the look-ahead spends past the stopping looks).
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from densepure.certify.tasks import CertifyTask, SequentialTask
from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.digits import load_digits_classifier, load_digits_test_split, load_digits_unet
from densepure.models.presets import get_preset
from densepure.noise import NoisePhase


def make_engine(mode: Mode, k: int, b: int, sigma: float, lookahead: bool = True) -> Engine:
    unet = load_digits_unet()
    clf = Classifier(load_digits_classifier(), Preprocess(), num_classes=10)
    smoothing = SmoothingConfig(mode, sigma, k, b, schedule=get_preset("digits").schedule)
    backends = Backends(TorchDenoiser(unet), TorchClassifier(clf, 10, (1, 8, 8)))
    return Engine(smoothing, backends, (1, 8, 8), "cpu",
                  EngineConfig(unet_rows=512, classifier_rows=512, draw_capacity=1024, image_slots=8,
                               lookahead=lookahead))


def run(engine: Engine, images, idx, task) -> dict:
    """{image index: its decided policy}, every image keyed by (seed 0, its index)."""
    requests = (ImageRequest(i, images[i], task.policy(10, engine.smoothing.sigma), 0, noise_id=i) for i in idx)
    return {r.key: r.policy for r in engine.run(requests)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seq-nmax", type=int, default=10_000)
    ap.add_argument("--sigma", type=float, default=0.25)
    args = ap.parse_args()
    images, _ = load_digits_test_split()
    idx = np.linspace(0, len(images) - 1, args.images).astype(int).tolist()
    k, b = 10, 2
    eng = make_engine(Mode.DENSEPURE, k, b, args.sigma)
    done = run(eng, images, idx, CertifyTask(args.n0, args.n, 0.001))
    draws = len(idx) * (args.n0 + args.n)
    official_unet, official_cls = k * b * draws, k * draws
    print(f"fixed N: {len(idx)} digits images, N0={args.n0}, N={args.n}, K={k}, b={b}, sigma={args.sigma}")
    print(f"  UNet calls:       engine {eng.stats.unet_rows:>10,d}   official {official_unet:>10,d}")
    print(f"  classifier calls: engine {eng.stats.classifier_rows:>10,d}   official {official_cls:>10,d}")
    confident = [i for i in idx if done[i].counts[NoisePhase.ESTIMATION].max() >= 0.99 * args.n]
    seq_task = SequentialTask(args.n0, args.sigma, 0.001, n_max=args.seq_nmax)
    seq = run(make_engine(Mode.DENSEPURE, k, b, args.sigma), images, confident, seq_task)
    used = [seq[i].result.n_used for i in confident]
    certified = sum(seq[i].result.certified for i in confident)
    mean_used = float(np.mean(used)) if used else float("nan")
    print(f"sequential at r=sigma: {len(confident)} images with p_A >= 0.99, {certified} certified, "
          f"mean estimation draws {mean_used:.1f} vs fixed N={args.seq_nmax}")
    per_draw, decisions = {}, {}
    for name, lookahead in (("lookahead", True), ("none", False)):
        engine = make_engine(Mode.DENSEPURE, k, b, args.sigma, lookahead)
        runs = run(engine, images, idx, SequentialTask(args.n0, args.sigma, 0.001, n_max=args.n))
        per_draw[name] = engine.stats.unet_rows / sum(p.total_draws for p in runs.values())
        decisions[name] = [(runs[i].result, runs[i].counts[NoisePhase.ESTIMATION].tolist()) for i in idx]
    same = decisions["lookahead"] == decisions["none"]
    print(f"sequential at r=sigma, n_max={args.n}, all {len(idx)} images: UNet rows per draw "
          f"{per_draw['lookahead']:.2f} with look-ahead, {per_draw['none']:.2f} without "
          f"(ratio {per_draw['lookahead'] / per_draw['none']:.3f}); decisions and counts identical: {same}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} torch {torch.__version__} "
          f"threads {torch.get_num_threads()} (counts do not depend on the machine)")
    print(json.dumps({
        "unet_calls_ratio": eng.stats.unet_rows / official_unet,
        "classifier_calls_ratio": eng.stats.classifier_rows / official_cls,
        "sequential_draws_ratio": mean_used / args.seq_nmax,
        "images": len(idx), "n0": args.n0, "n": args.n, "K": k, "b": b, "sigma": args.sigma,
        "sequential_images": len(confident), "sequential_certified": certified,
        "sequential_unet_rows_per_draw": per_draw, "sequential_lookahead_same_decisions": same,
    }))


if __name__ == "__main__":
    main()
