"""Writing result files: one run per file, locked, appended record by record, resumable.

Guarantees (file formats: :mod:`densepure.results.files`):

* **One writer.** :func:`open_results` takes an exclusive ``flock`` on the TSV for the writer's life; a
  second process on the same output is refused in one line, before it changes anything.
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from densepure.errors import ConfigError, InputError
from densepure.results.files import (
    _check_header,
    _flatten,
    _now,
    _parse_body,
    _read_jsonl,
    _read_lines,
    _whole_lines,
    config_differences,
    sidecar_path,
)
from densepure.results.records import IfExists, ImageRecord, RunHeader, TsvKind, Versions, _is_int, _to_json


def _oserror(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ResultWriter:
    """Appends images to a TSV and its sidecar; make one with :func:`open_results`.

    ``finished`` holds the indices already in the file when it was opened (resume skips them); ``kind``
    is the TSV format (a CERTIFY file takes rows with a radius, a PREDICT file rows without).
    """

    def __init__(self, path: Path, header: RunHeader, finished: frozenset[int], lock_fd: int,
                 kind: TsvKind = TsvKind.CERTIFY) -> None:
        self.path, self.header, self.finished, self.kind = path, header, finished, kind
        self._written: set[int] = set()
        self._lock_fd = lock_fd
        self._fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in (sidecar_path(path), path)]
        self._ids = [_identity(os.fstat(fd)) for fd in self._fds]
        self._broken: str | None = None

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
        side = (_to_json(record.to_json(), "image record", InputError) + "\n").encode("utf-8")
        try:
            _write_all(self._fds[0], side)
            _write_all(self._fds[1], record.row.to_line().encode("utf-8"))
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
        fd = os.open(self.path, os.O_WRONLY)  # not O_APPEND: pwrite would append
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def _lock(path: Path) -> int:
    """An exclusive lock on ``path`` (created if missing), as an open descriptor, or InputError."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"{str(path)!r} is being written by another densepure process (it holds the file's "
                         "lock): wait for that run to end, or choose another --output") from None
    return fd


def _header(config: Mapping[str, Any], seed: int, if_exists: IfExists) -> RunHeader:
    if not _is_int(seed):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if not isinstance(if_exists, IfExists):
        raise ConfigError(f"if_exists must be an IfExists, got {if_exists!r}")
    config = json.loads(_to_json(dict(config), "config"))
    return RunHeader(config, seed, Versions.current(), _now())


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise InputError(f"the result file {str(path)!r} is a directory: give a file name such as "
                         f"{str(path / 'certify.tsv')!r}")
    for p in (path, sidecar_path(path)):
        if p.exists() and not p.is_file():
            raise InputError(f"{str(p)!r} exists and is not a regular file")
    parent = next((a for a in (path.parent, *path.parent.parents) if a.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create {str(path)!r}: {str(parent)!r} is not a writable directory")


def check_results(path: str | Path, config: Mapping[str, Any], seed: int,
                  if_exists: IfExists = IfExists.RESUME, kind: TsvKind = TsvKind.CERTIFY) -> None:
    """Everything :func:`open_results` would refuse, found without changing anything: a directory or an
    unwritable location, another process holding the file, a resume whose configuration, seed or TSV
    format differs. Run it before slow work (model loading) so that a bad output fails in a second."""
    path = Path(path)
    header = _header(config, seed, if_exists)
    try:
        _check_path(path)
        exists = path.is_file() and path.stat().st_size > 0
        if exists:
            os.close(_lock(path))  # held by another run: refused now
        if exists and if_exists is IfExists.FAIL:
            raise InputError(f"result file {str(path)!r} already exists; resume it, start it again with "
                             "--overwrite, or choose another --output")
        if exists and if_exists is IfExists.RESUME:
            _read_resume(path, header, kind)
    except OSError as exc:
        raise InputError(f"cannot open the result file {str(path)!r}: {_oserror(exc)}") from exc


def open_results(path: str | Path, config: Mapping[str, Any], seed: int,
                 if_exists: IfExists = IfExists.RESUME, kind: TsvKind = TsvKind.CERTIFY) -> ResultWriter:
    """Open ``path`` (and ``<path>.jsonl``) to write results in the ``kind`` format, locked; resume an
    existing run if asked.

    Resuming checks that the sidecar's configuration and seed equal ``config`` and ``seed``
    (ConfigError naming the differing keys otherwise), drops an incomplete last line of either file
    and TSV rows without their sidecar record, records the resume in the sidecar, and appends. A
    file without any finished image starts again.
    """
    path = Path(path)
    header = _header(config, seed, if_exists)
    try:
        _check_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.is_file() and path.stat().st_size > 0
        lock = _lock(path)
    except OSError as exc:
        raise InputError(f"cannot open the result file {str(path)!r}: {_oserror(exc)}") from exc
    try:
        return _open_locked(path, header, if_exists, existed, lock, kind)
    except BaseException:
        os.close(lock)
        raise


def _open_locked(path: Path, header: RunHeader, if_exists: IfExists, existed: bool, lock: int,
                 kind: TsvKind) -> ResultWriter:
    try:
        if existed and if_exists is IfExists.FAIL:
            raise InputError(f"result file {str(path)!r} already exists; resume it, start it again with "
                             "--overwrite, or choose another --output")
        if existed and if_exists is IfExists.RESUME:
            finished = _prepare_resume(path, header, kind)
            if finished:
                return ResultWriter(path, header, finished, lock, kind)
        _rewrite(path, kind.header + "\n")
        _rewrite(sidecar_path(path), _to_json(header.to_json(), "header") + "\n")
        return ResultWriter(path, header, frozenset(), lock, kind)
    except OSError as exc:
        raise InputError(f"cannot open the result file {str(path)!r}: {_oserror(exc)}") from exc


def _rewrite(path: Path, text: str) -> None:
    """Replace the content of ``path`` in place (same file: the lock and the writer's identity stay)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _read_resume(path: Path, header: RunHeader, kind: TsvKind):
    """Read and check an existing run: (TSV lines, parsed rows, kept TSV lines, sidecar records, kept
    sidecar bytes), or None when the TSV holds no finished image."""
    lines, _ = _whole_lines(path)
    _check_header(lines, path, kind)
    parsed, kept = _parse_body(lines, path, drop_bad_last=True, kind=kind)
    if not parsed:
        return None
    side = sidecar_path(path)
    if not side.exists():
        raise InputError(f"cannot resume {str(path)!r}: its sidecar {str(side)!r} is missing, so the configuration "
                         "cannot be checked; start it again with --overwrite or use a new --output")
    records, side_kept = _read_jsonl(side, drop_bad_last=True)
    if not records:
        raise InputError(f"cannot resume {str(path)!r}: {str(side)!r} has no header record")
    _check_same_run(path, RunHeader.from_json(records[0]), header)
    return lines, parsed, kept, records, side_kept


def _prepare_resume(path: Path, header: RunHeader, kind: TsvKind) -> frozenset[int]:
    """Check and trim an existing run; its finished indices (empty: start the file again)."""
    found = _read_resume(path, header, kind)
    if found is None:
        return frozenset()
    lines, parsed, kept, records, side_kept = found
    recorded = {r.get("idx") for r in records[1:] if r.get("record") == "image"}
    body = [line for line in lines[1:kept] if line.strip()]
    orphans = sorted(fields[0] for fields in parsed if fields[0] not in recorded)
    os.truncate(sidecar_path(path), side_kept)
    if orphans:  # rows whose record was lost: computed again, so that every row keeps its counts
        keep = [line for line, fields in zip(body, parsed, strict=True) if fields[0] in recorded]
        _rewrite(path, kind.header + "\n" + "".join(keep))
    else:
        os.truncate(path, len("".join(lines[:kept]).encode("utf-8")))
    resume = {"record": "resume", "versions": asdict(header.versions), "created": header.created}
    if orphans:
        resume["redone_without_records"] = orphans
    with sidecar_path(path).open("a", encoding="utf-8", newline="") as handle:
        handle.write(_to_json(resume, "resume record") + "\n")
    return frozenset(fields[0] for fields in parsed if fields[0] in recorded)


def _check_same_run(path: Path, old: RunHeader, new: RunHeader) -> None:
    differing = list(config_differences(old.config, new.config))
    if old.seed != new.seed:
        differing.append("seed")
    if differing:
        flat_old, flat_new = _flatten(old.config), _flatten(new.config)
        flat_old["seed"], flat_new["seed"] = old.seed, new.seed
        shown = "; ".join(f"{k}: {flat_old.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r}"
                          for k in differing[:5])
        raise ConfigError(f"{str(path)!r} holds another run: use a new --output, or start this one again with "
                          f"--overwrite (which discards it); resuming would mix the two. It differs in {differing}: "
                          f"{shown}")
