"""FLOPs per forward pass (batch 1) of the papers' models: the table of docs/performance.md.

Counted by ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x multiply-accumulates of matmuls and
convolutions; elementwise work is not counted) on the ``meta`` device: the real architectures, built
without weights, so the count takes seconds and no memory. The UNets are densepure's presets (the
official checkpoints' flags); the classifiers are Hugging Face transformers' ViT-B/16 at 224 (the
CIFAR-10 classifier's architecture, 10 classes) and BEiT-L/16 at 512 (timm's ``beit_large_patch16_512``:
relative position bias, layer scale, mean pooling; 1000 classes), which need the ``transformers`` extra.
Counts, not timings: the same on every machine.

    python benchmarks/flops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# the repository root instead of this folder: transformers imports a package named `kernels`, which
# benchmarks/kernels.py would shadow
sys.path[0] = str(Path(__file__).resolve().parents[1])

from densepure.models import build_unet, get_preset  # noqa: E402


def count(model: torch.nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[int, int]:
    """(parameters, FLOPs) of one forward pass of ``model`` on the given meta tensors."""
    with FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return sum(p.numel() for p in model.parameters()), int(counter.get_total_flops())


def unet(preset: str) -> tuple[int, int]:
    """(parameters, FLOPs) of the preset's UNet at batch 1."""
    spec = get_preset(preset)
    x = torch.zeros(1, spec.unet_config.in_channels, spec.image_size, spec.image_size, device="meta")
    return count(build_unet(spec, device="meta"), x, torch.zeros(1, device="meta"))


def classifier(name: str) -> tuple[int, int]:
    """(parameters, FLOPs) of ``vit-b16-224`` (10 classes) or ``beit-l16-512`` (1000 classes) at batch 1."""
    from transformers import BeitConfig, BeitForImageClassification, ViTConfig, ViTForImageClassification

    if name == "vit-b16-224":
        cls, config, size = ViTForImageClassification, ViTConfig(num_labels=10), 224
    elif name == "beit-l16-512":
        cls, size = BeitForImageClassification, 512
        config = BeitConfig(image_size=512, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096, num_labels=1000, use_relative_position_bias=True,
                            use_mean_pooling=True, layer_scale_init_value=1e-5)
    else:
        raise ValueError(f"unknown classifier {name!r}")
    with torch.device("meta"):
        model = cls(config).eval()
    return count(model, pixel_values=torch.zeros(1, 3, size, size, device="meta"))


MODELS = (
    ("CIFAR-10 UNet (improved-diffusion, 32 px)", lambda: unet("cifar10")),
    ("ImageNet UNet (guided-diffusion 256 uncond)", lambda: unet("imagenet256")),
    ("ViT-B/16 at 224 (CIFAR-10 classifier)", lambda: classifier("vit-b16-224")),
    ("BEiT-L/16 at 512 (ImageNet classifier)", lambda: classifier("beit-l16-512")),
    ("digits UNet (shipped, 8 px)", lambda: unet("digits")),
)


def main() -> None:
    print("| model | parameters | GFLOP per forward (batch 1) | fp16 weights |")
    print("|---|---:|---:|---:|")
    with torch.inference_mode():
        for name, build in MODELS:
            params, flops = build()
            print(f"| {name} | {params:,} | {flops / 1e9:,.2f} | {2 * params / 1e6:,.1f} MB |")


if __name__ == "__main__":
    main()
