"""Backends behind the engine's narrow seam: ``eps_and_var(x, t_model)`` and ``logits(x)``.

``torch`` runs in-process modules (CPU or CUDA); ``onnxruntime`` and ``tensorrt`` run the artifacts
of :mod:`densepure.export`. Each backend module imports its runtime lazily.
"""

from densepure.engine.backends.base import Backends, ClassifierBackend, DenoiserBackend
from densepure.engine.backends.torch_backend import TorchClassifier, TorchDenoiser

__all__ = ["Backends", "ClassifierBackend", "DenoiserBackend", "TorchClassifier", "TorchDenoiser"]
