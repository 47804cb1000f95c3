"""Classifiers and their preprocessing, on the device.

The engine's seam is ``logits(x)`` with ``x`` in the diffusion model's [-1, 1] space, ``(B, C, H, W)``
float32: the purified ``x0_hat`` (DensePure, one-step) or ``2(x+delta)-1`` (Gaussian smoothing).
:class:`Preprocess` turns that into what the network was trained on (input range, resize, mean/std)
with tensor ops, replacing the CPU feature extractors of the reference code.

Sources: any ``torch.nn.Module``; a Hugging Face ``transformers`` image classifier from a local
directory (the CIFAR-10 ViT-B/16 of the papers); a ``timm`` model with a local checkpoint
(BEiT-L/16 at 512). Hub downloads are never attempted.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from densepure.errors import CheckpointError, ConfigError


class InputRange(enum.Enum):
    """The value range a network expects before mean/std normalisation."""

    ZERO_ONE = "0,1"
    MINUS_ONE_ONE = "-1,1"


class ResizeMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


@dataclass(frozen=True)
class Preprocess:
    """Device-side preprocessing from [-1, 1] images to a network's input.

    ``size``: square output side (None keeps the size); ``antialias`` applies when downsampling
    with bilinear/bicubic; ``mean``/``std`` per channel, applied after the range conversion
    (empty tuples: no normalisation).
    """

    input_range: InputRange = InputRange.ZERO_ONE
    size: int | None = None
    mode: ResizeMode = ResizeMode.BICUBIC
    antialias: bool = True
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_range", InputRange(self.input_range))
        object.__setattr__(self, "mode", ResizeMode(self.mode))
        if self.size is not None and int(self.size) < 1:
            raise ConfigError(f"preprocess size must be >= 1, got {self.size}")
        if len(self.mean) != len(self.std):
            raise ConfigError(f"mean and std must have the same length, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be > 0, got {self.std}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_range is InputRange.ZERO_ONE:
            x = (x + 1.0) * 0.5
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            aa = self.antialias and self.mode is not ResizeMode.NEAREST
            kwargs = {} if self.mode is ResizeMode.NEAREST else {"align_corners": False, "antialias": aa}
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode.value, **kwargs)
        if self.mean:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x


class Classifier(nn.Module):
    """A network plus its preprocessing; ``forward(x)`` = logits for ``x`` in [-1, 1], float32 ``(B, classes)``."""

    def __init__(self, network: nn.Module, preprocess: Preprocess, num_classes: int | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.network = network.eval()
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.compute_dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(self.preprocess(x.float()).to(self.compute_dtype))
        logits = out.logits if hasattr(out, "logits") else out
        return logits.float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    @torch.no_grad()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``(B,)`` int64 (ties: lowest index, as ``argmax``)."""
        return self(x).argmax(dim=1)


_HF_RESAMPLE = {0: ResizeMode.NEAREST, 2: ResizeMode.BILINEAR, 3: ResizeMode.BICUBIC}


def _hf_preprocess(directory: Path) -> Preprocess:
    """Preprocess equivalent to a saved HF image processor (resize, rescale to [0,1], normalise)."""
    import json

    cfg_path = directory / "preprocessor_config.json"
    if not cfg_path.is_file():
        return Preprocess(InputRange.ZERO_ONE, 224, ResizeMode.BILINEAR, True, (0.5,) * 3, (0.5,) * 3)
    cfg = json.loads(cfg_path.read_text())
    size = cfg.get("size", 224)
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge", 224))
    mean = tuple(cfg.get("image_mean", ())) if cfg.get("do_normalize", True) else ()
    std = tuple(cfg.get("image_std", ())) if cfg.get("do_normalize", True) else ()
    mode = _HF_RESAMPLE.get(int(cfg.get("resample", 2)), ResizeMode.BILINEAR)
    return Preprocess(InputRange.ZERO_ONE, int(size) if cfg.get("do_resize", True) else None, mode, True, mean, std)


def from_transformers(path: str | os.PathLike, preprocess: Preprocess | None = None,
                      device: torch.device | str = "cpu") -> Classifier:
    """A HF ``AutoModelForImageClassification`` from a local directory (or the local HF cache; no download).

    The papers' CIFAR-10 classifier is ``aaraki/vit-base-patch16-224-in21k-finetuned-cifar10``; DDS
    resizes bicubically with antialiasing: pass ``Preprocess(size=224, mode=BICUBIC, mean=(.5,)*3,
    std=(.5,)*3)`` to match it exactly.
    """
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as exc:
        raise ConfigError("Hugging Face classifiers need 'transformers': pip install 'densepure[transformers]'") from exc
    try:
        model = AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a transformers image classifier from {path}: {exc}".splitlines()[0]) from exc
    local = Path(path)
    pre = preprocess or (_hf_preprocess(local) if local.is_dir() else _hf_preprocess(Path("/nonexistent")))
    return Classifier(model, pre, num_classes=int(model.config.num_labels)).to(device)


def from_timm(name: str, checkpoint: str | os.PathLike | None, preprocess: Preprocess | None = None,
              device: torch.device | str = "cpu") -> Classifier:
    """A ``timm`` model built without download; weights from a local ``checkpoint`` (weights_only).

    The ImageNet classifier of the papers is ``beit_large_patch16_512``: input x0_hat in [-1,1]
    bicubic-resized to 512 (its mean/std of 0.5 make the range conversion the identity).
    """
    try:
        import timm
    except ImportError as exc:
        raise ConfigError("timm classifiers need 'timm': pip install 'densepure[timm]'") from exc
    from densepure.models.checkpoint import load_into, read_state_dict

    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise ConfigError(f"unknown timm model {name!r}: {exc}") from exc
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint), source=str(checkpoint))
    if preprocess is None:
        cfg = model.pretrained_cfg
        mode = ResizeMode(cfg.get("interpolation", "bicubic")) if cfg.get("interpolation") in ("bicubic", "bilinear", "nearest") else ResizeMode.BICUBIC
        preprocess = Preprocess(InputRange.ZERO_ONE, int(cfg["input_size"][-1]), mode, True,
                                tuple(cfg.get("mean", ())), tuple(cfg.get("std", ())))
    return Classifier(model, preprocess, num_classes=int(model.num_classes)).to(device)
