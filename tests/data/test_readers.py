"""Dataset readers: CIFAR-10 batches (and refusing hostile pickles), image folders, npz, images."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from densepure.data import (
    ArrayDataset,
    Cifar10Dataset,
    Dataset,
    DatasetKind,
    DatasetSpec,
    ImageFolderDataset,
    ImageTransform,
    SingleImageDataset,
    detect_kind,
    load_batch,
    load_npz,
    open_dataset,
    select_indices,
    validate_image,
)
from densepure.errors import ConfigError, InputError


def write_fake_batch(path: Path, n: int = 4, protocol: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(i % 10) for i in range(n)],
             b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return data


# ----------------------------------------------------------------------------------- CIFAR-10

def test_cifar_decodes_channel_planes(tmp_path: Path) -> None:
    data = write_fake_batch(tmp_path / "test_batch", n=5)
    dataset = Cifar10Dataset(tmp_path)
    assert len(dataset) == 5 and dataset.num_classes == 10 and dataset.name == "cifar10"
    image, label = dataset[3]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and label == 3
    row = data[3].astype(np.float32) / 255.0
    # 1024 red values, then 1024 green, then 1024 blue, each plane row-major
    assert image[0, 0, 1].item() == pytest.approx(row[1])
    assert image[1, 2, 5].item() == pytest.approx(row[1024 + 2 * 32 + 5])
    assert image[2, 31, 31].item() == pytest.approx(row[3071])
    np.testing.assert_array_equal(image.numpy(), row.reshape(3, 32, 32))
    assert isinstance(dataset, Dataset)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_accepts_the_batch_file_and_nested_layout(tmp_path: Path, protocol: int) -> None:
    nested = tmp_path / "cifar-10-batches-py"
    nested.mkdir()
    data = write_fake_batch(nested / "test_batch", n=3, protocol=protocol)
    for where in (nested / "test_batch", nested, tmp_path):
        dataset = open_dataset(where)
        assert isinstance(dataset, Cifar10Dataset) and len(dataset) == 3
    np.testing.assert_array_equal(load_batch(nested / "test_batch")[0], data)


def test_cifar_reads_numpy1_global_names(tmp_path: Path) -> None:
    # the official batches were written by numpy 1 (``numpy.core.multiarray._reconstruct``);
    # protocol 2 names globals as newline-terminated text, so the name can be swapped in place
    data = write_fake_batch(tmp_path / "new_batch", n=2, protocol=2)
    raw = (tmp_path / "new_batch").read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    (tmp_path / "test_batch").write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    np.testing.assert_array_equal(load_batch(tmp_path / "test_batch")[0], data)


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the hostile payload under test
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):  # noqa: ANN204
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = {b"data": _RunsShell(marker), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(InputError, match="refusing to load global"):
        Cifar10Dataset(tmp_path)
    assert not marker.exists()
    (tmp_path / "test_batch").write_bytes(pickle.dumps([_CallsEval()], protocol=protocol))
    with pytest.raises(InputError, match=r"global (builtins|__builtin__)\.eval"):
        load_batch(tmp_path / "test_batch")


def test_cifar_structure_errors(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 2))
    with pytest.raises(InputError, match=r"\(N, 3072\)"):
        load_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, 2))
    with pytest.raises(InputError, match="2 images but labels"):
        load_batch(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="cannot read CIFAR-10 batch"):
        load_batch(path)


# ------------------------------------------------------------------------------- image folder

def _png(path: Path, size: tuple[int, int], seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_image_folder_classes_order_and_transform(tmp_path: Path) -> None:
    _png(tmp_path / "b_cls" / "x.png", (40, 30), 0)
    _png(tmp_path / "b_cls" / "deeper" / "y.PNG", (30, 50), 1)
    _png(tmp_path / "a_cls" / "z.png", (24, 24), 2)
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    dataset = open_dataset(DatasetSpec(tmp_path, transform=ImageTransform(resize=24, crop=20)))
    assert isinstance(dataset, ImageFolderDataset)
    assert dataset.classes == ("a_cls", "b_cls") and dataset.num_classes == 2
    assert [label for _, label in dataset.samples] == [0, 1, 1]
    assert [p.name for p, _ in dataset.samples] == ["z.png", "x.png", "y.PNG"]
    image, label = dataset[1]
    assert label == 1 and image.shape == (3, 20, 20) and image.dtype == torch.float32
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0
    # direct Pillow: shorter side 30 -> 24, longer 40 -> int(24 * 40 / 30) = 32, then the centre
    with Image.open(tmp_path / "b_cls" / "x.png") as opened:
        expected = opened.convert("RGB").resize((32, 24), Image.Resampling.BICUBIC)
    expected = np.asarray(expected.crop((6, 2, 26, 22)), dtype=np.float32) / 255.0
    np.testing.assert_allclose(image.numpy(), expected.transpose(2, 0, 1), atol=1e-7)
    tall, _ = dataset[2]  # 30x50 -> 24x40, crop rows round(10) = 10
    assert tall.shape == (3, 20, 20)


def test_image_folder_default_is_imagenet_protocol(tmp_path: Path) -> None:
    _png(tmp_path / "n01" / "a.jpg", (300, 260), 3)
    image, label = open_dataset(tmp_path)[0]
    assert image.shape == (3, 256, 256) and label == 0


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty_class").mkdir()
    _png(tmp_path / "full" / "a.png", (8, 8), 0)
    with pytest.raises(InputError, match="empty_class"):
        ImageFolderDataset(tmp_path)
    broken = tmp_path / "other" / "c" / "bad.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="cannot read image"):
        ImageFolderDataset(tmp_path / "other", ImageTransform(None, None))[0]
    with pytest.raises(ConfigError, match="crop must be <= resize"):
        ImageTransform(resize=16, crop=32)
    with pytest.raises(ConfigError, match="positive int"):
        ImageTransform(resize=0)


# ------------------------------------------------------------------------------------- npz

def test_npz_channels_first_uint8_and_channels_last_float(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 6), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=pixels, labels=np.array([2, 0, 1]))
    dataset = open_dataset(tmp_path / "a.npz")
    assert isinstance(dataset, ArrayDataset) and len(dataset) == 3 and dataset.num_classes == 3
    image, label = dataset[0]
    assert label == 2 and image.shape == (3, 8, 6)
    np.testing.assert_allclose(image.numpy(), pixels[0] / 255.0, atol=1e-7)
    floats = pixels.transpose(0, 2, 3, 1).astype(np.float64) / 255.0
    np.savez(tmp_path / "b.npz", images=floats, labels=np.array([2, 0, 1]), num_classes=10)
    image_b, _ = load_npz(tmp_path / "b.npz")[0]
    assert load_npz(tmp_path / "b.npz").num_classes == 10 and image_b.dtype == torch.float32
    np.testing.assert_allclose(image_b.numpy(), image.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.full((2, 3, 4, 4), -1.0), [0, 1], r"got range \[-1.0, -1.0\]: did you pass an already"),
        (np.linspace(-1, 1, 96).reshape(2, 3, 4, 4), [0, 1],
         r"must be in \[0,1\], got range \[-1.0, 1.0\]: did you pass an already normalized image"),
        (np.full((2, 3, 4, 4), 200.0), [0, 1], "without dividing by 255"),
        (np.full((2, 3, 4, 4), np.nan), [0, 1], "NaN"),
        (np.zeros((2, 3, 4, 4)), [0, 1, 2], r"N = 2 images, got shape \(3,\)"),
        (np.zeros((2, 3, 4, 4)), [0.0, 1.0], "labels must be integers"),
        (np.zeros((2, 4, 4)), [0, 1], r"\(N,C,H,W\) or \(N,H,W,C\)"),
        (np.zeros((2, 5, 4, 4)), [0, 1], "1 or 3 channels"),
        (np.zeros((2, 3, 4, 4), dtype=np.int32), [0, 1], "uint8 or float"),
    ],
)
def test_npz_validation(tmp_path: Path, images: np.ndarray, labels: list, message: str) -> None:
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array(labels))
    with pytest.raises(InputError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_npz_file_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nokey.npz", pictures=np.zeros((1, 3, 2, 2)))
    with pytest.raises(InputError, match="no 'images' array"):
        load_npz(tmp_path / "nokey.npz")
    np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object))
    with pytest.raises(InputError, match="holds object arrays.*never unpickles") as refused:
        load_npz(tmp_path / "obj.npz")
    assert "allow_pickle" not in str(refused.value)  # numpy's own advice would run the file's code
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read npz") as refused:
        load_npz(tmp_path / "junk.npz")
    assert "allow_pickle" not in str(refused.value)
    unlabelled = ArrayDataset(np.zeros((2, 1, 2, 2), np.uint8))
    assert unlabelled[1][1] == -1 and unlabelled.num_classes is None


@pytest.mark.parametrize("content", [b"not a zip", pickle.dumps({"images": [1, 2]})], ids=["junk", "pickle"])
def test_an_npz_that_numpy_would_unpickle_never_advises_allow_pickle(tmp_path: Path, content: bytes) -> None:
    """Neither a plain pickle nor junk named .npz gets numpy's "load it unsafely with allow_pickle=" advice."""
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not an .npz archive of arrays.*never does") as refused:
        load_npz(path)
    assert "allow_pickle" not in str(refused.value) and "pickle.load" not in str(refused.value)


# ------------------------------------------------------------------------- single images

def test_single_image(tmp_path: Path) -> None:
    pixels = _png(tmp_path / "cat.png", (5, 4), 0)
    dataset = open_dataset(tmp_path / "cat.png")
    assert isinstance(dataset, SingleImageDataset) and len(dataset) == 1
    image, label = dataset[0]
    assert label == -1 and image.shape == (3, 4, 5)
    np.testing.assert_allclose(image.numpy(), pixels.transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert open_dataset(DatasetSpec(tmp_path / "cat.png", label=7))[0][1] == 7
    with pytest.raises(IndexError):
        dataset[1]


# ------------------------------------------------------------------------------ dispatching

def test_open_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown dataset format"):
        open_dataset(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a CIFAR-10"):
        detect_kind(tmp_path / "empty")
    write_fake_batch(tmp_path / "test_batch", n=1)
    with pytest.raises(ConfigError, match="single image only"):
        open_dataset(DatasetSpec(tmp_path, label=3))
    with pytest.raises(ConfigError, match="kind must be a DatasetKind"):
        DatasetSpec(tmp_path, kind="cifar10")  # type: ignore[arg-type]
    assert detect_kind(tmp_path) is DatasetKind.CIFAR10


# ------------------------------------------------------------------------------- selection

def test_select_indices_protocols() -> None:
    cifar = select_indices(10000, 20)
    assert len(cifar) == 500 and cifar[:3] == [0, 20, 40] and cifar[-1] == 9980
    assert len(select_indices(50000, 500)) == 100
    assert select_indices(100, 7, 3) == [0, 7, 14]
    assert select_indices(100, 1, 0) == [] and select_indices(0, 5) == []
    for bad in ({"skip": 0}, {"skip": -2}, {"max": -2}, {"skip": 1.5}):
        with pytest.raises(ConfigError):
            select_indices(10, **bad)


@given(st.integers(0, 300), st.integers(1, 40), st.integers(-1, 50))
def test_select_indices_matches_the_definition(n_total: int, skip: int, maximum: int) -> None:
    expected = [i for i in range(n_total) if i % skip == 0]
    expected = expected if maximum == -1 else expected[:maximum]
    assert select_indices(n_total, skip, maximum) == expected


# --------------------------------------------------------------------------- validate_image

def test_validate_image_messages() -> None:
    good = torch.rand(3, 4, 4)
    assert validate_image(good) is good
    with pytest.raises(InputError, match=r"got range \[-1.0, 1.0\]: did you pass an already "
                                         r"normalized image\?"):
        validate_image(torch.linspace(-1, 1, 48).reshape(3, 4, 4))
    with pytest.raises(InputError, match=r"\(C,H,W\).*got shape \(1, 3, 4, 4\)"):
        validate_image(good[None])
    with pytest.raises(InputError, match="NaN or inf"):
        validate_image(torch.full((3, 2, 2), float("inf")))
    with pytest.raises(InputError, match="dtype torch.uint8"):
        validate_image(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(InputError, match="torch.Tensor"):
        validate_image(np.zeros((3, 2, 2)))  # type: ignore[arg-type]
