"""Engine draws/s against the official loop on the device: ``densepure bench throughput --baseline official``,
CIFAR-10-sized (random weights of the real architectures); ImageNet-sized last.

fp32 is exact float32 on both sides; tf32 shows what TF32 buys; bf16 is the fast path. The official loop runs
in fp32 (as published) beside the fp32 engine and in bf16 beside the bf16 engine; ``ratio bf16 engine /
fp32 official`` is the engine's fast path against the published loop as published.
"""

from __future__ import annotations

import torch

from gpucheck.bench import bench
from gpucheck.report import emit


def stage_end_to_end(device: torch.device, rehearse: bool) -> dict:
    common = ["--K", "10", "--b", "2", "--repeats", "1", "--device", device.type]
    if rehearse:
        common += ["--max", "1", "--n0", "10", "--n", "30", "--batch-size", "64", "--threads", "1"]
        runs = {"bf16": ["--baseline", "official", "--official-precision", "bf16"],
                "fp32": ["--baseline", "official", "--official-precision", "fp32"]}
    else:
        common += ["--preset", "cifar10", "--random-weights", "--max", "2", "--n0", "10", "--n", "490",
                   "--batch-size", "512"]
        runs = {"bf16": ["--baseline", "official", "--official-precision", "bf16"], "tf32": [],
                "fp32": ["--baseline", "official", "--official-precision", "fp32"]}
    out = {}
    for precision, more in runs.items():
        out |= bench(precision, "throughput", *common, "--precision", precision, *more, strict=False)
    fast, published = out.get("bf16 engine.draws_per_s"), out.get("fp32 official.draws_per_s")
    if fast and published:
        out["ratio bf16 engine / fp32 official"] = fast / published
        emit(**{"ratio bf16 engine / fp32 official": out["ratio bf16 engine / fp32 official"]})
    if not any(key.endswith("engine.draws_per_s") for key in out):
        raise RuntimeError("no engine was measured: " + "; ".join(str(v) for k, v in out.items()
                                                                   if k.endswith(" error")))
    return out


def stage_imagenet(device: torch.device, rehearse: bool) -> dict:
    return bench("imagenet bf16", "throughput", "--preset", "imagenet256", "--random-weights", "--precision",
                 "bf16", "--baseline", "official", "--official-precision", "bf16", "--max", "1", "--n0", "8",
                 "--n", "56", "--batch-size", "64", "--repeats", "1", "--device", device.type)
