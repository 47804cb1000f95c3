"""Engine draws/s against the official loop on the device (benchmarks/throughput.py, in this process so each
figure is reported as it is measured), CIFAR-10-sized; ImageNet-sized last."""

from __future__ import annotations

import throughput
import torch

from gpucheck.report import emit


def _measure(argv: list[str]) -> dict:
    return throughput.measure(throughput.parser().parse_args(argv), emit)


def stage_end_to_end(device: torch.device, rehearse: bool) -> dict:
    """fp32 is exact float32 on both sides; tf32 shows what TF32 buys; bf16 is the fast path."""
    args = ["--device", device.type, "--repeats", "1", "--K", "10", "--b", "2"]
    if rehearse:
        args += ["--arch", "digits", "--images", "1", "--n0", "10", "--n", "30", "--precision", "fp32", "bf16",
                 "--official-precision", "fp32", "bf16", "--threads", "1", "--rows", "64"]
    else:
        args += ["--arch", "cifar10", "--images", "2", "--n0", "10", "--n", "490", "--rows", "512",
                 "--precision", "bf16", "tf32", "fp32", "--official-precision", "fp32", "bf16"]
    return _measure(args)


def stage_imagenet(device: torch.device, rehearse: bool) -> dict:
    return _measure(["--device", device.type, "--arch", "imagenet", "--precision", "bf16", "--official-precision",
                     "bf16", "--images", "1", "--n0", "8", "--n", "56", "--rows", "64", "--repeats", "1"])
