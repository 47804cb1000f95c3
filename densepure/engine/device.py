"""Which device the engine runs on: the one place a user's ``--device`` becomes a ``torch.device``."""

from __future__ import annotations

import torch

from densepure.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cpu``, ``cuda`` and ``cuda:N`` must exist here.

    Anything else (``meta``, ``mps`` on a machine without it, a typo) is a :class:`ConfigError` saying
    what is allowed, never a traceback from deep inside the engine.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here (see `densepure doctor`)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
    return device
