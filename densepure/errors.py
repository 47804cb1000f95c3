"""The one small exception hierarchy of densepure.

Every error a user can cause derives from :class:`DensePureError`; the CLI catches exactly this
class and prints its message on one line. Library code raises these ``from`` the underlying cause.
"""

from __future__ import annotations


class DensePureError(Exception):
    """Base class of every error densepure raises on purpose."""


class ConfigError(DensePureError, ValueError):
    """An invalid setting: sigma <= 0, alpha outside (0, 0.5), b < 1, an unknown schedule, ..."""


class InputError(DensePureError, ValueError):
    """Invalid data: wrong shape, values outside [0, 1], NaN, an unreadable image or dataset file."""


class CheckpointError(DensePureError):
    """A checkpoint that cannot be read, or that does not fit the architecture it is loaded into."""


class BackendError(DensePureError):
    """A backend that is unavailable here, or an artifact built for another GPU or runtime version."""


class ArtifactError(BackendError):
    """An exported artifact (ONNX graph, TensorRT engine, manifest) that is missing or inconsistent."""


class ModelOutputError(DensePureError):
    """A model returned something no certificate may be built on: NaN or inf outputs or logits."""


def install_hint(extra: str) -> str:
    """How to install the optional dependencies ``extra`` (a ``pyproject.toml`` extra), for error messages.
    densepure is not on a package index: it installs from a clone, or from a wheel built there (README,
    "Install"), so ``pip install 'densepure[extra]'`` would find nothing."""
    return f"from a densepure clone: pip install -e '.[{extra}]'"
