"""Resuming a run: the existing files read, checked and trimmed, and the resume recorded (the writer's
"Nothing believed" and "No mixing" guarantees, :mod:`densepure.results.writer`).

A resumed file keeps its format version: a format-1 file (written before the hash chain) goes on without a
chain, since chaining its earlier records now would vouch for lines nobody protected when they were written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from densepure.errors import ConfigError, DensePureError, InputError
from densepure.paths import NOFOLLOW, check_input, write_all
from densepure.results.chain import Chain
from densepure.results.files import (
    _check_header,
    _flatten,
    _parse_body,
    _whole_lines,
    config_differences,
    read_json_lines,
    sidecar_path,
)
from densepure.results.records import RunHeader, TsvKind, _to_json
from densepure.results.verify import ProblemKind, RunText, check_run

ReadOld = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""How the caller reads a configuration recorded earlier before comparing it (settings that no longer change a
label left out, values that meant the same spelled as today's); the identity when not given."""


def spare_sidecar(side: Path, images_allowed: bool = False) -> bool:
    """True when ``side`` is a regular densepure sidecar that may be started again: one that holds no image (a
    run stopped before its first), or, ``images_allowed`` (its TSV is ours and holds no row), any."""
    try:
        check_input(side, "the sidecar")
        found = read_json_lines(side, drop_bad_last=True)
        RunHeader.from_json(found.records[0])
    except (DensePureError, IndexError, KeyError, TypeError, ValueError):
        return False
    return images_allowed or not any(r.get("record") == "image" for r in found.records[1:])


def _rewrite(path: Path, text: str) -> None:
    """Replace the content of ``path`` in place (same file: the lock and the writer's identity stay); only for
    files of this run, under its lock."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | NOFOLLOW)
    try:
        write_all(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Existing:
    """An existing run as read for a resume: its text, header, parsed TSV rows and how many TSV lines are whole."""

    text: RunText
    header: RunHeader
    parsed: list[tuple]
    kept: int


def read_resume(path: Path, header: RunHeader, kind: TsvKind, read_old: ReadOld | None) -> _Existing | None:
    """Read and check an existing run (the writer's "Nothing believed", then the configuration), or None
    when the TSV holds no finished image (then its sidecar, if any, must be a densepure sidecar)."""
    lines, _ = _whole_lines(path)
    _check_header(lines, path, kind)
    parsed, kept = _parse_body(lines, path, drop_bad_last=True, kind=kind)
    side = sidecar_path(path)
    if not parsed:
        if os.path.lexists(side) and not spare_sidecar(side, images_allowed=True):
            raise InputError(f"{str(side)!r} is not a densepure sidecar: it would be destroyed; move it, choose "
                             "another --output, or pass --overwrite")
        return None
    if not side.exists():
        raise InputError(f"cannot resume {str(path)!r}: its sidecar {str(side)!r} is missing, so the configuration "
                         "cannot be checked; start it again with --overwrite or use a new --output")
    check_input(side, "the result file's sidecar")
    text = RunText(path.name, lines[:kept], kind, side.name, read_json_lines(side, drop_bad_last=True))
    old, problems = check_run(text, procedure_needed=False)
    problems = [p for p in problems if p.kind is not ProblemKind.ORPHAN_ROW]  # rows whose record was lost: redone
    chain = [p for p in problems if p.kind in (ProblemKind.CHAIN, ProblemKind.CONFIG)]
    if old is None or chain:  # the header cannot be believed: say so before comparing configurations
        _refuse_edited(path, chain[0] if chain else f"{str(side)!r} has no header record")
    _check_same_run(path, old, header, read_old)
    if problems:
        _refuse_edited(path, problems[0])
    return _Existing(text, old, parsed, kept)


def _refuse_edited(path: Path, problem: object) -> None:
    raise InputError(f"cannot resume {str(path)!r}: {problem}; the file was changed after it was written, so its "
                     "results are not used: restore it, start it again with --overwrite, or use a new --output")


def prepare_resume(path: Path, header: RunHeader, kind: TsvKind,
                   read_old: ReadOld | None) -> tuple[RunHeader, frozenset[int], Chain | None] | None:
    """Check and trim an existing run: its header, finished indices and chain position (None: start again)."""
    found = read_resume(path, header, kind, read_old)
    if found is None:
        return None
    side = found.text.sidecar
    recorded = {r.get("idx") for r in side.records[1:] if r.get("record") == "image"}
    lines = found.text.tsv
    body = [line for line in lines[1:found.kept] if line.strip()]
    orphans = sorted(fields[0] for fields in found.parsed if fields[0] not in recorded)
    os.truncate(sidecar_path(path), side.kept)
    if orphans:  # rows whose record was lost: computed again, so that every row keeps its counts
        keep = [line for line, fields in zip(body, found.parsed, strict=True) if fields[0] in recorded]
        _rewrite(path, kind.header + "\n" + "".join(keep))
    else:
        os.truncate(path, len("".join(lines[:found.kept]).encode("utf-8")))
    resume: dict[str, Any] = {"record": "resume", "versions": asdict(header.versions), "created": header.created}
    if orphans:
        resume["redone_without_records"] = orphans
    chain = None
    if found.header.chained:
        chain = Chain.start(side.lines[0])
        chain.advance(side.lines[side.numbers[-1] - 1])
        resume = chain.link(resume)
    line = _to_json(resume, "resume record")
    fd = os.open(sidecar_path(path), os.O_WRONLY | os.O_APPEND | NOFOLLOW)
    try:
        write_all(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)
    if chain is not None:
        chain.advance(line)
    return found.header, frozenset(fields[0] for fields in found.parsed if fields[0] in recorded), chain


def _check_same_run(path: Path, old: RunHeader, new: RunHeader, read_old: ReadOld | None = None) -> None:
    old_config = dict(read_old(old.config)) if read_old is not None else old.config
    differing = list(config_differences(old_config, new.config))
    if old.seed != new.seed:
        differing.append("seed")
    if differing:
        flat_old, flat_new = _flatten(old_config), _flatten(new.config)
        flat_old["seed"], flat_new["seed"] = old.seed, new.seed
        shown = "; ".join(f"{k}: {flat_old.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r}"
                          for k in differing[:5])
        raise ConfigError(f"{str(path)!r} holds another run: use a new --output, or start this one again with "
                          f"--overwrite (which discards it); resuming would mix the two. It differs in {differing}: "
                          f"{shown}{_noise_hint(differing, old_config)}")


def _noise_hint(differing: list[str], old_config: dict) -> str:
    """A run that records no noise drew float noise (every file written before the sound noise)."""
    if "noise" in differing and "noise" not in old_config:
        return ". It was made with the float noise: add --noise float to resume it"
    return ""
