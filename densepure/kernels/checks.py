"""Input checks shared by every implementation of a kernel, so the torch reference and the Triton
kernel accept and reject exactly the same calls.

Checks look at shapes, dtypes, devices and strides only: they never read tensor values (that would
synchronize a CUDA stream). Index values (slots, rows) are the caller's contract: out-of-range
indices raise an ``IndexError`` in the torch reference and are undefined in a Triton kernel.
"""

from __future__ import annotations

import math

import torch

from densepure.errors import InputError
from densepure.noise import MAX_NUMEL, WORDS

__all__ = ["check_index", "check_words", "float_rows", "row_layout", "writable_rows"]


def _describe(t: object) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{t.dtype} {tuple(t.shape)} on {t.device}"


def row_layout(t: torch.Tensor) -> bool:
    """True if every row ``t[i]`` is C-contiguous (any stride between rows)."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:]), strict=False):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def float_rows(t: object, name: str, device: torch.device, shape: tuple[int, ...] | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``t`` as a ``(N, *shape)`` tensor of ``dtype`` on ``device`` whose rows are C-contiguous (a copy
    only if they are not). ``shape=None`` accepts any per-row shape of at most ``MAX_NUMEL`` values."""
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() < 2 or t.device != device:
        want = f"(N, {', '.join(map(str, shape))})" if shape is not None else "(N, ...)"
        raise InputError(f"{name} must be a {want} {dtype} tensor on {device}, got {_describe(t)}")
    if shape is not None and tuple(t.shape[1:]) != tuple(shape):
        raise InputError(f"{name} rows must have shape {tuple(shape)}, got {tuple(t.shape[1:])}")
    if math.prod(t.shape[1:]) > MAX_NUMEL:
        raise InputError(f"{name} rows have {math.prod(t.shape[1:])} values, at most {MAX_NUMEL} are allowed")
    return t if row_layout(t) else t.contiguous()


def writable_rows(t: object, name: str, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """Like :func:`float_rows` for an output written in place: rows must already be C-contiguous."""
    checked = float_rows(t, name, device, shape)
    if checked is not t:
        raise InputError(f"{name} is written in place, so its rows must be C-contiguous; got strides {t.stride()}")
    return checked


def check_index(t: object, name: str, device: torch.device, length: int | None = None) -> torch.Tensor:
    """A 1-D int64 index tensor on ``device`` (of ``length`` entries when given)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1 or t.device != device:
        raise InputError(f"{name} must be a 1-D int64 tensor on {device}, got {_describe(t)}")
    if length is not None and t.shape[0] != length:
        raise InputError(f"{name} must have {length} entries (one per row), got {t.shape[0]}")
    return t.contiguous()


def check_words(t: object, device: torch.device, length: int) -> torch.Tensor:
    """Row words ``(length, 6)`` int64 on ``device`` (:func:`densepure.noise.row_words`)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != (length, WORDS) \
            or t.device != device:
        raise InputError(f"row words must be a ({length}, {WORDS}) int64 tensor on {device} (one row per "
                         f"row of the call), got {_describe(t)}")
    return t.contiguous()
