"""Classifiers and their preprocessing, on the device.

The engine's seam is ``logits(x)`` with ``x`` in the diffusion model's [-1, 1] space, ``(B, C, H, W)``
float32: the purified ``x0_hat`` (DensePure, one-step) or ``2(x+delta)-1`` (Gaussian smoothing).
:class:`Preprocess` turns that into what the network was trained on (input range, resize, mean/std)
with tensor ops, replacing the CPU feature extractors of the reference code.

Sources: any ``torch.nn.Module``; a Hugging Face ``transformers`` image classifier from a local
directory (the CIFAR-10 ViT-B/16 of the papers); a ``timm`` model with a local checkpoint
(BEiT-L/16 at 512). Hub downloads are never attempted; a hub id is only looked up in the local cache.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import os
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from densepure.choices import Choice
from densepure.errors import CheckpointError, ConfigError, install_hint
from densepure.models.checkpoint import unsafe_pickle_message
from densepure.paths import check_input


class InputRange(enum.Enum):
    """The value range a network expects before mean/std normalisation."""

    ZERO_ONE = "0,1"
    MINUS_ONE_ONE = "-1,1"


class ResizeMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"  # samples pixel centres, as PIL's NEAREST does
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class ResizeChoice(Choice, what="resize"):
    """``--resize``: how a classifier's input is resized to its side (the side, range and mean/std stay
    the classifier's own). ``bicubic`` (antialiased) is what the papers do (ALGORITHM §8); ``processor``
    keeps the classifier's own interpolation (a saved HF processor says bilinear for the papers' ViT)."""

    BICUBIC = "bicubic"
    BILINEAR = "bilinear"
    PROCESSOR = "processor"

    def apply(self, preprocess: Preprocess) -> Preprocess:
        """``preprocess`` with this interpolation (antialiased when it shrinks, as PIL and the papers)."""
        if self is ResizeChoice.PROCESSOR:
            return preprocess
        return dataclasses.replace(preprocess, mode=ResizeMode(self.value), antialias=True)


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
            nearest = self.mode in (ResizeMode.NEAREST, ResizeMode.NEAREST_EXACT)
            kwargs = {} if nearest else {"align_corners": False, "antialias": self.antialias}
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode.value, **kwargs)
        if self.mean:
            mean, std = self._mean_std(x)
            x = (x - mean) / std
        return x

    def _mean_std(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean/std as ``(1, C, 1, 1)`` tensors, made once per device and dtype (no host copies per
        call, so a CUDA graph can capture the preprocessing after one warm-up call)."""
        cache = self.__dict__.setdefault("_tensors", {})  # not a field: equality and hashing ignore it
        key = (like.device, like.dtype)
        if key in cache:
            return cache[key]
        made = tuple(torch.tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
                     for v in (self.mean, self.std))
        if type(like) is torch.Tensor:  # not while tracing (fake tensors): a later real call would get fakes
            cache[key] = made
        return made


class Classifier(nn.Module):
    """A network plus its preprocessing; ``forward(x)`` = logits for ``x`` in [-1, 1], float32 ``(B, classes)``."""

    def __init__(self, network: nn.Module, preprocess: Preprocess, num_classes: int | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.network = network
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.compute_dtype = dtype
        self.eval()  # the wrapper too, not just the network: ``training`` reads False and dropout stays off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(self.preprocess(x.float()).to(self.compute_dtype))
        logits = out.logits if hasattr(out, "logits") else out
        return logits.float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def set_precision(self, dtype: torch.dtype) -> Classifier:
        """Run the network in ``dtype``; preprocessing stays float32 and logits come back float32."""
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"unsupported classifier precision {dtype}")
        self.network.to(dtype)
        self.compute_dtype = dtype
        return self

    @torch.no_grad()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``(B,)`` int64 (ties: lowest index, as ``argmax``)."""
        return self(x).argmax(dim=1)


# PIL.Image.Resampling values, as saved in a preprocessor_config.json.
_HF_RESAMPLE = {0: ResizeMode.NEAREST_EXACT, 2: ResizeMode.BILINEAR, 3: ResizeMode.BICUBIC}
_HF_CONFIG = "preprocessor_config.json"


def _hf_file(location: str, filename: str) -> Path | None:
    """``filename`` in a local model directory, or in a hub id's snapshot in the local HF cache (no download)."""
    local = Path(location)
    if os.path.lexists(local):  # a local path (not a hub id): a directory, or a one-line error
        check_input(local, "the hf: classifier", file=False, directory=True)
        return local / filename if (local / filename).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(location, filename)
    except ValueError:  # huggingface_hub.errors.HFValidationError: not a directory, nor a valid hub id
        return None
    return Path(found) if isinstance(found, str) else None


def _hf_side(value: object, what: str) -> int:
    """The square side of a processor ``size``/``crop_size`` (an int or a dict of height/width/shortest_edge)."""
    if isinstance(value, dict):
        sides = {value[k] for k in ("height", "width", "shortest_edge") if value.get(k) is not None}
        if len(sides) != 1 or value.get("longest_edge") is not None:
            raise ConfigError(f"only square resizes are supported, got {what} {value}: pass an explicit Preprocess")
        value = sides.pop()
    return int(value)


def _hf_size(cfg: dict) -> int | None:
    """Output side of the processor's resize (None: no resize); a centre crop must not cut anything."""
    if not cfg.get("do_resize", True):
        return None
    size = _hf_side(cfg.get("size", 224), "size")
    crop = _hf_side(cfg["crop_size"], "crop_size") if cfg.get("do_center_crop") and "crop_size" in cfg else size
    if crop != size or cfg.get("crop_pct") not in (None, 1, 1.0):
        raise ConfigError(f"centre-cropping processors are not supported (size {size}, crop {crop}, crop_pct "
                          f"{cfg.get('crop_pct')}): pass an explicit Preprocess")
    return size


def _hf_resize_mode(cfg: dict) -> ResizeMode:
    resample = cfg.get("resample", 2)
    if resample not in _HF_RESAMPLE:
        raise ConfigError(f"unsupported resample {resample!r} (supported: 0 nearest, 2 bilinear, 3 bicubic)")
    return _HF_RESAMPLE[resample]


def _hf_normalisation(cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std on [0,1] images equal to the processor's rescale-then-normalise of 8-bit pixels.

    The processor computes ``(f*p - m)/s`` for pixels ``p = 255*z``; that is ``(z - m/(255f)) / (s/(255f))``,
    so any ``rescale_factor`` f (or none: f = 1) folds into the mean/std.
    """
    if cfg.get("rescale_offset"):
        raise ConfigError("processors with rescale_offset are not supported: pass an explicit Preprocess")
    scale = 255.0 * float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 255.0
    normalise = cfg.get("do_normalize", True)
    if normalise and (cfg.get("image_mean") is None or cfg.get("image_std") is None):
        raise ConfigError("the processor normalises but its config has no image_mean/image_std")
    mean, std = (_triple(cfg["image_mean"]), _triple(cfg["image_std"])) if normalise else ((0.0,) * 3, (1.0,) * 3)
    if math.isclose(scale, 1.0, rel_tol=1e-6):  # the usual 1/255: [0,1] input needs no extra scaling
        return (mean, std) if normalise else ((), ())
    return tuple(m / scale for m in mean), tuple(s / scale for s in std)


def _triple(value: float | list[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3


def hf_preprocess(config_file: str | os.PathLike) -> Preprocess:
    """The :class:`Preprocess` equal to a saved HF image processor (``preprocessor_config.json``).

    Resize (square side, PIL resample 0/2/3 -> nearest/bilinear/bicubic, antialiased as PIL is when it
    shrinks), rescale and normalise; settings with no tensor equivalent here raise :class:`ConfigError`.
    """
    try:
        cfg = json.loads(Path(config_file).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the image processor config {config_file}: {exc}") from exc
    mean, std = _hf_normalisation(cfg)
    return Preprocess(InputRange.ZERO_ONE, _hf_size(cfg), _hf_resize_mode(cfg), True, mean, std)


def from_transformers(path: str | os.PathLike, preprocess: Preprocess | None = None,
                      device: torch.device | str = "cpu") -> Classifier:
    """A HF ``AutoModelForImageClassification`` from a local directory (or the local HF cache; no download).

    Weights are loaded in float32 (transformers 5 would keep a half-precision checkpoint's dtype). The
    preprocessing comes from the saved ``preprocessor_config.json`` unless ``preprocess`` is given. The
    papers' CIFAR-10 classifier is ``aaraki/vit-base-patch16-224-in21k-finetuned-cifar10``; DDS resizes
    bicubically with antialiasing: pass ``Preprocess(size=224, mode=BICUBIC, mean=(.5,)*3, std=(.5,)*3)``
    to match it exactly.
    """
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as exc:
        raise ConfigError(f"Hugging Face classifiers need 'transformers' ({_first_line(exc)}): "
                          f"{install_hint('transformers')}") from exc
    location = str(path)
    if _hf_file(location, "config.json") is None:
        raise CheckpointError(f"no config.json for {location}: not a saved model directory nor a model in the local "
                              "Hugging Face cache (nothing is downloaded)")
    if preprocess is None:
        config_file = _hf_file(location, _HF_CONFIG)
        if config_file is None:
            raise ConfigError(f"{location} has no {_HF_CONFIG}: save the model's image processor with it")
        preprocess = hf_preprocess(config_file)
    try:
        with _no_hf_progress_bars():
            model = AutoModelForImageClassification.from_pretrained(location, local_files_only=True,
                                                                    dtype=torch.float32)
    except ImportError as exc:  # the model class's own requirements, e.g. a torchvision built for another torch
        raise ConfigError(f"transformers cannot import the model class for {location}: {_first_line(exc)}") from exc
    except pickle.UnpicklingError as exc:  # transformers reads .bin weights with weights_only=True
        raise CheckpointError(unsafe_pickle_message(location, exc)) from exc
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot load a transformers image classifier from {location}: "
                              f"{_first_line(exc)}") from exc
    return Classifier(model, preprocess, num_classes=int(model.config.num_labels)).to(device)


@contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """transformers 5 draws a "Loading weights" bar for every model it loads: noise in a job's output (the
    job has its own progress). Restored afterwards, so a caller's own setting stands."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_timm() -> ModuleType:
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(f"timm classifiers need 'timm' ({_first_line(exc)}): {install_hint('timm')}") from exc
    except RuntimeError as exc:  # e.g. "operator torchvision::nms does not exist": a CUDA torchvision on a CPU torch
        raise ConfigError(f"timm cannot be imported ({_first_line(exc)}): its torchvision must be built for "
                          f"torch {torch.__version__}") from exc
    return timm


def _timm_weights(timm: ModuleType, name: str) -> Path:
    """The weights of ``name`` in the local HF cache (timm's hub id), or a CheckpointError; never a download."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    raise CheckpointError(f"timm model {name!r} needs weights: give timm:{name}:CHECKPOINT, or have {hub_id or 'them'} "
                          "in the local Hugging Face cache (nothing is downloaded; random weights are never used)")


def _timm_num_classes(timm: ModuleType, name: str, state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the checkpoint's classifier weight (None when absent: the architecture's default)."""
    head = getattr(timm.models.get_pretrained_cfg(name), "classifier", None)
    head = head[0] if isinstance(head, (tuple, list)) else head
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def _timm_preprocess(model: nn.Module) -> Preprocess:
    """Resize to the model's input side with its interpolation and mean/std.

    The side is the patch embedding's fixed ``img_size`` when there is one (``pretrained_cfg`` keeps the
    default's size when the model was built with another ``img_size``). ``crop_pct`` is ignored: DensePure
    feeds the whole image (the papers' BEiT has ``crop_pct`` 1).
    """
    cfg = model.pretrained_cfg
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None) or cfg["input_size"][-2:]
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    if height != width:
        raise ConfigError(f"only square inputs are supported, got {height}x{width}: pass an explicit Preprocess")
    try:
        mode = ResizeMode(cfg.get("interpolation", "bicubic"))
    except ValueError:
        raise ConfigError(f"unsupported timm interpolation {cfg.get('interpolation')!r}: "
                          "pass an explicit Preprocess") from None
    mean, std = tuple(cfg.get("mean", ())), tuple(cfg.get("std", ()))
    return Preprocess(InputRange.ZERO_ONE, int(height), mode, True, mean, std)


def from_timm(name: str, checkpoint: str | os.PathLike | None, preprocess: Preprocess | None = None,
              device: torch.device | str = "cpu", model_kwargs: Mapping[str, object] | None = None) -> Classifier:
    """A ``timm`` model built without download, weights from a local ``checkpoint`` (weights_only or safetensors).

    ``checkpoint`` None: the model's weights in the local HF cache. The number of classes is read from
    the checkpoint's classifier; ``model_kwargs`` go to ``timm.create_model`` (e.g. ``img_size``). The
    ImageNet classifier of the papers is ``beit_large_patch16_512``: input x0_hat in [-1,1] bicubic-resized
    to 512 (its mean/std of 0.5 make the range conversion the identity).
    """
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    from densepure.models.checkpoint import load_into, read_state_dict

    path = Path(checkpoint) if checkpoint is not None else _timm_weights(timm, name)
    state = read_state_dict(path)
    num_classes = _timm_num_classes(timm, name, state)
    kwargs = ({} if num_classes is None else {"num_classes": num_classes}) | dict(model_kwargs or {})
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build timm model {name!r} with {kwargs}: {_first_line(exc)}") from exc
    load_into(model, state, source=str(path))
    return Classifier(model, preprocess or _timm_preprocess(model), num_classes=int(model.num_classes)).to(device)
