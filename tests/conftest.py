"""Shared fixtures: the golden reference data (copied from the public implementations' outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden_data import GOLDEN, golden_unet

from densepure.models import UNetModel

# The test models are tiny: one thread is faster than two and immune to a busy neighbour
# (two threads spinning on a loaded 2-core machine made an 8x8 convolution 50x slower).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def improved_tiny() -> tuple[UNetModel, dict]:
    return golden_unet("unet_improved_tiny")


@pytest.fixture(scope="session")
def guided_tiny() -> tuple[UNetModel, dict]:
    return golden_unet("unet_guided_tiny")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN
