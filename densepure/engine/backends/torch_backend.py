"""The torch backend: in-process modules; eager on CPU, bucketed CUDA graphs on a GPU.

Precision is the model's own (:meth:`UNetModel.set_precision` keeps GroupNorm, softmax and the
time embedding in float32); ``channels_last`` switches the convolutions' memory layout on CUDA.
With ``buckets`` every call runs at a fixed batch size (:mod:`densepure.engine.backends.graphs`),
captured as a CUDA graph per bucket when ``cuda_graphs`` is set.

float32 math: each model call (eager, graph warm-up and capture) runs inside
:func:`~densepure.precision.float32_math` with the backend's ``tf32`` (False unless the job asked for
``--precision tf32``), so float32 work is exact float32 on CUDA whatever the process-wide flags say.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from densepure.engine.backends.base import ClassifierBackend, DenoiserBackend
from densepure.engine.backends.graphs import BucketedCall
from densepure.models.unet import UNetModel
from densepure.precision import float32_math


def _bucketed(fn, example: list[torch.Tensor], buckets: Sequence[int] | None, device: torch.device,
              cuda_graphs: bool) -> BucketedCall | None:
    if buckets is None:
        return None
    return BucketedCall(fn, example, buckets, device, graphs=cuda_graphs)


class TorchDenoiser(DenoiserBackend):
    """A :class:`UNetModel` (any precision set with ``set_precision``) behind the seam."""

    name = "torch"

    def __init__(self, model: UNetModel, channels_last: bool = False, buckets: Sequence[int] | None = None,
                 cuda_graphs: bool = False, tf32: bool = False):
        device = next(model.parameters()).device
        super().__init__(device, model.config.in_channels, model.config.image_size)
        self.model = model.eval()
        self.tf32 = bool(tf32)
        self.channels_last = channels_last and device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        size = model.config.image_size
        example = [torch.zeros(1, model.config.in_channels, size, size, device=device),
                   torch.zeros(1, device=device)]
        self.call = _bucketed(self._forward, example, buckets, device, cuda_graphs)

    def _forward(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with float32_math(self.tf32):
            return self.model.eps_and_var(x, t_model)

    def _activate_impl(self) -> None:
        if self.call is not None:
            self.call.capture_all()

    def _eps_and_var_impl(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            if self.call is not None:
                eps, v = self.call(x, t_model)
                return eps, v
            return self._forward(x, t_model)


class TorchClassifier(ClassifierBackend):
    """Any module mapping ``(B, *image_shape)`` images in [-1, 1] to logits (e.g.
    :class:`~densepure.models.classifiers.Classifier`)."""

    name = "torch"

    def __init__(self, module: nn.Module, num_classes: int, image_shape: tuple[int, int, int],
                 device: torch.device | str | None = None, buckets: Sequence[int] | None = None,
                 cuda_graphs: bool = False, tf32: bool = False):
        if device is None:
            first = next(iter(module.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        super().__init__(torch.device(device), num_classes, image_shape)
        self.module = module.eval()
        self.tf32 = bool(tf32)
        example = [torch.zeros(1, *self.image_shape, device=self.device)]
        self.call = _bucketed(self._forward, example, buckets, self.device, cuda_graphs)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        with float32_math(self.tf32):
            return (self.module(x),)

    def _activate_impl(self) -> None:
        if self.call is not None:
            self.call.capture_all()

    def _logits_impl(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.call is not None:
                return self.call(x)[0]
            return self._forward(x)[0].float()
