"""Named presets: the architectures and schedules of the official checkpoints DensePure uses.

Flags are those of the official ``create_model_and_diffusion`` calls (ALGORITHM §8). Building a
preset on the ``meta`` device costs no memory; :func:`build_unet` then loads a checkpoint into it.
The presets themselves need no torch (``densepure presets`` lists them without it): the functions that
build or check a UNet import it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from densepure.diffusion.schedules import NoiseSchedule, ScheduleKind
from densepure.errors import CheckpointError, ConfigError
from densepure.models.unet_config import UNetConfig
from densepure.paths import check_input

if TYPE_CHECKING:
    import torch

    from densepure.models.unet import UNetModel

CIFAR10_FLAGS: Mapping[str, Any] = {
    "image_size": 32, "num_channels": 128, "num_res_blocks": 3, "num_heads": 4, "num_heads_upsample": -1,
    "attention_resolutions": "16,8", "dropout": 0.3, "learn_sigma": True, "class_cond": False,
    "diffusion_steps": 4000, "noise_schedule": "cosine", "use_scale_shift_norm": True,
}
IMAGENET256_FLAGS: Mapping[str, Any] = {
    "image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
    "num_head_channels": 64, "attention_resolutions": "32,16,8", "channel_mult": "", "dropout": 0.0,
    "learn_sigma": True, "class_cond": False, "diffusion_steps": 1000, "noise_schedule": "linear",
    "use_scale_shift_norm": True, "resblock_updown": True, "use_new_attention_order": False,
}


DIGITS_FLAGS: Mapping[str, Any] = {
    "image_size": 8, "in_channels": 1, "num_channels": 32, "num_res_blocks": 2, "channel_mult": "",
    "num_heads": 4, "num_heads_upsample": -1, "attention_resolutions": "4", "dropout": 0.1,
    "learn_sigma": True, "class_cond": False, "diffusion_steps": 1000, "noise_schedule": "cosine",
    "use_scale_shift_norm": True, "resblock_updown": False,
}


def digits_asset_path(name: str) -> Path:
    """Path of a file shipped in ``densepure/assets/digits/`` (``unet.pt``, ``classifier.pt``,
    ``test_split.npz``, ``manifest.json``); nothing is read here."""
    return Path(str(resources.files("densepure").joinpath("assets", "digits", name)))


class Dataset(enum.Enum):
    CIFAR10 = "cifar10"
    IMAGENET = "imagenet"
    DIGITS = "digits"


@dataclass(frozen=True)
class DiffusionPreset:
    """A diffusion checkpoint's architecture, schedule and the data it was trained on."""

    name: str
    flags: Mapping[str, Any]
    dataset: Dataset
    checkpoint_file: str

    @property
    def unet_config(self) -> UNetConfig:
        return UNetConfig.from_flags(self.flags)

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(ScheduleKind.parse(self.flags["noise_schedule"]), int(self.flags["diffusion_steps"]))

    @property
    def image_size(self) -> int:
        return int(self.flags["image_size"])

    @property
    def levels(self) -> int | None:
        """The grid ``k / levels`` its data lie on: 255 for 8-bit images, 16 for scikit-learn's digits (the
        sound noise's default grid where the images themselves do not declare one, as a server's)."""
        return _DATA_LEVELS.get(self.dataset)


_DATA_LEVELS = {Dataset.CIFAR10: 255, Dataset.IMAGENET: 255, Dataset.DIGITS: 16}


PRESETS: dict[str, DiffusionPreset] = {
    "cifar10": DiffusionPreset("cifar10", CIFAR10_FLAGS, Dataset.CIFAR10, "cifar10_uncond_50M_500K.pt"),
    "imagenet256": DiffusionPreset("imagenet256", IMAGENET256_FLAGS, Dataset.IMAGENET, "256x256_diffusion_uncond.pt"),
    # shipped with the package (densepure/assets/digits, see densepure.models.digits): an absolute path
    "digits": DiffusionPreset("digits", DIGITS_FLAGS, Dataset.DIGITS, str(digits_asset_path("unet.pt"))),
}


def register_preset(preset: DiffusionPreset) -> None:
    """Make ``preset`` available by name (used by packages that ship their own weights)."""
    PRESETS[preset.name] = preset


def get_preset(name: str) -> DiffusionPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None


def build_unet(
    config: UNetConfig | DiffusionPreset | str,
    checkpoint: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> UNetModel:
    """Build the UNet (in eval mode), optionally loading ``checkpoint`` into it, on ``device`` in ``dtype``
    (default float32).

    With ``device="meta"`` nothing is allocated (useful to inspect keys and shapes of the real models).
    A checkpoint that does not fit a preset but fits another is a CheckpointError naming that preset.
    """
    import torch

    from densepure.models.checkpoint import load_into, read_state_dict
    from densepure.models.unet import UNetModel

    if isinstance(config, str):
        config = get_preset(config)
    preset = config if isinstance(config, DiffusionPreset) else None
    if isinstance(config, DiffusionPreset):
        config = config.unet_config
    with torch.device("meta" if str(device) == "meta" else "cpu"):
        model = UNetModel(config)
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        try:
            load_into(model, state, source=str(checkpoint))
        except CheckpointError as exc:
            fits = [] if preset is None else presets_fitting(state, exclude=preset.name)
            if fits:
                article = "an" if fits[0][:1].lower() in "aeiou" else "a"
                raise CheckpointError(f"{checkpoint} is {article} {fits[0]} checkpoint, not one of preset "
                                      f"{preset.name!r}: add --preset {fits[0]}") from exc
            raise
    if str(device) != "meta":
        model = model.to(device)
        model.set_precision(torch.float32 if dtype is None else dtype)
    return model.eval()


def presets_fitting(state: Mapping[str, torch.Tensor], exclude: str | None = None) -> list[str]:
    """The presets whose UNet has exactly the keys and shapes of ``state`` (checked on the meta device:
    no memory is allocated), by name; ``exclude`` is not tried."""
    import torch

    from densepure.models.checkpoint import describe_mismatch
    from densepure.models.unet import UNetModel

    fits = []
    for name, preset in sorted(PRESETS.items()):
        if name == exclude:
            continue
        with torch.device("meta"):
            expected = {k: v.shape for k, v in UNetModel(preset.unet_config).state_dict().items()}
        if describe_mismatch(expected, state) is None:
            fits.append(name)
    return fits


def resolve_checkpoint(preset: DiffusionPreset | str, checkpoint: str | os.PathLike | None) -> Path:
    """The diffusion checkpoint to load: the given one, the packaged one for shipped presets, else an error."""
    spec = get_preset(preset) if isinstance(preset, str) else preset
    if checkpoint is not None:  # checked here, before anything hashes or loads it: a FIFO would block
        return check_input(checkpoint, "--checkpoint")
    shipped = Path(spec.checkpoint_file)  # presets shipped with the package name an absolute file
    if shipped.is_absolute() and shipped.is_file():
        return shipped
    raise ConfigError(f"preset {spec.name!r} needs --checkpoint (the official file is {spec.checkpoint_file})")
