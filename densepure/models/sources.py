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
from densepure.models.classifiers import Classifier, InputRange, Preprocess, ResizeChoice, ResizeMode
from densepure.paths import check_input


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


# The presets of the papers' checkpoints: their classifiers' inputs are resized bicubically (ALGORITHM §8).
PAPERS_PRESETS = ("cifar10", "imagenet256")
PAPERS_CLASSIFIERS = {"cifar10": "hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10",
                      "imagenet256": "timm:beit_large_patch16_512"}


def required_classifier(preset: str) -> str:
    """The classifier of a job that names none: the shipped one for the digits preset; any other preset needs
    ``--classifier`` (ConfigError naming the papers' classifier for the papers' presets)."""
    if preset == "digits":
        return "digits"
    from densepure.models.presets import get_preset

    get_preset(preset)  # an unknown preset is named as such, not as one that needs --classifier
    papers = PAPERS_CLASSIFIERS.get(preset)
    example = f" (the papers': --classifier {papers}, from the local Hugging Face cache)" if papers else ""
    raise ConfigError(f"preset {preset!r} needs --classifier{example}")


def check_resize(spec: ClassifierSpec, resize: ResizeChoice | str | None) -> ResizeChoice | None:
    """``resize`` parsed, or a ConfigError for the digits classifier, which takes its 8x8 images as they are."""
    if resize is None:
        return None
    if spec.source is ClassifierSource.DIGITS:
        raise ConfigError(f"--resize {ResizeChoice.parse(resize).value} does not apply to the digits classifier: it "
                          "takes the 8x8 images as they are (no resize); --resize is for hf: and timm: classifiers")
    return ResizeChoice.parse(resize)


def default_resize(preset: str | None, spec: ClassifierSpec) -> ResizeChoice | None:
    """The resize a job gets when none is asked for: none for the digits classifier (it has no resize),
    the papers' bicubic for the papers' presets, the classifier's own (``processor``) otherwise."""
    if spec.source is ClassifierSource.DIGITS:
        return None
    return ResizeChoice.BICUBIC if preset in PAPERS_PRESETS else ResizeChoice.PROCESSOR


def load_classifier(spec: ClassifierSpec, device: torch.device, preprocess: Preprocess | None = None,
                    resize: ResizeChoice | str | None = None) -> Classifier:
    """Load the classifier named by ``spec`` (eval mode, on ``device``).

    ``resize`` (hf: and timm: only; None or ``processor``: the classifier's own) replaces the interpolation
    of its preprocessing, e.g. ``bicubic`` for the papers' protocol with a saved bilinear HF processor.
    """
    from densepure.models import classifiers

    resize = check_resize(spec, resize)
    if spec.source is ClassifierSource.DIGITS:
        from densepure.models.digits import load_digits_classifier

        net = load_digits_classifier(device=device)
        return Classifier(net, preprocess or Preprocess(InputRange.ZERO_ONE), num_classes=10).to(device)
    if spec.source is ClassifierSource.HF:
        classifier = classifiers.from_transformers(spec.location, preprocess, device)
    else:
        classifier = classifiers.from_timm(spec.location, spec.checkpoint, preprocess, device)
    if resize is not None:
        classifier.preprocess = resize.apply(classifier.preprocess)
    return classifier


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
        return check_input(spec.checkpoint, "the timm checkpoint")
    return classifiers._timm_weights(classifiers._import_timm(), spec.location)


def papers_preprocess(dataset: str) -> Preprocess:
    """The papers' classifier input: x0_hat in [-1,1] bicubically resized (224 for CIFAR-10's ViT, 512 for BEiT).

    ``--resize bicubic`` (the default of the papers' presets) gives exactly this for the papers' classifiers:
    their processors already have the side and the mean/std of 0.5; only the interpolation differs.
    """
    size = {"cifar10": 224, "imagenet": 512}.get(dataset)
    if size is None:
        raise ConfigError(f"no paper preprocessing for dataset {dataset!r}")
    return Preprocess(InputRange.ZERO_ONE, size, ResizeMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3)
