"""The UNet's hyper-parameters, built from the flag dictionaries of improved-/guided-diffusion."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from densepure.errors import ConfigError

# channel multipliers the official scripts pick from the image size when none is given
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
    8: (1, 2),
}


def _parse_ints(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"{name} must be comma-separated integers, got {value!r}") from None
    return tuple(int(v) for v in value)


def _parse_mult(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
        return tuple(float(p) for p in parts)
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the improved-/guided-diffusion UNet (class-unconditional).

    ``attention_resolutions`` are image sizes (e.g. (16, 8) at 32 px), as in the official flags.
    ``num_head_channels > 0`` overrides ``num_heads`` (guided-diffusion); ``learn_sigma`` doubles the
    output channels to ``[eps, v]``.
    """

    image_size: int
    in_channels: int = 3
    model_channels: int = 128
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    channel_mult: tuple[float, ...] = ()
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    dropout: float = 0.0
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    num_groups: int = 32
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.model_channels < 1 or self.num_res_blocks < 1:
            raise ConfigError(f"image_size, model_channels and num_res_blocks must be >= 1: {self}")
        if not self.channel_mult:
            if self.image_size not in _DEFAULT_CHANNEL_MULT:
                raise ConfigError(f"no default channel_mult for image_size {self.image_size}; pass channel_mult")
            object.__setattr__(self, "channel_mult", _DEFAULT_CHANNEL_MULT[self.image_size])
        if self.num_head_channels <= 0 and self.num_heads < 1:
            raise ConfigError("either num_heads >= 1 or num_head_channels >= 1 is required")
        if self.num_heads_upsample == -1:
            object.__setattr__(self, "num_heads_upsample", self.num_heads)
        for r in self.attention_resolutions:
            if r < 1 or self.image_size % r:
                raise ConfigError(f"attention resolution {r} does not divide image_size {self.image_size}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_downsample_rates(self) -> frozenset[int]:
        """The downsampling factors ``ds`` at which attention is applied."""
        return frozenset(self.image_size // r for r in self.attention_resolutions)

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> "UNetConfig":
        """Build from an official ``create_model_and_diffusion`` flag dict (extra keys are kept aside)."""
        if flags.get("class_cond"):
            raise ConfigError("class-conditional UNets are not supported (class_cond=True)")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        for key, value in flags.items():
            if key == "num_channels":
                kwargs["model_channels"] = int(value)
            elif key == "attention_resolutions":
                kwargs[key] = _parse_ints(value, key)
            elif key == "channel_mult":
                kwargs[key] = _parse_mult(value) if value not in ("", None) else ()
            elif key in known:
                kwargs[key] = value
        if "image_size" not in kwargs:
            raise ConfigError("flags must contain image_size")
        return cls(**kwargs, extra=dict(flags))
