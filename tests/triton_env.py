"""Where the Triton kernel tests run: compiled on a CUDA device when there is one, otherwise on the CPU
under Triton's interpreter. ``TRITON_INTERPRET`` must be set before densepure's ``*_triton`` modules are
first imported (``triton.jit`` decides at decoration), so test modules call :func:`prefer_interpreter`
at import; it changes nothing on a machine with a GPU, where the same tests run compiled kernels."""

from __future__ import annotations

import os

import pytest
import torch


def kernel_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def prefer_interpreter() -> None:
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def triton_kernels_or_skip(device: torch.device):
    """The Triton :class:`~densepure.kernels.Kernels` for ``device``, or skip with the reason."""
    prefer_interpreter()
    from densepure.errors import BackendError
    from densepure.kernels import resolve_kernels, triton_status

    status = triton_status(device)
    if not status.available:
        pytest.skip(f"Triton kernels unavailable: {status.reason}")
    try:
        return resolve_kernels("triton", device)
    except BackendError as err:
        pytest.skip(str(err))


def fresh_generator(request) -> torch.Generator:
    """A generator with a new seed per test (printed, so a failure can be replayed)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"{request.node.name}: seed {seed}")
    return torch.Generator().manual_seed(seed)
