"""Dataset readers: CIFAR-10 batches, ImageNet-style folders, .npz arrays and single images."""

from __future__ import annotations

from densepure.data.arrays import ArrayDataset, load_npz
from densepure.data.cifar import Cifar10Dataset, RestrictedUnpickler, load_batch
from densepure.data.datasets import (
    Dataset,
    DatasetKind,
    DatasetSpec,
    detect_kind,
    open_dataset,
    select_indices,
)
from densepure.data.folders import ImageFolderDataset, SingleImageDataset
from densepure.data.images import (
    IMAGE_EXTENSIONS,
    NO_TRANSFORM,
    ImageTransform,
    load_image,
    validate_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "NO_TRANSFORM",
    "ArrayDataset",
    "Cifar10Dataset",
    "Dataset",
    "DatasetKind",
    "DatasetSpec",
    "ImageFolderDataset",
    "ImageTransform",
    "RestrictedUnpickler",
    "SingleImageDataset",
    "detect_kind",
    "load_batch",
    "load_image",
    "load_npz",
    "open_dataset",
    "select_indices",
    "validate_image",
]
