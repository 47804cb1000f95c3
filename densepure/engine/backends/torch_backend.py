"""The torch backend: in-process modules, eager (CPU, or CUDA without graphs)."""

from __future__ import annotations

import torch
from torch import nn

from densepure.engine.backends.base import ClassifierBackend, DenoiserBackend
from densepure.models.unet import UNetModel


class TorchDenoiser(DenoiserBackend):
    """A :class:`UNetModel` (any precision set with ``set_precision``) behind the seam."""

    name = "torch"

    def __init__(self, model: UNetModel, channels_last: bool = False):
        device = next(model.parameters()).device
        super().__init__(device, model.config.in_channels, model.config.image_size)
        self.model = model.eval()
        self.channels_last = channels_last and device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _eps_and_var_impl(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model.eps_and_var(x, t_model)


class TorchClassifier(ClassifierBackend):
    """Any module mapping [-1, 1] images to logits (e.g. :class:`~densepure.models.classifiers.Classifier`)."""

    name = "torch"

    def __init__(self, module: nn.Module, num_classes: int, device: torch.device | str | None = None):
        if device is None:
            first = next(iter(module.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        super().__init__(torch.device(device), num_classes)
        self.module = module.eval()

    def _logits_impl(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x).float()
