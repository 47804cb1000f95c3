"""Lifecycle templates for backends (after Polygraphy's runners).

Public methods check state and inputs once; subclasses implement only the ``_impl`` hooks.
A backend is a context manager: ``__enter__`` acquires engines, buffers and streams
(``_activate_impl``), ``__exit__`` releases them. A call outside the ``with`` block is an error: an
implicit activation per call would, for TensorRT, deserialize the engine on every batch. The engine
keeps its backends active while it is (``with engine:``, or for the length of ``Engine.run``).

Shapes: ``x`` ``(B, C, H, W)`` float32 on the backend's device (the model's [-1, 1] space);
``t_model`` ``(B,)`` float32 (the checkpoint's timestep convention). Outputs are float32.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

import torch

from densepure.errors import BackendError


class Denoiser(Protocol):
    """The diffusion model seam, declared once: ``eps_and_var(x, t_model) -> (eps, v)``, each ``(B, C, H, W)``
    float32 (``x`` in the model's [-1, 1] space, ``t_model`` ``(B,)`` float32 in the checkpoint's timestep
    convention). Every backend's :class:`DenoiserBackend` and the torch UNet itself satisfy it."""

    def eps_and_var(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class LogitsModel(Protocol):
    """The classifier seam, declared once: ``logits(x) -> (B, num_classes)`` float32 for ``x`` ``(B, C, H, W)``
    in [-1, 1], preprocessing included. Every :class:`ClassifierBackend` and the torch
    :class:`~densepure.models.classifiers.Classifier` satisfy it."""

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


class _Lifecycle(abc.ABC):
    name = "backend"
    role = "model"

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.active = False

    def __enter__(self):
        if not self.active:
            self._activate_impl()
            self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self._deactivate_impl()
            self.active = False

    def _activate_impl(self) -> None:
        """Acquire resources (sessions, engines, buffers, streams). Default: nothing to do."""

    def _deactivate_impl(self) -> None:
        """Release what ``_activate_impl`` acquired. Default: nothing to do."""

    def _check_active(self) -> None:
        if not self.active:
            raise BackendError(f"the {self.name} {self.role} is used outside its `with` block: activate it first "
                               f"(`with backend: ...`; the engine does this for the length of a run)")

    def _check_input(self, x: torch.Tensor, what: str) -> None:
        self._check_active()
        if x.dim() != 4:
            raise BackendError(f"{self.name}: {what} must be (B, C, H, W), got shape {tuple(x.shape)}")
        if x.device != self.device and not (x.device.type == self.device.type == "cuda" and self.device.index is None):
            raise BackendError(f"{self.name}: {what} is on {x.device}, the backend runs on {self.device}")


class DenoiserBackend(_Lifecycle):
    """The diffusion model seam: ``eps_and_var(x, t_model) -> (eps, v)``, each ``(B, C, H, W)`` float32."""

    role = "denoiser"

    def __init__(self, device: torch.device, channels: int, image_size: int):
        super().__init__(device)
        self.channels, self.image_size = int(channels), int(image_size)

    def eps_and_var(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x, "x")
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise BackendError(f"{self.name}: x must be (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if t_model.shape != (x.shape[0],) or t_model.dtype != torch.float32:
            raise BackendError(f"{self.name}: t_model must be ({x.shape[0]},) float32, got "
                               f"{tuple(t_model.shape)} {t_model.dtype}")
        return self._eps_and_var_impl(x, t_model)

    @abc.abstractmethod
    def _eps_and_var_impl(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model; inputs are already checked."""


class ClassifierBackend(_Lifecycle):
    """The classifier seam: ``logits(x) -> (B, num_classes)`` float32 for ``x`` ``(B, *image_shape)`` in [-1, 1]."""

    role = "classifier"

    def __init__(self, device: torch.device, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(device)
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(d) for d in image_shape)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, "x")
        if tuple(x.shape[1:]) != self.image_shape:
            raise BackendError(f"{self.name}: x must be (B, {', '.join(map(str, self.image_shape))}), "
                               f"got {tuple(x.shape)}")
        return self._logits_impl(x)

    @abc.abstractmethod
    def _logits_impl(self, x: torch.Tensor) -> torch.Tensor:
        """Run the classifier (preprocessing included); the input is already checked."""


@dataclass(frozen=True)
class Backends:
    """The engine's two models: the denoiser (None for Gaussian smoothing) and the classifier."""

    denoiser: DenoiserBackend | None
    classifier: ClassifierBackend
