"""Image files on disk: an ImageNet-style folder of class sub-folders, or one image file.

Class indices follow torchvision's ``ImageFolder``: the sorted names of the sub-folders get
0, 1, 2, ...; the images of a class are found by a sorted recursive walk (following links) and keep
that order, classes one after the other. One difference: sub-folders whose name starts with "." are
ignored (torchvision would count e.g. ``.ipynb_checkpoints`` as a class).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from densepure.data.images import IMAGE_EXTENSIONS, NO_TRANSFORM, ImageTransform, load_image
from densepure.errors import ConfigError, InputError


def is_image_file(path: str | Path) -> bool:
    """Whether the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def find_classes(root: Path) -> tuple[str, ...]:
    """Sorted names of the non-hidden sub-folders of ``root``."""
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise InputError(f"cannot list the image folder {str(root)!r}: {exc}") from exc
    return tuple(sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")))


def _class_images(class_dir: Path) -> list[Path]:
    found = []
    for folder, _, names in sorted(os.walk(class_dir, followlinks=True)):
        found.extend(Path(folder) / name for name in sorted(names)  # regular files only: a FIFO would block
                     if is_image_file(name) and os.path.isfile(os.path.join(folder, name)))
    return found


class ImageFolderDataset:
    """``root/<class>/<...>/<image>``; items are ((3, crop, crop) float32 in [0, 1], class)."""

    def __init__(self, root: str | Path, transform: ImageTransform = ImageTransform()) -> None:
        self.root = Path(root)
        self.transform = transform
        self.classes = find_classes(self.root)
        if not self.classes:
            raise InputError(f"image folder {str(self.root)!r} has no class sub-folders")
        samples: list[tuple[Path, int]] = []
        empty = []
        for index, class_name in enumerate(self.classes):
            images = _class_images(self.root / class_name)
            if not images:
                empty.append(class_name)
            samples.extend((image, index) for image in images)
        if empty:
            raise InputError(
                f"image folder {str(self.root)!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                f"in the class folders {empty[:5]}{' ...' if len(empty) > 5 else ''}"
            )
        self.samples = tuple(samples)
        self.name = self.root.name
        self.num_classes: int | None = len(self.classes)
        self.levels: int | None = 255  # decoded, resized and cropped as 8-bit RGB, then / 255

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_image(path, self.transform), label


class SingleImageDataset:
    """One image file as a dataset of length 1; its label is -1 (unknown) unless given."""

    def __init__(self, path: str | Path, transform: ImageTransform = NO_TRANSFORM,
                 label: int = -1, num_classes: int | None = None) -> None:
        if isinstance(label, bool) or not isinstance(label, int) or label < -1:
            raise ConfigError(f"label must be an int >= 0, or -1 for unknown, got {label!r}")
        if num_classes is not None and not 0 <= label < num_classes and label != -1:
            raise ConfigError(f"label must be in [0, num_classes={num_classes}), got {label}")
        self.path = Path(path)
        if not self.path.is_file():
            problem = "is not a file" if self.path.exists() else "does not exist"
            raise InputError(f"image file {str(self.path)!r} {problem}")
        self.transform = transform
        self.label = label
        self.name = self.path.stem
        self.num_classes = num_classes
        self.levels: int | None = 255  # 8-bit RGB / 255

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index not in (0, -1):
            raise IndexError(f"index {index} out of range for a single image")
        return load_image(self.path, self.transform), self.label
