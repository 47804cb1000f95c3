"""densepure: certified adversarial robustness with diffusion purification, fast and exact.

Sub-packages follow the data's journey, lower floors first (``docs/architecture.md`` draws them):

* floor 0: ``errors``, ``choices``, ``precision``, ``validation``, ``hashing``, ``paths`` - shared by every floor;
* ``diffusion`` (pure math: schedules, t*, the coarse grid, the reverse step), ``noise`` (counter-based
  Philox noise keyed by identity), ``data`` (dataset readers), ``stats`` (certification statistics on
  counts), ``results`` (result files), ``artifacts`` (export manifests and caches);
* ``models`` (UNet, classifiers, presets, checkpoints), ``kernels`` (Triton kernels beside their torch
  references);
* ``engine`` (the runtime: scheduler, executor, backends), ``export`` (ONNX graphs, TensorRT engines);
* ``certify`` (options, tasks, the job), then its drivers ``serve`` (the server), ``distributed`` (Ray)
  and ``cli`` (the only place that reads argv and the environment).

Importing ``densepure`` loads nothing heavy: sub-packages are imported where they are used.
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
