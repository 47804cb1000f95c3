#!/usr/bin/env python
"""Train the embedded digits default: a small diffusion UNet and a clean CNN classifier.

    PYTHONPATH=. python scripts/train_digits.py            # writes densepure/assets/digits/

Data: ``sklearn.datasets.load_digits`` (1797 images, 8x8, pixels 0..16 -> [0,1] by /16), split by
``train_test_split(test_size=0.25, stratify=labels, random_state=seed)``. The UNet
(:data:`densepure.models.digits.DIGITS_FLAGS`) is trained with improved-diffusion's hybrid loss on
``2x - 1``, uniform t, AdamW with warmup and cosine decay, EMA of the weights (shipped). No
augmentation (flips are not label-preserving for digits). The classifier sees clean training images only.

Everything runs on the CPU in float32 with fixed seeds. ``--threads`` defaults to 1: on a shared
2-core machine two OpenMP threads were measured 10-15x *slower* per step than one (their barriers
spin while the other core is busy). Results are reproducible for a fixed thread count and torch build.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from densepure.diffusion import NoiseSchedule, ScheduleKind, TStarRule, build_reverse_grid, start_point, t_star
from densepure.engine.reference import onestep_x0, run_chain
from densepure.hashing import file_sha256
from densepure.models.checkpoint import save_state_dict
from densepure.models.digits import DIGITS_FLAGS, PIXEL_LEVELS, DigitsCNN
from densepure.models.digits_training import TrainingTables, ema_update, hybrid_loss
from densepure.models.presets import build_unet
from densepure.models.unet_config import UNetConfig

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "densepure" / "assets" / "digits")
    p.add_argument("--seed", type=int, default=0, help="split, init, batches, t and noise (default 0)")
    p.add_argument("--test-size", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--unet-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clf-epochs", type=int, default=60)
    p.add_argument("--eval-draws", type=int, default=4, help="noise draws per test image in the sanity check")
    p.add_argument("--log-every", type=int, default=100)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------- data
def digits_data() -> tuple[np.ndarray, np.ndarray, str]:
    """``(pixels uint8 (N,1,8,8) 0..16, labels int64 (N,), sha256 of the raw float64 data + int64 target bytes)``."""
    d = load_digits()
    data = np.ascontiguousarray(d.data, dtype=np.float64)
    target = np.ascontiguousarray(d.target, dtype=np.int64)
    digest = hashlib.sha256(data.tobytes() + target.tobytes()).hexdigest()
    pixels = data.reshape(-1, 1, 8, 8)
    if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > PIXEL_LEVELS:
        raise SystemExit("load_digits() no longer returns integer pixels in 0..16")
    return pixels.astype(np.uint8), target, digest


def arrays_sha256(pixels: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes() + np.ascontiguousarray(labels).tobytes()).hexdigest()


def to_unit(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / PIXEL_LEVELS)


# ----------------------------------------------------------------------------------- classifier
def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> tuple[DigitsCNN, list[float]]:
    torch.manual_seed(seed)
    net = DigitsCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        net.train()
        perm, total = torch.randperm(len(x), generator=gen), 0.0
        for idx in perm.split(64):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        losses.append(total / len(x))
    return net.eval(), losses


@torch.no_grad()
def count_correct(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((net(x).argmax(dim=1) == y).sum())


# ----------------------------------------------------------------------------------------- UNet
def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.unet_steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_unet(x01: torch.Tensor, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(args.seed + 1)
    schedule = NoiseSchedule(ScheduleKind.parse(DIGITS_FLAGS["noise_schedule"]), int(DIGITS_FLAGS["diffusion_steps"]))
    tables = TrainingTables.from_schedule(schedule)
    model = build_unet(UNetConfig.from_flags(DIGITS_FLAGS)).train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 2)
    data = 2.0 * x01 - 1.0
    history: list[tuple[float, float, float]] = []
    start = time.perf_counter()
    for step in range(args.unet_steps):
        idx = torch.randint(len(data), (args.batch_size,), generator=gen)
        t = torch.randint(schedule.num_timesteps, (args.batch_size,), generator=gen)
        noise = torch.randn(data[idx].shape, generator=gen)
        terms = hybrid_loss(model, tables, data[idx], t, noise)
        loss = terms.total.mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # EMA warm-up (decay grows to args.ema) so the shipped average is not dominated by the init
        ema_update(ema, model, min(args.ema, (1 + step) / (10 + step)))
        history.append((terms.mse.mean().item(), terms.vlb.mean().item(), loss.item()))
        if (step + 1) % args.log_every == 0 or step + 1 == args.unet_steps:
            last = np.array(history[-args.log_every:]).mean(axis=0)
            rate = (time.perf_counter() - start) / (step + 1)
            print(f"unet step {step + 1}/{args.unet_steps}  mse {last[0]:.4f}  vlb {last[1]:.4f}  total {last[2]:.4f}"
                  f"  lr {lr_at(step, args):.2e}  {rate * 1000:.0f} ms/step", flush=True)
    tail = np.array(history[-200:]).mean(axis=0)
    record = {"final_mse": float(tail[0]), "final_vlb_bits": float(tail[1]), "final_total": float(tail[2]),
              "final_losses_averaged_over_steps": int(min(200, len(history)))}
    return ema, record


# ------------------------------------------------------------------------------------ sanity check
@torch.no_grad()
def test_losses(unet: torch.nn.Module, x01: torch.Tensor, seed: int) -> dict:
    """Hybrid-loss terms on the test images at uniform t (held-out check of over-fitting)."""
    schedule = NoiseSchedule(ScheduleKind.COSINE, int(DIGITS_FLAGS["diffusion_steps"]))
    tables = TrainingTables.from_schedule(schedule)
    gen = torch.Generator().manual_seed(seed)
    data = (2.0 * x01 - 1.0).repeat(4, 1, 1, 1)
    t = torch.randint(schedule.num_timesteps, (len(data),), generator=gen)
    noise = torch.randn(data.shape, generator=gen)
    terms = hybrid_loss(unet, tables, data, t, noise)
    return {"mse": float(terms.mse.mean()), "vlb_bits": float(terms.vlb.mean())}


@torch.no_grad()
def denoise_mse(unet: torch.nn.Module, x01: torch.Tensor, sigmas: list[float], seed: int) -> dict:
    """MSE to the clean [0,1] images of ``x + delta`` and of its one-step denoising, per sigma."""
    schedule = NoiseSchedule(ScheduleKind.COSINE, int(DIGITS_FLAGS["diffusion_steps"]))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for sigma in sigmas:
        delta = sigma * torch.randn(x01.shape, generator=gen)
        tau = int(t_star(sigma, schedule, TStarRule.NEAREST))
        x0 = onestep_x0(unet, start_point(x01, delta, sigma), schedule, tau)
        out[f"{sigma:g}"] = {"tau": tau, "noisy": float((delta ** 2).mean()),
                             "onestep": float((((x0 + 1) / 2 - x01) ** 2).mean())}
    return out


@torch.no_grad()
def noisy_accuracies(unet, clf, x01, labels, sigmas: list[float], draws: int, seed: int) -> dict:
    """Accuracy of the classifier on ``x + delta`` (Gaussian smoothing's base classifier), on the
    one-step denoised images and on one DensePure b=2 chain, averaged over ``draws`` noise draws."""
    schedule = NoiseSchedule(ScheduleKind.COSINE, int(DIGITS_FLAGS["diffusion_steps"]))
    gen = torch.Generator().manual_seed(seed)
    n, out = len(x01), {}
    for sigma in sigmas:
        tau = int(t_star(sigma, schedule, TStarRule.NEAREST))
        grid = build_reverse_grid(schedule, t_star(sigma, schedule), 2)
        hits = {"noisy": 0, "onestep": 0, "densepure_b2": 0}
        for _ in range(draws):
            delta = sigma * torch.randn(x01.shape, generator=gen)
            z = torch.randn(x01.shape, generator=gen)
            hits["noisy"] += count_correct(clf, x01 + delta, labels)
            x0 = onestep_x0(unet, start_point(x01, delta, sigma), schedule, tau)
            hits["onestep"] += count_correct(clf, (x0 + 1) / 2, labels)
            xc, _ = run_chain(unet, x01, delta, sigma, grid, [z, None])
            hits["densepure_b2"] += count_correct(clf, (xc + 1) / 2, labels)
        out[f"{sigma:g}"] = {"onestep_tau": tau, "densepure_t_star": float(t_star(sigma, schedule)),
                             **{k: v / (draws * n) for k, v in hits.items()}}
    return out


# -------------------------------------------------------------------------------------- main
def split_data(args: argparse.Namespace) -> dict:
    """The deterministic stratified split; pixels stay uint8 0..16 for the shipped test file."""
    pixels, labels, data_sha = digits_data()
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=args.test_size,
                                           stratify=labels, random_state=args.seed)
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    return {"pixels": pixels, "labels": labels, "sha256": data_sha, "idx_train": idx_train, "idx_test": idx_test,
            "x_train": to_unit(pixels[idx_train]), "y_train": torch.from_numpy(labels[idx_train]),
            "x_test": to_unit(pixels[idx_test]), "y_test": torch.from_numpy(labels[idx_test])}


def write_assets(out: Path, ema: torch.nn.Module, clf: torch.nn.Module, d: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(out / "unet.pt", ema.state_dict())
    save_state_dict(out / "classifier.pt", clf.state_dict())
    np.savez_compressed(out / "test_split.npz", pixels=d["pixels"][d["idx_test"]], labels=d["labels"][d["idx_test"]],
                        indices=d["idx_test"].astype(np.int64))


def sanity_check(out: Path, d: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """Measurements with the weights as read back from the written files (weights_only)."""
    unet = build_unet(UNetConfig.from_flags(DIGITS_FLAGS), checkpoint=out / "unet.pt")
    clf = DigitsCNN()
    clf.load_state_dict(torch.load(out / "classifier.pt", weights_only=True))
    clf.eval()
    x_test, y_test = d["x_test"], d["y_test"]
    correct = count_correct(clf, x_test, y_test)
    sanity = {
        "test_hybrid_loss": test_losses(unet, x_test, args.seed + 4),
        "denoise_mse_unit_range": denoise_mse(unet, x_test, [0.25, 0.5], args.seed + 5),
        "accuracy": noisy_accuracies(unet, clf, x_test, y_test, [0.25, 0.5], args.eval_draws, args.seed + 6),
        "draws_per_image": args.eval_draws,
        "noise_seed": args.seed + 6,
    }
    counts = {"unet_params": sum(p.numel() for p in unet.parameters()),
              "clf_params": sum(p.numel() for p in clf.parameters()), "clean_test_correct": correct}
    return sanity, counts


def build_manifest(args: argparse.Namespace, argv_used: list[str], d: dict, unet_record: dict, clf_losses: list[float],
                   sanity: dict, counts: dict, times: dict) -> dict:
    out: Path = args.out
    test_pixels, test_labels = d["pixels"][d["idx_test"]], d["labels"][d["idx_test"]]
    n_test = len(test_labels)
    return {
        "name": "digits",
        "command": "PYTHONPATH=. python scripts/train_digits.py" + "".join(" " + shlex.quote(a) for a in argv_used),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
                     "python": platform.python_version()},
        "threads": args.threads,
        "data": {"source": "sklearn.datasets.load_digits", "num_images": int(len(d["labels"])),
                 "sha256": d["sha256"], "sha256_of": "float64 C-order data (1797x64) bytes + int64 target bytes",
                 "scaling": "pixels (integers 0..16) / 16 -> [0,1]; the UNet sees 2x-1"},
        "split": {"method": f"sklearn train_test_split(arange(N), test_size={args.test_size}, stratify=labels, "
                            f"random_state={args.seed}), indices sorted",
                  "num_train": int(len(d["idx_train"])), "num_test": int(n_test),
                  "test_arrays_sha256": arrays_sha256(test_pixels, test_labels),
                  "test_arrays_sha256_of": "uint8 pixels (N,1,8,8) bytes + int64 labels bytes",
                  "test_file_sha256": file_sha256(out / "test_split.npz")},
        "seeds": {"split": args.seed, "classifier": args.seed + 3, "unet_init": args.seed + 1,
                  "unet_batches_t_noise": args.seed + 2, "sanity": [args.seed + 4, args.seed + 5, args.seed + 6]},
        "unet": {"flags": dict(DIGITS_FLAGS), "param_count": counts["unet_params"],
                 "weights": "EMA", "dtype": "float32", "objective": "L_simple + 0.001 * L_vlb (hybrid, learned sigma)",
                 "steps": args.unet_steps, "batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema,
                 **unet_record, "file_sha256": file_sha256(out / "unet.pt")},
        "classifier": {"architecture": "DigitsCNN", "param_count": counts["clf_params"],
                       "epochs": args.clf_epochs, "final_train_loss": clf_losses[-1],
                       "clean_test_correct": counts["clean_test_correct"], "num_test": int(n_test),
                       "clean_test_accuracy": counts["clean_test_correct"] / n_test,
                       "file_sha256": file_sha256(out / "classifier.pt")},
        "sanity": sanity,
        "wall_time_s": times,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    wall0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    d = split_data(args)
    print(f"digits: {len(d['idx_train'])} train, {len(d['idx_test'])} test, data sha256 {d['sha256'][:16]}...", flush=True)

    t0 = time.perf_counter()
    clf, clf_losses = train_classifier(d["x_train"], d["y_train"], args.clf_epochs, args.seed + 3)
    clf_time = time.perf_counter() - t0
    print(f"classifier: {clf_time:.0f} s, final loss {clf_losses[-1]:.4f}, clean test accuracy "
          f"{count_correct(clf, d['x_test'], d['y_test']) / len(d['y_test']):.4f}", flush=True)

    t0 = time.perf_counter()
    ema, unet_record = train_unet(d["x_train"], args)
    unet_time = time.perf_counter() - t0
    write_assets(args.out, ema, clf, d)

    t0 = time.perf_counter()
    sanity, counts = sanity_check(args.out, d, args)
    eval_time = time.perf_counter() - t0
    print(json.dumps(sanity, indent=1), flush=True)

    times = {"classifier": round(clf_time, 1), "unet": round(unet_time, 1), "sanity": round(eval_time, 1),
             "total": round(time.perf_counter() - wall0, 1)}
    argv_used = sys.argv[1:] if argv is None else argv
    manifest = build_manifest(args, argv_used, d, unet_record, clf_losses, sanity, counts, times)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}; total {times['total']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
