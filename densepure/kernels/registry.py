"""Which implementation of the kernels runs: the torch references or the Triton kernels.

``--kernels auto|torch|triton`` resolves, for one device, to a :class:`Kernels` whose callables all
come from one implementation. AUTO takes Triton on a CUDA device when a recent enough Triton imports
(and is not in interpreter mode), the torch references otherwise. TRITON is an error where it cannot
run, with the reason; on the CPU it runs only under Triton's interpreter (``TRITON_INTERPRET=1`` set
before triton is first imported), which is how the tests check the kernels without a GPU.

Nothing here imports triton at module import: :func:`triton_status` imports it when asked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from densepure.choices import Choice
from densepure.errors import BackendError, install_hint

__all__ = ["MIN_TRITON", "KernelChoice", "Kernels", "TritonStatus", "resolve_kernels", "triton_status"]

MIN_TRITON = (3, 7)  # the interpreter runs on CPU tensors with current numpy from 3.7
MIN_TRITON_CUDA = (3, 5)  # compiled kernels on a GPU (the lent H200's image has 3.6)


class KernelChoice(Choice, what="kernels"):
    """The ``--kernels`` option."""

    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"


@dataclass(frozen=True)
class TritonStatus:
    """Whether the Triton kernels can run on a device, and why not.

    ``interpreter`` is True when ``TRITON_INTERPRET`` was set as triton was imported: kernels then run
    on the host in numpy (exact but slow), whatever the tensors' device.
    """

    available: bool
    reason: str
    version: str | None = None
    interpreter: bool = False


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def triton_status(device: torch.device | str | None = None) -> TritonStatus:
    """Can densepure's Triton kernels run on ``device`` (None: on this machine's first CUDA device)?"""
    try:
        triton = importlib.import_module("triton")
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer to "why not"
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return TritonStatus(False, f"triton is not importable ({why}); {install_hint('kernels')}")
    version = str(getattr(triton, "__version__", "0"))
    if _version_tuple(version) < MIN_TRITON_CUDA:
        need = ".".join(map(str, MIN_TRITON_CUDA))
        return TritonStatus(False, f"triton {version} is too old: densepure's kernels need triton >= {need}", version)
    interpreter = bool(triton.knobs.runtime.interpret)
    if interpreter and _version_tuple(version) < MIN_TRITON:
        need = ".".join(map(str, MIN_TRITON))
        return TritonStatus(False, f"triton {version}'s interpreter cannot run densepure's kernels on CPU tensors: "
                                   f"it needs triton >= {need}", version, True)
    if interpreter:
        return TritonStatus(True, "Triton's interpreter (TRITON_INTERPRET=1): exact, runs on the host, slow",
                            version, True)
    kind = torch.device(device).type if device is not None else "cuda"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return TritonStatus(False, "no CUDA device (torch.cuda.is_available() is False)", version)
        return TritonStatus(True, f"CUDA device and triton {version}", version)
    return TritonStatus(False, f"Triton kernels run on CUDA devices, not {kind}; on the CPU only under Triton's "
                               "interpreter (TRITON_INTERPRET=1 set before triton is imported)", version)


@dataclass(frozen=True)
class Kernels:
    """One implementation's kernels (signatures in :mod:`densepure.kernels.rows` and
    :mod:`densepure.kernels.groupnorm`) and why it was chosen; ``name`` ("torch" or "triton") and
    ``version`` go into result sidecars."""

    name: str
    reason: str
    version: str | None
    start_rows: Callable
    spawn_rows: Callable
    step_rows: Callable
    group_norm_silu: Callable

    def describe(self) -> str:
        """One line, e.g. ``triton 3.7.1 (CUDA device and triton >= 3.7)`` or ``torch (...)``."""
        label = f"{self.name} {self.version}" if self.version else self.name
        return f"{label} ({self.reason})"


def _torch_kernels(reason: str) -> Kernels:
    from densepure.kernels import groupnorm, rows

    return Kernels("torch", reason, None, rows.start_rows, rows.spawn_rows, rows.step_rows, groupnorm.group_norm_silu)


def _triton_kernels(status: TritonStatus, device: torch.device) -> Kernels:
    from densepure.kernels import groupnorm_triton, rows_triton

    if device.type != "cuda" and not rows_triton.INTERPRETED:
        raise BackendError(f"--kernels triton cannot run on {device}: densepure's Triton kernels were imported "
                           "compiled (TRITON_INTERPRET was not set when they were first imported)")
    return Kernels("triton", status.reason, status.version, rows_triton.start_rows, rows_triton.spawn_rows,
                   rows_triton.step_rows, groupnorm_triton.group_norm_silu)


def resolve_kernels(choice: KernelChoice | str, device: torch.device | str) -> Kernels:
    """The kernels ``choice`` gives on ``device``; TRITON raises :class:`BackendError` where it cannot run."""
    choice = KernelChoice.parse(choice)
    device = torch.device(device)
    if choice is KernelChoice.TORCH:
        return _torch_kernels("requested")
    status = triton_status(device)
    if choice is KernelChoice.TRITON:
        if not status.available:
            raise BackendError(f"--kernels triton cannot run on {device}: {status.reason}")
        return _triton_kernels(status, device)
    if device.type != "cuda":
        return _torch_kernels(f"auto: {device.type} device")
    if not status.available or status.interpreter:
        return _torch_kernels(f"auto: Triton unavailable ({status.reason})")
    return _triton_kernels(status, device)
