"""Checkpoint I/O: safe reading (``weights_only=True`` or safetensors) and strict, explained loading.

A pickle can run code, so torch files are always read with ``torch.load(..., weights_only=True)``.
Loading compares keys and shapes first and raises :class:`CheckpointError` naming a few missing,
unexpected and mismatched keys (and their counts) instead of torch's long traceback.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from densepure.errors import CheckpointError
from densepure.paths import check_output, replace_file

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "ema", "net")
_SHOWN = 4


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pt``/``.pth``/``.bin`` (weights_only) or ``.safetensors`` file, on CPU."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise CheckpointError("reading .safetensors needs the 'safetensors' package (pip install safetensors)") from exc
        try:
            return _unwrap(load_file(str(p), device="cpu"), str(p))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read {p} as safetensors: {exc}") from exc
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(unsafe_pickle_message(p, exc)) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc}") from exc
    return _unwrap(obj, str(p))


def unsafe_pickle_message(path: os.PathLike | str, exc: BaseException) -> str:
    """One line for a refused pickle, naming what it tried to load. torch's own message goes on to advise
    loading with ``weights_only=False``; that advice would run the file's code, so it is not passed on."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return (f"{path} holds pickled Python objects{what}, not only tensors; densepure reads plain tensor "
            "checkpoints (or .safetensors) and never runs a file's code")


def save_state_dict(path: str | os.PathLike, state: Mapping[str, torch.Tensor]) -> None:
    """Write a plain state dict (loadable with ``weights_only=True``); ``.safetensors`` by suffix. The file is
    written beside ``path`` and renamed over it (:func:`densepure.paths.replace_file`), never through a link."""
    p = check_output(path, "the checkpoint", may_exist=True)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if p.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(tensors)
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        data = buffer.getvalue()
    replace_file(p, data)


def _listing(title: str, names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    return f"{len(names)} {title} ({shown})"


def describe_mismatch(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]) -> str | None:
    """A one-paragraph description of how ``found`` differs from ``expected`` shapes, or None if it fits."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(found[k].shape)}"
        for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k].shape)
    )
    parts = [_listing(t, n) for t, n in (("missing keys", missing), ("unexpected keys", unexpected),
                                          ("shape mismatches", wrong)) if n]
    return "; ".join(parts) if parts else None


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Copy ``state`` into ``model`` strictly, or raise CheckpointError explaining the mismatch."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problem = describe_mismatch(expected, state)
    if problem:
        raise CheckpointError(f"{source} does not fit this architecture: {problem}")
    model.load_state_dict(dict(state), strict=True)
    return model
