"""Where models come from: classifier specs, shipped and official checkpoints.

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


def classifier_source_path(spec: ClassifierSpec) -> Path:
    """The file or directory a classifier's weights and configuration come from, for content hashing:
    the shipped digits weights, an ``hf:`` directory (or the hub id's snapshot in the local HF cache),
    a ``timm:`` checkpoint (or the model's weights in the local HF cache)."""
    from densepure.models import classifiers

    if spec.source is ClassifierSource.DIGITS:
        from densepure.models.presets import digits_asset_path

        return digits_asset_path("classifier.pt")
    if spec.source is ClassifierSource.HF:
        config = classifiers._hf_file(spec.location, "config.json")
        if config is None:
            raise ConfigError(f"no config.json for {spec.location}: not a saved model directory nor a model in the "
                              "local Hugging Face cache (nothing is downloaded)")
        return config.parent
    if spec.checkpoint is not None:
        return Path(spec.checkpoint)
    return classifiers._timm_weights(classifiers._import_timm(), spec.location)


def papers_preprocess(dataset: str) -> Preprocess:
    """The papers' classifier input: x0_hat in [-1,1] bicubically resized (224 for CIFAR-10's ViT, 512 for BEiT)."""
    size = {"cifar10": 224, "imagenet": 512}.get(dataset)
    if size is None:
        raise ConfigError(f"no paper preprocessing for dataset {dataset!r}")
    return Preprocess(InputRange.ZERO_ONE, size, ResizeMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3)
