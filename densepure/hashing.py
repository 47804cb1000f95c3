"""Content identity: streamed sha256 of files and of directory trees.

Caches, manifests and result files identify what they were made from by content, never by a path or
by "the file exists": a checkpoint replaced at the same path is a different checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from densepure.paths import check_input

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, chunk: int = _CHUNK) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    check_input(path, "file to hash")  # never open a FIFO or a device: it would block or never end
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, or of a directory: every regular file below it in sorted relative-path
    order, each as its relative path (``/``-separated), a NUL, its size and its bytes. Hidden entries
    (names starting with ``.``) are skipped, so caches and lock files beside the data do not count."""
    root = Path(path)
    if not root.is_dir():
        return file_sha256(root)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode("utf-8") + b"\0" + str(p.stat().st_size).encode("ascii") + b"\0")
        with open(p, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
    return h.hexdigest()
