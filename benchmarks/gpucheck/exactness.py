"""Counts on the device against the CPU's: the engine must give the CPU's exact counts in fp32.

Each configuration (graphs, kernels, precision) runs in its own try block: one that fails reports its
error and the rest still run. fp32 must be identical image for image; tf32 and bf16 are not expected to
be, and the size of their differences is the figure. A forward pre-hook on both models records the TF32
flags inside the model calls (at graph capture, when graphs are on): fp32 and bf16 must see them off,
tf32 on, whatever the process-wide flags (the stage leaves those at PyTorch's defaults, as a user has).
"""

from __future__ import annotations

import numpy as np
import torch

from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.engine.policy import FixedPolicy
from densepure.kernels import resolve_kernels, triton_status
from densepure.models import get_preset
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.digits import load_digits_classifier, load_digits_test_split, load_digits_unet
from densepure.noise import NoisePhase
from densepure.precision import Precision, tf32_flags
from gpucheck.report import emit


def _models(device: torch.device, precision: Precision, seen: set):
    unet = load_digits_unet(device).set_precision(precision.dtype)
    clf = Classifier(load_digits_classifier(device), Preprocess(), num_classes=10).set_precision(precision.dtype)
    for module in (unet, clf):
        module.register_forward_pre_hook(lambda *_: seen.add(tuple(sorted(tf32_flags().items()))))
    return unet, clf


def counts(device: torch.device, mode: Mode, graphs: bool, kernels: str, precision: Precision, n: int,
           images: tuple, seen: set | None = None) -> list:
    """Selection and estimation counts of a few digits images (fixed seed and noise identities)."""
    seen = set() if seen is None else seen
    unet, clf = _models(device, precision, seen)
    chosen = resolve_kernels(kernels, device)
    if chosen.name == "triton" and device.type == "cuda":
        unet.set_kernels(chosen)
    dense = mode is Mode.DENSEPURE
    smoothing = SmoothingConfig(mode, 0.25, 4 if dense else 1, 2 if dense else 1,
                                schedule=get_preset("digits").schedule)
    buckets = (8, 16, 32, 64, 128) if graphs else None
    backends = Backends(TorchDenoiser(unet, channels_last=device.type == "cuda", buckets=buckets,
                                      cuda_graphs=graphs, tf32=precision.tf32),
                        TorchClassifier(clf, 10, (1, 8, 8), device, buckets=buckets, cuda_graphs=graphs,
                                        tf32=precision.tf32))
    engine = Engine(smoothing, backends, (1, 8, 8), device,
                    EngineConfig(unet_rows=128, classifier_rows=128, draw_capacity=256, image_slots=4), chosen)
    data, _ = load_digits_test_split()
    phases = {NoisePhase.SELECTION: 10, NoisePhase.ESTIMATION: n}
    requests = [ImageRequest(i, data[i], FixedPolicy(10, phases), 11, noise_id=i) for i in images]
    with torch.inference_mode():
        done = {r.key: r.policy.counts for r in engine.run(requests)}
    return [np.stack([done[i][p] for p in phases]) for i in sorted(done)]


def compare(got: list, want: list) -> dict:
    """How far ``got``'s counts are from ``want``'s: identical images, and the size of any difference."""
    diffs = [np.abs(a.astype(np.int64) - b.astype(np.int64)) for a, b in zip(got, want, strict=True)]
    same = sum(int(d.max()) == 0 for d in diffs)
    return {"identical": f"{same}/{len(want)} images", "images_differing": len(want) - same,
            "max_count_diff": int(max(int(d.max()) for d in diffs)),
            "total_abs_count_diff": int(sum(int(d.sum()) for d in diffs))}


def _configs(device: torch.device, rehearse: bool) -> list[tuple[bool, str, Precision]]:
    """(graphs, kernels, precision) to run on ``device``."""
    if device.type != "cuda":
        return [(False, "torch", p) for p in (Precision.FP32, Precision.TF32, Precision.BF16)]
    kernels = ["torch"] + (["triton"] if triton_status(device).available else [])
    exact = [(graphs, k, Precision.FP32) for graphs in (False, True) for k in kernels]
    return exact + [(True, "auto", Precision.TF32), (True, "auto", Precision.BF16)]


def stage_exactness(device: torch.device, rehearse: bool) -> dict:
    n, images = (8, (120,)) if rehearse else (400, (0, 120, 225, 390))
    cpu = torch.device("cpu")
    out, exact, flags_ok = {"process_tf32_flags": tf32_flags(), "images": len(images), "draws": 10 + n}, [], []
    for mode in Mode:
        want = counts(cpu, mode, False, "torch", Precision.FP32, n, images)
        for graphs, kernels, precision in _configs(device, rehearse):
            key = f"{mode.value} {precision.value} graphs={graphs} kernels={kernels}"
            seen: set = set()
            try:
                row = compare(counts(device, mode, graphs, kernels, precision, n, images, seen), want)
            except Exception as exc:  # noqa: BLE001 - one broken configuration must not hide the others
                row = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
            flags = sorted({dict(s)["cuda_matmul"] and dict(s)["cudnn"] for s in seen})
            row["tf32_in_model_calls"] = flags
            if "error" not in row:
                flags_ok.append(flags == [precision.tf32])
                if precision is Precision.FP32:
                    exact.append(row["images_differing"] == 0)
            out[key] = row
            emit(**{key: row})
    out["fp32_identical"] = bool(exact) and all(exact)
    out["tf32_flags_as_configured"] = bool(flags_ok) and all(flags_ok)
    return out
