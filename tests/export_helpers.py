"""Exports shared by the export and onnxruntime-backend tests (made once per session, by content)."""

from __future__ import annotations

import json

import torch
from torch import nn

from densepure.artifacts import (
    ArtifactFormat,
    ArtifactKind,
    ArtifactManifest,
    SourceInfo,
    TensorSpec,
    manifest_path_for,
    onnx_sha256,
)
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


def stand_in_artifacts(directory, preset="cifar10", classifier="hf:/workstation/models/vit", resize="bicubic",
                       classes=10, shape=(3, 32, 32), precisions=("fp32", "fp16"), unet_preset=None):
    """An export directory as `densepure export` lays it out: a manifest per graph (placeholder graph bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    image = ("batch", *shape)
    for p in precisions:
        for kind in (ArtifactKind.UNET, ArtifactKind.CLASSIFIER):
            path = directory / f"{kind.value}-{p}.onnx"
            path.write_bytes(f"graph {kind.value} {p}".encode())
            if kind is ArtifactKind.UNET:
                specs = ((TensorSpec("x", "float32", image), TensorSpec("t", "float32", ("batch",))),
                         (TensorSpec("eps", "float32", image), TensorSpec("v", "float32", image)))
                source = SourceInfo(unet_preset or preset, "a" * 64, "checkpoint cifar10_uncond_50M_500K.pt")
            else:
                specs = ((TensorSpec("x", "float32", image),), (TensorSpec("logits", "float32", ("batch", classes)),))
                source = SourceInfo(preset, None, classifier, resize=resize)
            manifest = ArtifactManifest(kind, ArtifactFormat.ONNX, Precision(p), 21, onnx_sha256(path), *specs,
                                        source, path.name)
            manifest.write(manifest_path_for(path))
    return directory
