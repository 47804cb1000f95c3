"""Golden reference data (outputs of the public implementations), copied into tests/assets/golden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from densepure.models import UNetConfig, UNetModel

GOLDEN = Path(__file__).parent / "assets" / "golden"


def load_golden(name: str) -> dict:
    with np.load(GOLDEN / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def golden_unet(name: str) -> tuple[UNetModel, dict]:
    """The tiny UNet of golden file ``name`` (float16-representable weights loaded as float32)."""
    data = load_golden(name)
    flags = json.loads(str(data["config"]))
    model = UNetModel(UNetConfig.from_flags(flags)).eval()
    state = {k[len("param/"):]: torch.from_numpy(v.astype(np.float32)) for k, v in data.items() if k.startswith("param/")}
    model.load_state_dict(state, strict=True)
    return model, data
