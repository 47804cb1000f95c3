"""Exports shared by the export and onnxruntime-backend tests (made once per session, by content)."""

from __future__ import annotations

import json

import torch
from torch import nn

from densepure.export import export_command
from densepure.models import UNetModel, save_state_dict
from densepure.models.classifiers import Classifier, InputRange, Preprocess, ResizeMode
from densepure.models.presets import Dataset, DiffusionPreset
from densepure.precision import Precision


def tiny_classifier() -> Classifier:
    """A deterministic tiny CNN with bicubic upsampling 32 -> 40 and mean/std inside its preprocessing."""
    gen = torch.Generator().manual_seed(1234)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.LayerNorm(32), nn.Linear(32, 7))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    pre = Preprocess(InputRange.ZERO_ONE, 40, ResizeMode.BICUBIC, True, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    return Classifier(net, pre, num_classes=7).eval()


def golden_export(tmp_path_factory, model: UNetModel, data: dict, name: str):
    """export_command on a preset made of the golden flags and weights (fp32 UNet + tiny classifier)."""
    base = tmp_path_factory.getbasetemp() / "shared-exports"
    ckpt = base / f"{name}.pt"
    if not ckpt.is_file():
        save_state_dict(ckpt, model.state_dict())
    preset = DiffusionPreset(name, json.loads(str(data["config"])), Dataset.CIFAR10, str(ckpt))
    return export_command(preset, ckpt, base / name, precisions=(Precision.FP32,), classifier=tiny_classifier(),
                          classifier_label="tiny test CNN")
