"""Tiny HF ViT classifiers saved locally for the tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def vit_transformers():
    """The ``transformers`` module, or a skip naming why its ViT cannot be used here."""
    module = pytest.importorskip("transformers", reason="HF classifiers need 'transformers' (densepure[transformers])")
    try:  # transformers imports model classes lazily; a torchvision built for another torch breaks them here
        _ = module.ViTForImageClassification, module.ViTImageProcessor
    except ImportError as exc:
        if "torchvision" not in str(exc):  # anything else is a broken environment or a shadowed module: fail
            raise
        pytest.skip(f"transformers' ViT cannot be imported here: {str(exc).splitlines()[0]}")
    return module


def save_tiny_vit(directory: Path, *, image_size: int, patch_size: int, hidden_size: int, layers: int,
                  channels: int = 3, processor: dict | None = None):
    """Save a seeded 10-label ViT (2 heads, MLP 2x hidden) and its processor (mean = std = 0.5 per channel,
    plus ``processor``) to ``directory``; returns the model, in eval mode."""
    transformers = vit_transformers()
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=channels,
                                    hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
                                    intermediate_size=2 * hidden_size, num_labels=10)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(directory)
    transformers.ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * channels,
                                   image_std=[0.5] * channels, **(processor or {})).save_pretrained(directory)
    return model
