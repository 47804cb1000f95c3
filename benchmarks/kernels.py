"""A thin entry point kept for ``benchmarks/gpu_stages.py`` until the GPU check calls ``densepure bench``:
users run ``densepure bench kernels`` (densepure/bench/kernels.py, which holds the benchmark and its doc).

``--arch tiny`` is a small UNet for a CPU smoke run under Triton's interpreter (``TRITON_INTERPRET=1``).

Usage: python benchmarks/kernels.py [--device cuda|cpu] [--arch cifar10|imagenet|tiny] [--rows 512]
       [--precision fp16|bf16|fp32] [--repeats 5] [--compile | --no-compile]
The last line printed is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import machine

from densepure.bench.kernels import kernel_benchmark
from densepure.diffusion import NoiseSchedule
from densepure.models import UNetConfig, get_preset

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY = UNetConfig(image_size=8, in_channels=1, model_channels=16, num_res_blocks=1, attention_resolutions=(4,),
                  channel_mult=(1, 2), num_heads=2, num_groups=4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", choices=["cifar10", "imagenet", "tiny"], default="cifar10")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--precision", choices=list(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--K", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile (default: on CUDA only)")
    args = p.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    use_compile = args.compile if args.compile is not None else device.type == "cuda"
    if args.arch == "tiny":
        config, schedule = TINY, NoiseSchedule("cosine", 4000)
    else:
        preset = get_preset("cifar10" if args.arch == "cifar10" else "imagenet256")
        config, schedule = preset.unet_config, preset.schedule
    result = kernel_benchmark(config, schedule, device, args.rows, DTYPES[precision], args.K, args.repeats,
                              "default" if use_compile else None)
    result.update(arch=args.arch, device=machine(device), precision=precision, compile=use_compile)
    for group in ("row_kernels", "norms"):
        for name, row in result[group].items():
            print(f"  {name:34s} " + " | ".join(f"{impl} {v['us']:9.1f} us" if "us" in v else f"{impl}: {v['error']}"
                                                for impl, v in row.items()))
    for name, row in result["unet"].items():
        print(f"  {name:24s} forward {row['forward_ms']:8.2f} ms, pipeline {row['draws_per_s']:9.1f} draws/s "
              f"({row['draws_vs_modules']:.2f}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
