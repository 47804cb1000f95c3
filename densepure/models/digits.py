"""The embedded default: a small diffusion UNet and a CNN trained on scikit-learn's 8x8 digits.

Shipped under ``densepure/assets/digits/`` by ``scripts/train_digits.py`` (its ``manifest.json``
records the command, seeds, split, data hash, losses and accuracies):

* ``unet.pt`` - EMA weights of a UNet of the improved-diffusion family (:data:`DIGITS_FLAGS`:
  1 channel, 8x8, learned sigma, cosine schedule, T = 1000, so model time = timestep), trained with
  the hybrid objective of :mod:`densepure.models.digits_training` on images in [-1, 1];
* ``classifier.pt`` - :class:`DigitsCNN` trained on the clean training images, input ``(B, 1, 8, 8)``
  in [0, 1], output 10 logits;
* ``test_split.npz`` - the held-out images as ``pixels`` (uint8 0..16, the dataset's own levels,
  ``(N, 1, 8, 8)``), ``labels`` (int64) and ``indices`` (rows of ``load_digits()``);
* ``calibration_split.npz`` - 270 training images in the same form, what INT8 exports calibrate on
  (``scripts/make_digits_calibration.py``);
* ``manifest.json``.

Importing this module loads nothing; the ``load_*`` functions read the files on each call.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from densepure.errors import CheckpointError
from densepure.models.checkpoint import load_into, read_state_dict
from densepure.models.presets import (  # noqa: F401  (DIGITS_FLAGS, digits_asset_path: public here too)
    DIGITS_FLAGS,
    DiffusionPreset,
    build_unet,
    digits_asset_path,
    get_preset,
)
from densepure.models.unet import UNetModel

PRESET_NAME = "digits"
NUM_CLASSES = 10
PIXEL_LEVELS = 16  # load_digits() pixels are integers 0..16

class DigitsCNN(nn.Module):
    """Three 3x3 conv layers and a linear head: ``(B, 1, 8, 8)`` in [0, 1] -> ``(B, 10)`` logits."""

    def __init__(self, width: int = 32, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),          # 4x4
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 2x2
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(16 * width, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def register_digits_preset() -> DiffusionPreset:
    """The ``digits`` preset (always registered; kept for callers that ask for it by this name)."""
    return get_preset(PRESET_NAME)


def load_digits_unet(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> UNetModel:
    """The shipped diffusion UNet in eval mode (timesteps are fed as is: T = 1000)."""
    preset = register_digits_preset()
    return build_unet(preset, checkpoint=preset.checkpoint_file, device=device, dtype=dtype)


def load_digits_classifier(device: torch.device | str = "cpu") -> nn.Module:
    """The shipped :class:`DigitsCNN` in eval mode (weights read with ``weights_only=True``)."""
    path = digits_asset_path("classifier.pt")
    net = load_into(DigitsCNN(), read_state_dict(path), source=str(path))
    return net.to(device).eval()


def load_digits_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: float32 ``(N, 1, 8, 8)`` in [0, 1] (pixels / 16) and int64 ``(N,)``."""
    images, labels, _ = _load_split("test_split.npz", "test split")
    return images, labels


def load_digits_calibration_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, indices)`` of the INT8 calibration split: 270 training images (every 5th of the
    training split, never a test image; ``scripts/make_digits_calibration.py``), as the test split."""
    return _load_split("calibration_split.npz", "calibration split")


def _load_split(name: str, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    path = digits_asset_path(name)
    if not path.is_file():
        raise CheckpointError(f"the digits {what} is missing: {path}")
    with np.load(path, allow_pickle=False) as data:
        pixels, labels, indices = data["pixels"], data["labels"], data["indices"]
    images = torch.from_numpy(pixels.astype(np.float32) / PIXEL_LEVELS)
    return images, torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(indices.astype(np.int64))


def digits_manifest() -> dict[str, Any]:
    """The training record written next to the weights (see ``scripts/train_digits.py``)."""
    path = digits_asset_path("manifest.json")
    if not path.is_file():
        raise CheckpointError(f"the digits manifest is missing: {path}")
    return json.loads(path.read_text(encoding="utf-8"))
