"""Images held in arrays: ``.npz`` files with ``images`` and ``labels``, or arrays in memory.

``images`` is (N, C, H, W) or (N, H, W, C) (C in {1, 3}; the layout is read from where the channel
axis is, channels-first when both could be), either uint8 (divided by 255) or floating in [0, 1].
``labels`` is (N,) integers; -1 means unknown. It may be left out (every label is then -1).
An optional scalar ``num_classes`` overrides the default ``max(labels) + 1``.
Files are opened with ``allow_pickle=False``: object arrays are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from densepure.data.images import check_value_range
from densepure.errors import InputError

_CHANNEL_COUNTS = (1, 3)


def _to_channels_first(images: np.ndarray, source: str) -> np.ndarray:
    if images.ndim != 4:
        raise InputError(f"{source}: images must be (N,C,H,W) or (N,H,W,C), got shape "
                         f"{images.shape}")
    if images.shape[1] in _CHANNEL_COUNTS:
        return images
    if images.shape[3] in _CHANNEL_COUNTS:
        return images.transpose(0, 3, 1, 2)
    raise InputError(f"{source}: images must have 1 or 3 channels on axis 1 (N,C,H,W) or axis 3 "
                     f"(N,H,W,C), got shape {images.shape}")


def _check_pixels(images: np.ndarray, source: str) -> None:
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"{source}: images must be uint8 or float in [0,1], got dtype "
                         f"{images.dtype}")
    if images.size == 0:
        return
    finite = bool(np.isfinite(images).all())
    low, high = (float(np.nanmin(images)), float(np.nanmax(images))) if finite else (0.0, 0.0)
    check_value_range(low, high, finite, f"{source}: images")


def _check_labels(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != count:
        raise InputError(f"{source}: labels must be (N,) with N = {count} images, got shape "
                         f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < -1:
        raise InputError(f"{source}: labels must be >= 0 (or -1 for unknown), got {labels.min()}")
    return labels.astype(np.int64)


class ArrayDataset:
    """A dataset over an image array; items are ((C, H, W) float32 in [0, 1], label). ``levels``: the grid
    ``k / levels`` float images lie on, when known (uint8 images: 255, whatever is given)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, *,
                 name: str = "arrays", num_classes: int | None = None, levels: int | None = None) -> None:
        images = _to_channels_first(np.asarray(images), name)
        _check_pixels(images, name)
        if labels is None:
            labels = np.full(images.shape[0], -1, dtype=np.int64)
        self._labels = _check_labels(np.asarray(labels), images.shape[0], name)
        self._images = images
        self.name = name
        # the grid k / levels the images lie on: uint8 arrays declare 255; float arrays only when told
        self.levels: int | None = 255 if images.dtype == np.uint8 else levels
        # a count read from the labels is a lower bound (a subset of a dataset may miss its last classes)
        self.classes_inferred = num_classes is None
        if num_classes is None and self._labels.size and self._labels.max() >= 0:
            num_classes = int(self._labels.max()) + 1
        if num_classes is not None and (num_classes < 1 or num_classes <= self._labels.max()):
            raise InputError(f"{name}: num_classes must be > every label, got {num_classes} "
                             f"with labels up to {self._labels.max()}")
        self.num_classes: int | None = num_classes

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.name}")
        pixels = np.ascontiguousarray(self._images[index])
        if pixels.dtype == np.uint8:
            image = torch.from_numpy(pixels.astype(np.float32)).div_(255.0)
        else:
            image = torch.from_numpy(pixels.astype(np.float32))
        return image, int(self._labels[index])


def load_npz(path: str | Path) -> ArrayDataset:
    """Open a ``.npz`` file (see the module doc for its keys) as an :class:`ArrayDataset`."""
    path = Path(path)
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "images" not in keys:
                raise InputError(f"{source}: no 'images' array; found keys {sorted(keys)}")
            images = archive["images"]
            labels = archive["labels"] if "labels" in keys else None
            num_classes = _scalar_int(archive["num_classes"], source) \
                if "num_classes" in keys else None
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"npz file {source!r} does not exist") from exc
    except ValueError as exc:  # numpy's messages suggest allow_pickle=True, which would run the file's code
        if "Object arrays" in str(exc):
            raise InputError(f"npz file {source!r} holds object arrays (pickled Python objects); densepure reads "
                             "numeric arrays only and never unpickles") from exc
        if "pickle" in str(exc).lower():  # "...pickled data..." (older numpy), "...pickled (object) data..." (2.4)
            raise InputError(f"cannot read npz file {source!r}: it is not an .npz archive of arrays (numpy would "
                             "have to unpickle it, which densepure never does)") from exc
        raise InputError(f"cannot read npz file {source!r}: {exc}") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"cannot read npz file {source!r}: {exc}") from exc
    return ArrayDataset(images, labels, name=path.stem, num_classes=num_classes)


def _scalar_int(value: np.ndarray, source: str) -> int:
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise InputError(f"{source}: num_classes must be an integer scalar, got {value.dtype} "
                         f"of shape {value.shape}")
    return int(value)
