"""Writing result files: one run per file, locked, appended record by record, resumable.

Guarantees (file formats: :mod:`densepure.results.files`):

* **One writer.** :func:`open_results` takes an exclusive ``flock`` on the TSV for the writer's life; a
  second process on the same output is refused in one line, before it changes anything. A lock is only
  kept on the file that is at the path (checked after locking), so a file replaced meanwhile is not held.
* **Nothing else clobbered.** Both paths are checked like every output (:func:`densepure.paths.check_output`):
  no symbolic link is written through (every open adds ``O_NOFOLLOW``), no directory or FIFO is used.
  Without ``--overwrite`` an existing sidecar is replaced only when it is a densepure sidecar holding no
  finished image; with it, a new file is written beside each path and renamed over it (a hard link's
  other names keep their content), the new TSV locked before it appears.
* **Nothing believed.** A resume checks the file first (:func:`densepure.results.verify.check_run`): the
  sidecar's hash chain, every certificate recomputed from its counts, every TSV row against its record;
  a problem refuses the resume naming the line. A resumed file keeps its format version: a format-1 file
  (written before the chain) goes on without a chain, since chaining its earlier records now would vouch
  for lines nobody protected when they were written.
* **No mixing.** Resuming checks the sidecar's configuration and seed (content hashes of the inputs
  included, when the caller records them) against the new run's, and refuses any difference.
* **Whole records.** Each image is appended as its sidecar record, then its TSV line, each one
  ``write`` on an unbuffered descriptor. A crash or a full disk can only leave an incomplete *last*
  line, which every reader and every resume drops. Nothing is buffered, so closing never fails late
  and never hides the error that stopped the run.
* **Provenance.** Every TSV row has its sidecar record: a resume drops TSV rows whose record is
  missing (they are computed again, with the same noise, hence the same result), and a writer
  refuses to go on if its files were replaced or removed under it (its records would go to a file
  nobody can read any more).
* **Image order at the end.** Rows are appended as images are decided; when a run completes,
  :meth:`ResultWriter.sort_rows` puts the TSV in image order, as Cohen's files are: the same lines
  permuted, written over the file in place (same file, same length, the lock still held) in one
  ``pwrite`` with SIGINT/SIGTERM/SIGHUP held back, then ``fsync``. The sidecar stays in completion order.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from densepure.errors import ConfigError, InputError
from densepure.paths import NOFOLLOW, check_output, replace_file, same_file, write_all
from densepure.results.chain import Chain
from densepure.results.files import (
    _now,
    _read_lines,
    sidecar_path,
)
from densepure.results.records import IfExists, ImageRecord, RunHeader, TsvKind, Versions, _is_int, _to_json
from densepure.results.resume import ReadOld, prepare_resume, read_resume, spare_sidecar


def _oserror(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ResultWriter:
    """Appends images to a TSV and its sidecar; make one with :func:`open_results`.

    ``finished`` holds the indices already in the file when it was opened (resume skips them); ``kind``
    is the TSV format (a CERTIFY file takes rows with a radius, a PREDICT file rows without).
    """

    def __init__(self, path: Path, header: RunHeader, finished: frozenset[int], lock_fd: int,
                 kind: TsvKind = TsvKind.CERTIFY, chain: Chain | None = None) -> None:
        self.path, self.header, self.finished, self.kind = path, header, finished, kind
        self._written: set[int] = set()
        self._lock_fd = lock_fd
        self._chain = chain  # None: a format-1 file, resumed without a chain
        self._fds = [os.open(p, os.O_WRONLY | os.O_APPEND | NOFOLLOW) for p in (sidecar_path(path), path)]
        self._ids = [_identity(os.fstat(fd)) for fd in self._fds]
        self._broken: str | None = None
        if self._ids[1] != _identity(os.fstat(lock_fd)):
            self.close()
            raise InputError(f"{str(path)!r} was replaced while it was being opened: run again")

    def write(self, record: ImageRecord) -> None:
        """Append one image: its sidecar record, then its TSV line (each one unbuffered write)."""
        idx = record.row.idx
        if idx in self.finished or idx in self._written:
            raise InputError(f"image idx {idx} is already in {str(self.path)!r}")
        if not self._fds:
            raise InputError(f"result file {str(self.path)!r} is closed")
        if self._broken is not None:
            raise InputError(self._broken)
        if record.row.kind is not self.kind:
            raise InputError(f"image idx {idx} is a {record.row.kind.value} row, {str(self.path)!r} is a "
                             f"{self.kind.value} file")
        self._check_files()
        data = record.to_json() if self._chain is None else self._chain.link(record.to_json())
        line = _to_json(data, "image record", InputError)
        try:
            write_all(self._fds[0], (line + "\n").encode("utf-8"))
            if self._chain is not None:
                self._chain.advance(line)
            write_all(self._fds[1], record.row.to_line().encode("utf-8"))
        except OSError as exc:
            self._broken = (f"cannot write to {str(self.path)!r}: {_oserror(exc)}; the results written so far are "
                            "intact and the run resumes from them once the cause is fixed")
            raise InputError(self._broken) from exc
        self._written.add(idx)

    def _check_files(self) -> None:
        for p, want in zip((sidecar_path(self.path), self.path), self._ids, strict=True):
            try:
                same = _identity(os.stat(p)) == want
            except OSError:
                same = False
            if not same:
                self._broken = (f"{str(p)!r} was removed or replaced while this run was writing it; nothing more "
                                "is written (results would go to a file nobody can read): restore it, or use a new "
                                "--output")
                raise InputError(self._broken)

    def sort_rows(self) -> None:
        """Put the TSV's rows in image order, in place (module doc); call it when the run is complete."""
        if not self._fds:
            raise InputError(f"result file {str(self.path)!r} is closed")
        if self._broken is not None:
            raise InputError(self._broken)
        self._check_files()
        lines, complete = _read_lines(self.path)
        body = lines[1:]
        ordered = sorted(body, key=lambda line: (not line.strip(), int(line.split("\t", 1)[0]) if line.strip() else 0))
        if not complete or ordered == body:
            return  # an incomplete last line is never ours to move (the writer writes whole lines)
        data = "".join([lines[0], *ordered]).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | NOFOLLOW)  # not O_APPEND: pwrite would append
        try:
            with _signals_held():
                view, offset = memoryview(data), 0
                while offset < len(data):
                    written = os.pwrite(fd, view[offset:], offset)
                    if written <= 0:
                        raise OSError(errno.EIO, "short write")
                    offset += written
                os.fsync(fd)
        except OSError as exc:
            self._broken = (f"cannot put {str(self.path)!r} in image order: {_oserror(exc)}; its sidecar "
                            f"{str(sidecar_path(self.path))!r} holds every record")
            raise InputError(self._broken) from exc
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the files and the lock; never raises (nothing is buffered)."""
        for fd in (*self._fds, self._lock_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds, self._lock_fd = [], -1

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP (Ctrl-C, kill, a closed terminal) while the TSV is rewritten;
    they are delivered when it is whole again."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _lock(path: Path) -> int:
    """An exclusive lock on the file at ``path`` (created if missing, never through a link), as an open
    descriptor, or InputError. The lock is kept only if that file is still the one at the path (another
    run may have replaced it while this one waited: then the new file is tried)."""
    for _ in range(8):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"{str(path)!r} is being written by another densepure process (it holds the file's "
                             "lock): wait for that run to end, or choose another --output") from None
        if same_file(fd, path):
            return fd
        os.close(fd)
    raise InputError(f"{str(path)!r} keeps being replaced by another process: wait for it, or choose another --output")


def _header(config: Mapping[str, Any], seed: int, if_exists: IfExists) -> RunHeader:
    if not _is_int(seed):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if not isinstance(if_exists, IfExists):
        raise ConfigError(f"if_exists must be an IfExists, got {if_exists!r}")
    config = json.loads(_to_json(dict(config), "config"))
    return RunHeader(config, seed, Versions.current(), _now())


def _check_paths(path: Path, if_exists: IfExists) -> bool:
    """Check both files of ``path`` as outputs (module doc); True when the TSV holds something (it exists,
    non-empty). Without OVERWRITE, a sidecar beside a TSV that holds nothing must be densepure's with no image."""
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"the result file {str(path)!r} is a directory: give a file name such as "
                         f"{str(path / 'certify.tsv')!r}")
    check_output(path, "the result file", may_exist=True)
    side = sidecar_path(path)
    check_output(side, "the result file's sidecar", may_exist=True)
    existed = path.is_file() and path.stat().st_size > 0
    if not existed and if_exists is not IfExists.OVERWRITE and os.path.lexists(side) and not spare_sidecar(side):
        raise InputError(f"{str(side)!r} exists and is not the sidecar of an unfinished densepure run, but "
                         f"{str(path)!r} holds no results: it would be destroyed; move it, choose another --output, "
                         "or pass --overwrite")
    return existed


def check_results(path: str | Path, config: Mapping[str, Any], seed: int,
                  if_exists: IfExists = IfExists.RESUME, kind: TsvKind = TsvKind.CERTIFY,
                  read_old: ReadOld | None = None) -> None:
    """Everything :func:`open_results` would refuse, found without changing anything: a directory, a link or
    an unwritable location, a file that is not ours, another process holding the file, a resume whose
    configuration, seed or TSV format differs or whose file fails its checks. Run it before slow work (model
    loading) so that a bad output fails in a second."""
    path = Path(path)
    header = _header(config, seed, if_exists)
    try:
        exists = _check_paths(path, if_exists)
        if exists:
            os.close(_lock(path))  # held by another run: refused now
        if exists and if_exists is IfExists.FAIL:
            raise InputError(f"result file {str(path)!r} already exists; resume it, start it again with "
                             "--overwrite, or choose another --output")
        if exists and if_exists is IfExists.RESUME:
            read_resume(path, header, kind, read_old)
    except OSError as exc:
        raise InputError(f"cannot open the result file {str(path)!r}: {_oserror(exc)}") from exc


def open_results(path: str | Path, config: Mapping[str, Any], seed: int,
                 if_exists: IfExists = IfExists.RESUME, kind: TsvKind = TsvKind.CERTIFY,
                 read_old: ReadOld | None = None) -> ResultWriter:
    """Open ``path`` (and ``<path>.jsonl``) to write results in the ``kind`` format, locked; resume an
    existing run if asked.

    Resuming checks the existing file (the module doc's "Nothing believed"), and that the sidecar's
    configuration (as ``read_old`` reads it) and seed equal ``config`` and ``seed`` (ConfigError naming
    the differing keys otherwise); it drops an incomplete last line of either file and TSV rows without
    their sidecar record, records the resume in the sidecar, and appends. A file without any finished
    image starts again.
    """
    path = Path(path)
    header = _header(config, seed, if_exists)
    try:
        existed = _check_paths(path, if_exists)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
    except OSError as exc:
        raise InputError(f"cannot open the result file {str(path)!r}: {_oserror(exc)}") from exc
    held = [lock]
    try:
        return _open_locked(path, header, if_exists, existed, held, kind, read_old)
    except BaseException:
        os.close(held[0])
        raise


def _open_locked(path: Path, header: RunHeader, if_exists: IfExists, existed: bool, held: list[int],
                 kind: TsvKind, read_old: ReadOld | None) -> ResultWriter:
    try:
        if existed and if_exists is IfExists.FAIL:
            raise InputError(f"result file {str(path)!r} already exists; resume it, start it again with "
                             "--overwrite, or choose another --output")
        if existed and if_exists is IfExists.RESUME:
            found = prepare_resume(path, header, kind, read_old)
            if found is not None:
                old, finished, chain = found
                return ResultWriter(path, old, finished, held[0], kind, chain)
        header_line = _to_json(header.to_json(), "header")
        replace_file(sidecar_path(path), (header_line + "\n").encode("utf-8"))
        new_lock = replace_file(path, (kind.header + "\n").encode("utf-8"), lock=True)
        os.close(held[0])  # the replaced file's lock: the new file at the path is locked already
        held[0] = new_lock
        return ResultWriter(path, header, frozenset(), new_lock, kind, Chain.start(header_line))
    except OSError as exc:
        raise InputError(f"cannot open the result file {str(path)!r}: {_oserror(exc)}") from exc
