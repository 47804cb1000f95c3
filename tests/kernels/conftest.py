"""Kernel tests: Triton's interpreter on the CPU (set before any triton kernel module is imported), compiled
kernels on a GPU; fresh random inputs in every test."""

from __future__ import annotations

import pytest
import torch
from triton_env import fresh_generator, kernel_device, prefer_interpreter, triton_kernels_or_skip

prefer_interpreter()


@pytest.fixture(scope="session")
def device() -> torch.device:
    return kernel_device()


@pytest.fixture(scope="session")
def triton_kernels(device):
    return triton_kernels_or_skip(device)


@pytest.fixture
def gen(request) -> torch.Generator:
    return fresh_generator(request)
