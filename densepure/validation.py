"""Validators of plain values shared by every floor (floor 0: imports nothing of densepure's but errors).

Each returns the value as a plain Python number or raises :class:`~densepure.errors.ConfigError` with
a message that says what was received and what is allowed.
"""

from __future__ import annotations

import math
import numbers

from densepure.errors import ConfigError


def is_int(value: object) -> bool:
    """True for integers (Python or numpy), False for bools (``True`` is not a sample count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for real numbers (Python or numpy), False for bools and strings."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_sigma(sigma: float) -> float:
    """Return ``sigma`` as a float if it is a real number (not bool or str), finite and > 0."""
    if not is_real(sigma):
        raise ConfigError(f"sigma must be a number > 0, got {sigma!r}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ConfigError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)
