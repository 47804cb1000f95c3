"""Image decoding, the ImageNet evaluation transform, and validation of image tensors.

Every reader in :mod:`densepure.data` returns images as float32 torch tensors of shape (C, H, W)
with values in [0, 1] (the pixel units of the certified radius, ALGORITHM.md §1).

The transform reproduces torchvision's ``Resize(size, BICUBIC)`` (shorter side to ``size``, longer
side ``int(size * long / short)``) followed by ``CenterCrop(crop)`` (offsets
``int(round((H - crop) / 2))``), computed with Pillow alone because torchvision is not a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from densepure.errors import ConfigError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File extensions (lower case) read as images, the same list as torchvision's ImageFolder."""


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resize`` (bicubic), then center-crop ``crop`` x ``crop``.

    ``None`` skips a stage. The ImageNet protocol of DensePure (ALGORITHM.md §8) is the default,
    ``ImageTransform(resize=256, crop=256)``; ``ImageTransform(None, None)`` keeps images as
    they are.
    """

    resize: int | None = 256
    crop: int | None = 256

    def __post_init__(self) -> None:
        for field_name in ("resize", "crop"):
            value = getattr(self, field_name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field_name} must be a positive int or None, got {value!r}")
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise ConfigError(
                f"crop must be <= resize (the crop is taken from the resized shorter side), "
                f"got crop={self.crop} > resize={self.resize}"
            )

    def apply(self, image: Image.Image) -> Image.Image:
        """Apply the resize and the crop to a Pillow image; returns a new image."""
        if self.resize is not None:
            image = resize_shorter_side(image, self.resize)
        if self.crop is not None:
            image = center_crop(image, self.crop)
        return image


NO_TRANSFORM = ImageTransform(resize=None, crop=None)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so that the shorter side is ``size`` (torchvision ``Resize(int)`` on PIL)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_size == (width, height):
        return image
    return image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Center crop to ``size`` x ``size`` with torchvision's rounding of the offsets.

    Raises InputError when the image is smaller than the crop (torchvision would pad with zeros;
    padding silently changes the image, so it is refused here).
    """
    width, height = image.size
    if size > width or size > height:
        raise InputError(
            f"cannot center-crop {size}x{size} from an image of {width}x{height} (width x height): "
            f"set a resize >= the crop, or a smaller crop"
        )
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB Pillow image -> float32 tensor (3, H, W) in [0, 1] (uint8 / 255, like ToTensor)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).to(torch.float32).div_(255.0)


def load_image(path: str | Path, transform: ImageTransform = NO_TRANSFORM) -> torch.Tensor:
    """Decode an image file to a float32 (3, H, W) tensor in [0, 1], after ``transform``.

    Images are converted to RGB (grey images are replicated, alpha is dropped), as torchvision's
    default ImageFolder loader does. Unreadable or oversized files raise InputError.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except FileNotFoundError as exc:
        raise InputError(f"image file {str(path)!r} does not exist") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from exc
    return pil_to_tensor(transform.apply(image))


def validate_image(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a (C, H, W) floating tensor, finite, in [0, 1]; return it unchanged.

    Raises InputError with what was received, and a hint for the two usual mistakes: an image
    already normalized to [-1, 1] (or by mean/std), and raw 0..255 pixel values.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor (C,H,W) in [0,1], got {type(x).__name__}")
    if x.dim() != 3:
        raise InputError(f"{name} must be (C,H,W) in [0,1], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(
            f"{name} must be a floating tensor (C,H,W) in [0,1], got dtype {x.dtype}: "
            f"convert uint8 images with x.float() / 255"
        )
    if x.numel() == 0:
        raise InputError(f"{name} must be a non-empty (C,H,W) image, got shape {tuple(x.shape)}")
    check_value_range(float(x.min()), float(x.max()), bool(torch.isfinite(x).all()), name)
    return x


def check_value_range(low: float, high: float, finite: bool, name: str) -> None:
    """Raise InputError unless the values are finite and ``0 <= low <= high <= 1``."""
    if not finite:
        raise InputError(f"{name} must be finite (C,H,W) in [0,1], got NaN or inf values")
    if low >= 0.0 and high <= 1.0:
        return
    message = f"{name} must be in [0,1], got range [{_short(low)}, {_short(high)}]"
    if low < 0.0:
        message += ": did you pass an already normalized image?"
    elif high <= 255.0:
        message += ": did you pass 0..255 pixel values without dividing by 255?"
    raise InputError(message)


def _short(value: float) -> str:
    """-1.0 -> '-1.0', 0.123456 -> '0.1235': readable numbers for error messages."""
    return repr(round(float(value), 4))
