"""Writing exported graphs so that no reader ever trusts a half-written one.

An artifact is up to three files side by side: the graph (``unet-fp16.onnx``), its external weights
(``unet-fp16.onnx.data``, for graphs over ~1.8 GB) and its manifest. Readers trust a graph only
through its manifest (:mod:`densepure.artifacts.directory`), so the order of the writes is the
guarantee:

1. the graph and its external data are written, then checked, in a staging directory beside the
   artifact (``.unet-fp16.onnx.partial/``: same file system, so the renames below are atomic, and
   hidden, so content hashes of the directory skip it);
2. the old manifest is removed: from here on the old artifact no longer exists for densepure;
3. the external data, then the graph, are renamed into place;
4. the manifest is written last (under a temporary name, then renamed).

An interruption before step 2 leaves the old artifact whole; one between steps 2 and 4 leaves a graph
without a manifest, which no reader takes and the next export replaces; never a manifest that
describes other bytes. One export writes into a directory at a time (a ``flock`` on the directory
itself), and each export first removes what an interrupted one left in its staging directory.

Every file gets the mode a plain ``open`` gives (``0666 & ~umask``): onnx writes external data 0600.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from densepure.errors import ArtifactError

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights; protobuf cannot serialize a 2 GiB message


@contextmanager
def export_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (an export writes into it), or raise ArtifactError at once."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(f"another densepure export is writing into {str(directory)!r}: wait for it to end, "
                                "or export into another --out") from None
        yield
    finally:
        os.close(fd)


def staging_dir(path: Path) -> Path:
    """Where the artifact at ``path`` is written and checked before it is renamed into place."""
    return path.parent / f".{path.name}.partial"


def fresh_staging_dir(path: Path) -> Path:
    """An empty staging directory for ``path`` (what an interrupted export left there is removed)."""
    staged = staging_dir(path)
    if os.path.islink(staged) or (os.path.lexists(staged) and not staged.is_dir()):
        staged.unlink()  # a link or a file at the staging name: removed, never followed
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    return staged


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process's umask."""
    try:  # Linux >= 4.7 shows the umask without changing it (os.umask would, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_onnx(model, path: str | Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> tuple[str, ...]:
    """Write ``model``; weights go to ``<name>.data`` beside it when they exceed ``threshold`` bytes.
    Returns the external data file names (relative to the model's directory). Both files get the
    default mode (:func:`default_file_mode`)."""
    import onnx

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data_name = p.name + ".data"
    (p.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
    weights = sum(init.ByteSize() for init in model.graph.initializer)
    external = weights > threshold
    # tensors under 1 KiB stay inline: shape constants must be readable by onnxruntime's graph checks
    onnx.save_model(model, str(p), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    written = (data_name,) if (p.parent / data_name).is_file() else ()
    mode = default_file_mode()
    for name in (p.name, *written):
        os.chmod(p.parent / name, mode)
    return written


def install(staged_graph: Path, path: Path, external: Sequence[str], write_manifest: Callable[[], Path]) -> Path:
    """Move a checked graph (and its external data) from its staging directory to ``path`` and write its
    manifest last (steps 2-4 of the module doc). Returns the manifest's path."""
    from densepure.artifacts.manifest import manifest_path_for

    manifest_path_for(path).unlink(missing_ok=True)
    stale = path.parent / (path.name + ".data")
    if stale.name not in external:
        stale.unlink(missing_ok=True)  # the previous graph's weights: nothing refers to them any more
    try:
        for name in external:
            os.replace(staged_graph.parent / name, path.parent / name)
        os.replace(staged_graph, path)
    except OSError as exc:
        raise ArtifactError(f"cannot move the exported graph into {str(path)!r}: {exc.strerror or exc}") from exc
    return write_manifest()
