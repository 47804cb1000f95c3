"""Issue 18, item 8: a checkpoint of the wrong preset names the preset that fits.

The stand-ins have the official checkpoints' exact keys and shapes (the listings in ``tests/assets/golden``
were made with the official improved- and guided-diffusion code) with every tensor a zero-stride view of
one value: the real files' format at a few kilobytes. Fitting is checked on the meta device.
"""

from __future__ import annotations

import json

import pytest
import torch

from densepure.cli import main
from densepure.errors import CheckpointError
from densepure.models import build_unet
from densepure.models.presets import presets_fitting


def stand_in(golden_dir, name: str, tmp_path):
    """A checkpoint with the keys and shapes of the official one listed in ``keys_{name}.json``."""
    keys = json.loads((golden_dir / f"keys_{name}.json").read_text())["keys"]
    one = torch.zeros(1)
    state = {key: one.expand(*shape) if shape else one.reshape(()) for key, shape in keys.items()}
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    assert path.stat().st_size < 200_000
    return path


@pytest.mark.parametrize("name, fits", [("improved_diffusion_cifar10_uncond", "cifar10"),
                                        ("guided_diffusion_256x256_uncond", "imagenet256")])
def test_the_official_layouts_fit_their_presets(golden_dir, tmp_path, name, fits):
    state = torch.load(stand_in(golden_dir, name, tmp_path), weights_only=True)
    assert presets_fitting(state) == [fits]


@pytest.mark.parametrize("name, fits, asked", [("guided_diffusion_256x256_uncond", "imagenet256", "cifar10"),
                                               ("improved_diffusion_cifar10_uncond", "cifar10", "imagenet256")])
def test_a_checkpoint_of_another_preset_names_it(golden_dir, tmp_path, name, fits, asked):
    path = stand_in(golden_dir, name, tmp_path)
    article = "an" if fits[0] in "aeiou" else "a"
    with pytest.raises(CheckpointError, match=f"is {article} {fits} checkpoint, not one of preset '{asked}': add "
                                              f"--preset {fits}$"):
        build_unet(asked, path, device="meta")


def test_a_checkpoint_that_fits_no_preset_lists_the_mismatches(golden_dir, tmp_path):
    keys = json.loads((golden_dir / "keys_improved_diffusion_cifar10_uncond.json").read_text())["keys"]
    state = {k: torch.zeros(1).expand(*shape) if shape else torch.zeros(())
             for k, shape in keys.items() if "input_blocks.1." not in k}
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit this architecture: .* missing keys") as info:
        build_unet("cifar10", path, device="meta")
    assert "--preset" not in str(info.value)


def test_cli_names_the_preset_in_one_line(capsys, golden_dir, tmp_path):
    """The default preset is digits: the ImageNet checkpoint alone says which --preset to add."""
    path = stand_in(golden_dir, "guided_diffusion_256x256_uncond", tmp_path)
    out = tmp_path / "r.tsv"
    code = main(["certify", "--checkpoint", str(path), "--device", "cpu", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("densepure: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert err.rstrip().endswith("is an imagenet256 checkpoint, not one of preset 'digits': add --preset imagenet256")
    assert not out.exists() or out.read_text().count("\n") <= 1
