"""Assemble a certification pipeline (denoiser, classifier, data) from user-level options.

Classifier specs (``--classifier``):
* ``digits`` - the CNN shipped with the package (the embedded default);
* ``hf:DIR`` - a Hugging Face ``transformers`` image classifier saved in DIR (or a hub id present
  in the local cache; nothing is downloaded);
* ``timm:NAME[:CHECKPOINT]`` - a ``timm`` architecture with weights from a local file (``.pt``/``.pth``
  read with ``weights_only``, or ``.safetensors``); without CHECKPOINT, its weights in the local HF cache.
Library users can pass any ``torch.nn.Module`` wrapped in :class:`~densepure.models.classifiers.Classifier`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import torch

from densepure.errors import ConfigError
from densepure.models.classifiers import Classifier, InputRange, Preprocess, ResizeMode


class ClassifierSource(enum.Enum):
    DIGITS = "digits"
    HF = "hf"
    TIMM = "timm"


@dataclass(frozen=True)
class ClassifierSpec:
    source: ClassifierSource
    location: str = ""
    checkpoint: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ClassifierSpec":
        head, _, rest = text.partition(":")
        try:
            source = ClassifierSource(head)
        except ValueError:
            raise ConfigError(f"unknown classifier {text!r}; use 'digits', 'hf:DIR' or 'timm:NAME[:CHECKPOINT]'") from None
        if source is ClassifierSource.DIGITS:
            return cls(source)
        if not rest:
            raise ConfigError(f"classifier {text!r} needs a location after '{head}:'")
        if source is ClassifierSource.TIMM:
            name, _, ckpt = rest.partition(":")
            if not name:
                raise ConfigError(f"classifier {text!r} needs a timm model name: 'timm:NAME[:CHECKPOINT]'")
            return cls(source, name, ckpt or None)
        return cls(source, rest)


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_precision(name: str) -> torch.dtype:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}") from None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit unavailable device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here (see `densepure doctor`)")
    return device


def load_classifier(spec: ClassifierSpec, device: torch.device, preprocess: Preprocess | None = None) -> Classifier:
    """Load the classifier named by ``spec`` (eval mode, on ``device``)."""
    from densepure.models import classifiers

    if spec.source is ClassifierSource.DIGITS:
        from densepure.models.digits import load_digits_classifier

        net = load_digits_classifier(device=device)
        return Classifier(net, preprocess or Preprocess(InputRange.ZERO_ONE), num_classes=10).to(device)
    if spec.source is ClassifierSource.HF:
        return classifiers.from_transformers(spec.location, preprocess, device)
    return classifiers.from_timm(spec.location, spec.checkpoint, preprocess, device)


def papers_preprocess(dataset: str) -> Preprocess:
    """The papers' classifier input: x0_hat in [-1,1] bicubically resized (224 for CIFAR-10's ViT, 512 for BEiT)."""
    size = {"cifar10": 224, "imagenet": 512}.get(dataset)
    if size is None:
        raise ConfigError(f"no paper preprocessing for dataset {dataset!r}")
    return Preprocess(InputRange.ZERO_ONE, size, ResizeMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3)


def default_checkpoint(preset_name: str, checkpoint: str | None) -> str | None:
    """The checkpoint to load: the given one, the packaged one for shipped presets, else an error."""
    if checkpoint is not None:
        return checkpoint
    from densepure.models import get_preset

    preset = get_preset(preset_name)
    path = Path(preset.checkpoint_file)
    if path.is_absolute() and path.is_file():
        return str(path)
    raise ConfigError(f"preset {preset_name!r} needs --checkpoint (the official file is {preset.checkpoint_file})")
