"""Paths a user names: inputs checked before anything opens them, outputs checked before anything is
written, and files replaced whole, never through a link (floor 0: every floor that reads or writes a
user's path uses these, so a path is judged the same way everywhere).

* **Inputs** (:func:`check_input`): the path must exist and be a regular file or a directory (as the
  caller allows). A FIFO, a socket or a device is refused before anything opens it: opening a FIFO
  for reading blocks until some writer comes, so a run would hang with no message.
* **Outputs** (:func:`check_output`): the last component must not be a symbolic link (densepure never
  writes through a link: in a shared directory a link at a predictable name is how another user's
  file gets clobbered), a directory or any other non-regular file; an existing regular file only where
  the caller may replace or extend it; the first existing parent must be a writable directory.
* **Replacing** (:func:`replace_file`): the new bytes go to a fresh file beside the path (created with
  ``O_EXCL | O_NOFOLLOW``), are flushed to disk, and the file is renamed over the path. A reader sees
  the old file or the new one, never half of one; a link at the path is replaced, not followed, and a
  hard link's other names keep the old content. Every other open for writing adds :data:`NOFOLLOW`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path

from densepure.errors import InputError

NOFOLLOW = os.O_NOFOLLOW  # a link as the last component of a path opened for writing fails with ELOOP


def _describe(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "neither a regular file nor a directory"


def check_input(path: str | os.PathLike, what: str, *, file: bool = True, directory: bool = False) -> Path:
    """``path`` if it exists, is a regular file (``file``) or a directory (``directory``), and is readable;
    else an InputError naming ``what`` (e.g. ``"--checkpoint"``). Links are followed (reading through a
    link is harmless); nothing is opened."""
    p = Path(path)
    allowed = " or ".join(name for ok, name in ((file, "a regular file"), (directory, "a directory")) if ok)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise InputError(f"{what} {str(p)!r} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what} {str(p)!r} cannot be read: {exc.strerror or exc}") from exc
    if not ((file and stat.S_ISREG(mode)) or (directory and stat.S_ISDIR(mode))):
        raise InputError(f"{what} {str(p)!r} is {_describe(mode)}: expected {allowed}")
    if not os.access(p, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        raise InputError(f"{what} {str(p)!r} is not readable (permission denied)")
    return p


def check_output(path: str | os.PathLike, what: str, *, may_exist: bool) -> Path:
    """``path`` if a file may be written there (module doc): not a link, a directory or another non-regular
    file; an existing regular file only when ``may_exist``; a writable directory to put it in. InputError
    otherwise, naming ``what`` (e.g. ``"the result file"``); nothing is created."""
    p = Path(path)
    try:
        mode: int | None = os.lstat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # the parent check below says what is wrong with the directory
    except OSError as exc:
        raise InputError(f"cannot use {str(p)!r} as {what}: {exc.strerror or exc}") from exc
    if mode is not None and stat.S_ISLNK(mode):
        raise InputError(f"{what} {str(p)!r} is a symbolic link: densepure never writes through a link; give the "
                         f"real path ({os.path.realpath(p)!r}) or remove the link")
    if mode is not None and stat.S_ISDIR(mode):
        raise InputError(f"{what} {str(p)!r} is a directory: give a file name inside it")
    if mode is not None and not stat.S_ISREG(mode):
        raise InputError(f"{what} {str(p)!r} exists and is {_describe(mode)}: refusing to write there")
    if mode is not None and not may_exist:
        raise InputError(f"{what} {str(p)!r} already exists and is not densepure's to replace: move it, choose "
                         "another path, or pass --overwrite")
    parent = next((a for a in (p.parent, *p.parent.parents) if os.path.lexists(a)), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create {str(p)!r}: {str(parent)!r} is not a writable directory")
    return p


def _temporary_beside(path: Path) -> tuple[Path, int]:
    """A fresh file in ``path``'s directory (hidden, random name), opened for reading and writing."""
    for _ in range(16):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o666)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"no free temporary name beside {path}")


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (OSError on a short write that makes no progress)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def replace_file(path: str | os.PathLike, data: bytes, *, lock: bool = False) -> int | None:
    """Put ``data`` at ``path`` by writing a new file beside it and renaming it over the path (module doc).

    ``lock``: the new file is ``flock``-ed (exclusively) before it appears at the path and its open
    descriptor is returned (read/write; the caller closes it, which releases the lock); otherwise None.
    Raises OSError; the temporary file never outlives a failure.
    """
    p = Path(path)
    tmp, fd = _temporary_beside(p)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a brand-new file: nobody else can hold it
        write_all(fd, data)
        os.fsync(fd)
        os.replace(tmp, p)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _sync_directory(p.parent)
    if lock:
        return fd  # the same open file that took the lock before the rename: it never appeared unlocked
    os.close(fd)
    return None


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system lets a directory be synced)."""
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def same_file(fd: int, path: str | os.PathLike) -> bool:
    """True when ``path`` (not followed if a link) is the file open as ``fd``."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
