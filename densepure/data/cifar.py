"""CIFAR-10 "python version" batches (``cifar-10-batches-py/test_batch``), read safely.

A batch is a pickled dict with ``b"data"``, a uint8 array (N, 3072) whose rows hold the 1024 red,
then 1024 green, then 1024 blue values of a 32x32 image in row-major order, and ``b"labels"``, a
list of N ints in [0, 10) (also ``b"batch_label"`` and ``b"filenames"``, unused here).

The archive as published (``cifar-10-python.tar.gz``) is read as it is: its ``test_batch`` member is
unpickled from the compressed stream, nothing is extracted to disk.

Security: pickle can call any importable function while loading. :class:`RestrictedUnpickler`
resolves only the globals a numpy array needs (``_reconstruct``, ``ndarray``, ``dtype``, the
protocol-5 ``_frombuffer``, and a latin-1-only stand-in for ``_codecs.encode``, which Python 3 uses
to write bytes in protocol 2); any other global (``os.system``, ``builtins.eval``, ...) raises
InputError before anything is called.
"""

from __future__ import annotations

import importlib
import pickle
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densepure.errors import InputError

CIFAR10_CLASSES = 10
CIFAR_IMAGE_SHAPE = (3, 32, 32)
BATCH_NAMES = ("test_batch", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
               "data_batch_5")


def _numpy_private(module_suffix: str, name: str) -> Callable[..., Any]:
    """numpy's private reconstruction helpers moved from numpy.core to numpy._core in numpy 2."""
    try:
        module = importlib.import_module(f"numpy._core.{module_suffix}")
    except ImportError:  # numpy < 2
        module = importlib.import_module(f"numpy.core.{module_suffix}")
    return getattr(module, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol-2 pickles written by Python 3 store bytes as
    ``_codecs.encode(str, "latin1")``. Only that use is allowed, not arbitrary codecs."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode allowed only for str with latin1, got "
                                     f"{type(text).__name__} with {encoding!r}")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_private("multiarray", "_reconstruct")
    frombuffer = _numpy_private("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the numpy array reconstruction globals (see module doc)."""

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is "
                f"allowed in a CIFAR batch"
            ) from None


_UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                    OSError, MemoryError)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def load_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch safely; returns (data uint8 (N, 3072), labels int64 (N,))."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            content = RestrictedUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError as exc:
        raise InputError(f"CIFAR-10 batch {str(path)!r} does not exist") from exc
    except _UNPICKLE_ERRORS as exc:
        raise InputError(f"cannot read CIFAR-10 batch {str(path)!r}: {exc}") from exc
    return _parse_batch(content, path)


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names a tar archive by its suffix (``cifar-10-python.tar.gz``)."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_test_batch(path: str | Path) -> str | None:
    """The name of the ``test_batch`` member of the tar archive at ``path`` (None: there is none); an
    unreadable archive is an InputError. Reads the member list only."""
    try:
        with tarfile.open(path, "r:*") as archive:
            return next((m.name for m in archive.getmembers() if m.isfile() and Path(m.name).name == "test_batch"),
                        None)
    except (tarfile.TarError, OSError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(":") if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read the archive {str(path)!r} ({reason}): an incomplete download? Its size and "
                         "md5 are on the CIFAR-10 page") from exc


def load_archive_batch(path: str | Path, member: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the batch ``member`` of a tar archive safely (no extraction); as :func:`load_batch`."""
    path = Path(path)
    where = f"{member} in {str(path)!r}"
    try:
        with tarfile.open(path, "r:*") as archive:
            handle = archive.extractfile(member)
            if handle is None:
                raise InputError(f"{where} is not a regular file")
            with handle:
                content = RestrictedUnpickler(handle, encoding="bytes").load()
    except (tarfile.TarError, *_UNPICKLE_ERRORS) as exc:
        raise InputError(f"cannot read CIFAR-10 batch {where}: {exc}") from exc
    return _parse_batch(content, Path(where))


def _lookup(content: Mapping[Any, Any], key: str, path: Path) -> Any:
    for candidate in (key.encode("ascii"), key):
        if candidate in content:
            return content[candidate]
    raise InputError(f"CIFAR-10 batch {str(path)!r} has no {key!r} entry; "
                     f"found keys {sorted(map(repr, content))}")


def _parse_batch(content: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(content, Mapping):
        raise InputError(f"CIFAR-10 batch {str(path)!r} must hold a dict, got "
                         f"{type(content).__name__}")
    data = _lookup(content, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise InputError(f"CIFAR-10 batch {str(path)!r}: data must be a uint8 array (N, 3072), "
                         f"got {type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        labels = np.asarray(_lookup(content, "labels", path), dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"CIFAR-10 batch {str(path)!r}: labels must be a list of ints") from exc
    if labels.shape != (data.shape[0],):
        raise InputError(f"CIFAR-10 batch {str(path)!r}: {data.shape[0]} images but labels "
                         f"of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR10_CLASSES):
        raise InputError(f"CIFAR-10 batch {str(path)!r}: labels must be in [0, 10), got range "
                         f"[{labels.min()}, {labels.max()}]")
    return data, labels


def find_batch(path: str | Path) -> Path | None:
    """The batch file named by ``path``: the file itself if it is one of the batch names, else
    ``path/test_batch`` or ``path/cifar-10-batches-py/test_batch``; None if there is none."""
    path = Path(path)
    if path.is_file():
        return path if path.name in BATCH_NAMES else None
    for candidate in (path / "test_batch", path / "cifar-10-batches-py" / "test_batch"):
        if candidate.is_file():
            return candidate
    return None


class Cifar10Dataset:
    """The CIFAR-10 test set (or one batch): items are ((3, 32, 32) float32 in [0, 1], label).

    ``path``: a batch file, a directory holding ``test_batch`` (or ``cifar-10-batches-py/test_batch``), or
    the published archive ``cifar-10-python.tar.gz`` (its ``test_batch`` is read without extracting).
    """

    name = "cifar10"
    num_classes: int | None = CIFAR10_CLASSES
    levels: int | None = 255  # uint8 pixels / 255: the sound noise's grid

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file() and is_archive(path):
            member = archive_test_batch(path)
            if member is None:
                raise InputError(f"{str(path)!r} is not a CIFAR-10 archive: no 'test_batch' in it (the python "
                                 "version, cifar-10-python.tar.gz, has cifar-10-batches-py/test_batch)")
            self.path = path
            self._data, self._labels = load_archive_batch(path, member)
            return
        batch = find_batch(path)
        if batch is None:
            raise InputError(f"no CIFAR-10 batch at {str(path)!r}: expected a directory holding "
                             f"'test_batch' or the batch file itself")
        self.path = batch
        self._data, self._labels = load_batch(batch)

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} CIFAR-10 images")
        pixels = self._data[index].reshape(CIFAR_IMAGE_SHAPE)
        image = torch.from_numpy(pixels.astype(np.float32)).div_(255.0)
        return image, int(self._labels[index])
