"""densepure: certified adversarial robustness with diffusion purification, fast and exact.

Sub-packages follow the data's journey: ``diffusion`` (pure math), ``models`` (UNet, classifiers,
presets, checkpoints), ``engine`` (runtime), ``certify`` (base classifiers and statistics),
``export`` (ONNX / TensorRT artifacts), ``data`` (dataset readers). Importing ``densepure`` loads
nothing heavy: sub-packages are imported where they are used.
"""

from __future__ import annotations

from densepure.errors import (
    ArtifactError,
    BackendError,
    CheckpointError,
    ConfigError,
    DensePureError,
    InputError,
)

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "DensePureError",
    "InputError",
    "__version__",
]
