"""Issue 18, item 8: the data as a newcomer downloads it. ``--data cifar-10-python.tar.gz`` reads the
published archive (no extraction, the same restricted unpickler), and an ImageNet-style folder with
grayscale, CMYK and RGBA files gives RGB images of the protocol's size."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densepure.data import Cifar10Dataset, DatasetKind, detect_kind, open_dataset
from densepure.errors import InputError


def official_batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def cifar_archive(path: Path, test_batch: bytes, suffix_mode: str = "w:gz") -> Path:
    """The published layout: cifar-10-batches-py/{data_batch_1..5, readme.html, test_batch, batches.meta}."""
    with tarfile.open(path, suffix_mode) as tar:
        add_member(tar, "cifar-10-batches-py/data_batch_1", pickle.dumps(official_batch(3, seed=1), protocol=2))
        add_member(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        add_member(tar, "cifar-10-batches-py/test_batch", test_batch)
        add_member(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": [b"cat"] * 10}, 2))
    return path


@pytest.mark.parametrize("name, mode", [("cifar-10-python.tar.gz", "w:gz"), ("cifar.tgz", "w:gz"),
                                        ("cifar.tar", "w")])
def test_the_published_archive_is_read_without_extracting(tmp_path, name, mode):
    batch = official_batch(6)
    archive = cifar_archive(tmp_path / name, pickle.dumps(batch, protocol=2), mode)
    assert detect_kind(archive) is DatasetKind.CIFAR10
    dataset = open_dataset(archive)
    assert isinstance(dataset, Cifar10Dataset) and len(dataset) == 6 and dataset.num_classes == 10
    image, label = dataset[4]
    np.testing.assert_array_equal(image.numpy(), batch[b"data"][4].reshape(3, 32, 32) / np.float32(255))
    assert label == batch[b"labels"][4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing extracted


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the hostile payload under test
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_inside_the_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    archive = cifar_archive(tmp_path / "cifar-10-python.tar.gz",
                            pickle.dumps({b"data": _RunsShell(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(InputError, match="refusing to load global"):
        open_dataset(archive)
    assert not marker.exists()


def test_archives_that_are_not_cifar_say_what_to_do(tmp_path):
    other = tmp_path / "imagenet-val.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        add_member(tar, "val/n01440764/ILSVRC2012_val_00000293.JPEG", b"jpeg bytes")
    with pytest.raises(InputError, match=r"archive without a CIFAR-10 'test_batch': extract it first \(tar xf"):
        open_dataset(other)
    broken = tmp_path / "cifar-10-python.tar.gz"
    broken.write_bytes(b"\x1f\x8b truncated download")
    with pytest.raises(InputError, match="cannot read the archive .* an incomplete download") as info:
        open_dataset(broken)
    assert "\n" not in str(info.value)


def test_an_imagenet_style_folder_of_mixed_modes(tmp_path):
    """JPEG RGB, grayscale PNG, CMYK JPEG and RGBA PNG, of other sizes than 256: all (3, 256, 256) in [0, 1],
    labels by sorted class folder (the ImageNet protocol: Resize(256) + CenterCrop(256))."""
    rng = np.random.default_rng(0)
    files = {"n01440764/rgb.JPEG": ("RGB", (300, 400)), "n01440764/gray.png": ("L", (256, 320)),
             "n01443537/cmyk.jpg": ("CMYK", (500, 333)), "n01443537/rgba.png": ("RGBA", (260, 260))}
    for name, (mode, (w, h)) in files.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        bands = len(Image.new(mode, (1, 1)).getbands())
        pixels = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if bands == 1 else pixels, mode=mode).save(path)
    dataset = open_dataset(tmp_path)
    assert len(dataset) == 4 and dataset.num_classes == 2
    seen = {}
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (3, 256, 256) and 0.0 <= image.min() and image.max() <= 1.0
        seen[label] = seen.get(label, 0) + 1
    assert seen == {0: 2, 1: 2}
    gray = next(dataset[i][0] for i in range(4) if dataset.samples[i][0].name == "gray.png")
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # grey replicated into three channels
    rgba = next(dataset[i][0] for i in range(4) if dataset.samples[i][0].name == "rgba.png")
    assert not (rgba[0] == rgba[1]).all()  # alpha dropped, colour kept
