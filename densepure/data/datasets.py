"""The dataset protocol, the reference scripts' image selection, and the reader dispatcher.

Every reader is a :class:`Dataset`: ``len(ds)``, ``ds[i] -> (image, label)`` with ``image`` a
float32 tensor (C, H, W) in [0, 1] and ``label`` an int (-1: unknown), plus ``name`` and
``num_classes`` (None when unknown). A reader whose ``num_classes`` is only read off the labels
(``max + 1``, a lower bound) also has ``classes_inferred = True``. A reader whose images lie on a grid
``k / levels`` says so in ``levels`` (8-bit sources: 255; None or absent when unknown): the sound noise's
default grid (:func:`data_levels`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from densepure.data.arrays import load_npz
from densepure.data.cifar import Cifar10Dataset, archive_test_batch, find_batch, is_archive
from densepure.data.folders import ImageFolderDataset, SingleImageDataset, find_classes, is_image_file
from densepure.data.images import IMAGE_EXTENSIONS, NO_TRANSFORM, ImageTransform
from densepure.errors import ConfigError, InputError
from densepure.paths import check_input


@runtime_checkable
class Dataset(Protocol):
    """What the certification loop needs from a dataset."""

    name: str
    num_classes: int | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


class DatasetKind(enum.Enum):
    """Which reader opens a path; AUTO picks one from the path (see :func:`detect_kind`)."""

    AUTO = "auto"
    CIFAR10 = "cifar10"
    IMAGEFOLDER = "imagefolder"
    NPZ = "npz"
    IMAGE = "image"


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images are and how to read them.

    ``transform`` applies to image files only (IMAGEFOLDER, IMAGE); None means the reader's
    default: Resize(256) + CenterCrop(256) for an image folder (the ImageNet protocol), no change
    for a single image. ``label`` (IMAGE only) is the true class of a single image, -1 when unknown.
    """

    path: Path
    kind: DatasetKind = DatasetKind.AUTO
    transform: ImageTransform | None = None
    label: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        if not isinstance(self.kind, DatasetKind):
            allowed = ", ".join(k.value for k in DatasetKind)
            raise ConfigError(f"kind must be a DatasetKind ({allowed}), got {self.kind!r}")
        if self.transform is not None and not isinstance(self.transform, ImageTransform):
            raise ConfigError(f"transform must be an ImageTransform or None, got "
                              f"{type(self.transform).__name__}")
        if self.label is not None and (isinstance(self.label, bool) or
                                       not isinstance(self.label, int) or self.label < -1):
            raise ConfigError(f"label must be an int >= -1 or None, got {self.label!r}")
        if self.label is not None and self.kind not in (DatasetKind.AUTO, DatasetKind.IMAGE):
            raise ConfigError(f"label can be given for a single image only, not for kind "
                              f"{self.kind.value}")


def data_levels(dataset: object) -> int | None:
    """The grid ``k / levels`` a dataset declares its images lie on, or None."""
    levels = getattr(dataset, "levels", None)
    return levels if isinstance(levels, int) and not isinstance(levels, bool) and levels >= 1 else None


def select_indices(n_total: int, skip: int = 1, max: int = -1) -> list[int]:  # noqa: A002
    """Indices ``i`` in ``range(n_total)`` with ``i % skip == 0``, the first ``max`` of them
    (``max = -1``: all). CIFAR-10 protocol: skip=20 -> 500 images; ImageNet: skip=500 -> 100.

    Note: Cohen's certify.py stops when the *index* ``i == max``; here ``max`` counts selected
    images, as its help text ("stop after this many examples") says. Both agree when max = -1.
    """
    for field_name, value in (("n_total", n_total), ("skip", skip), ("max", max)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{field_name} must be an int, got {value!r}")
    if n_total < 0:
        raise ConfigError(f"n_total must be >= 0, got {n_total}")
    if skip < 1:
        raise ConfigError(f"skip must be >= 1, got {skip}")
    if max < -1:
        raise ConfigError(f"max must be >= 0, or -1 for all, got {max}")
    selected = range(0, n_total, skip)
    return list(selected if max == -1 else selected[:max])


def detect_kind(path: Path) -> DatasetKind:
    """The reader for ``path``: a CIFAR batch (or a directory holding ``test_batch``, or the archive
    ``cifar-10-python.tar.gz``) -> CIFAR10, a directory of class folders -> IMAGEFOLDER, ``*.npz`` -> NPZ,
    an image file -> IMAGE."""
    check_input(path, "dataset path", directory=True)
    if find_batch(path) is not None:
        return DatasetKind.CIFAR10
    if path.is_file() and is_archive(path):
        if archive_test_batch(path) is not None:
            return DatasetKind.CIFAR10
        raise InputError(f"{str(path)!r} is an archive without a CIFAR-10 'test_batch': extract it first "
                         f"(tar xf {str(path)!r}) and pass the directory of images or batches")
    if path.is_dir():
        if find_classes(path):
            return DatasetKind.IMAGEFOLDER
        raise InputError(f"directory {str(path)!r} holds neither a CIFAR-10 'test_batch' nor "
                         f"class sub-folders of images")
    if path.suffix.lower() == ".npz":
        return DatasetKind.NPZ
    if is_image_file(path):
        return DatasetKind.IMAGE
    raise InputError(
        f"unknown dataset format for {str(path)!r}: expected a CIFAR-10 batch ('test_batch'), a directory "
        f"holding one, the archive cifar-10-python.tar.gz, a directory of class folders, a .npz file, or an image "
        f"({', '.join(IMAGE_EXTENSIONS)})"
    )


def open_dataset(spec: DatasetSpec | str | Path) -> Dataset:
    """Open the dataset described by ``spec`` (a path means ``DatasetSpec(path)``)."""
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec(Path(spec))
    check_input(spec.path, "dataset path", directory=True)  # a FIFO or device is refused before anything opens it
    kind = detect_kind(spec.path) if spec.kind is DatasetKind.AUTO else spec.kind
    if spec.label is not None and kind is not DatasetKind.IMAGE:
        raise ConfigError(f"label can be given for a single image only, but {str(spec.path)!r} "
                          f"is read as {kind.value}")
    if kind is DatasetKind.CIFAR10:
        return Cifar10Dataset(spec.path)
    if kind is DatasetKind.IMAGEFOLDER:
        transform = ImageTransform() if spec.transform is None else spec.transform
        return ImageFolderDataset(spec.path, transform)
    if kind is DatasetKind.NPZ:
        return load_npz(spec.path)
    label = -1 if spec.label is None else spec.label
    transform = NO_TRANSFORM if spec.transform is None else spec.transform
    return SingleImageDataset(spec.path, transform, label=label)
