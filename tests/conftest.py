"""Shared fixtures: the golden reference data (copied from the public implementations' outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from densepure.models import UNetModel
from golden_data import GOLDEN, golden_unet


@pytest.fixture(scope="session")
def improved_tiny() -> tuple[UNetModel, dict]:
    return golden_unet("unet_improved_tiny")


@pytest.fixture(scope="session")
def guided_tiny() -> tuple[UNetModel, dict]:
    return golden_unet("unet_guided_tiny")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN
