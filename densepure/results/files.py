"""Result files: the ecosystem's TSV (Cohen's certify.py, ALGORITHM.md §9) plus a JSONL sidecar.

TSV: header ``idx\\tlabel\\tpredict\\tradius\\tcorrect\\ttime``, then one line per image, written
in one ``write`` call and flushed, so a crash never leaves a half line that looks whole.
``predict = -1`` is an abstention; ``correct`` is 0/1; ``radius`` has 4 decimals, rounded *down*
so that the printed radius is never larger than the certified one; ``time`` is wall seconds with
4 decimals. PREDICT results use Cohen's ``predict.py`` format, the same without ``radius``
(``idx\\tlabel\\tpredict\\tcorrect\\ttime``: PREDICT certifies no radius). Lines are appended as
images are decided and put in image order when the run completes; readers take either order.

Sidecar ``<results>.jsonl``: a ``"record": "header"`` line (format, configuration, seed, versions),
then one ``"record": "image"`` line per image (the TSV fields at full precision, n0, n, the
selection and estimation counts, extra fields), and a ``"record": "resume"`` line each time a run is
resumed. An image's sidecar record is written before its TSV line: the TSV decides what is
finished, and a record without a TSV line (an interrupted write) is superseded when the image is
redone -- readers keep the last record of each index.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from densepure.errors import InputError
from densepure.results.records import (
    _TIMEDELTA,
    CorrectColumn,
    ImageRecord,
    ResultRow,
    RunHeader,
    Sidecar,
    TsvKind,
)


def sidecar_path(path: str | Path) -> Path:
    """``results.tsv`` -> ``results.tsv.jsonl``."""
    return Path(f"{path}.jsonl")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_seconds(text: str) -> float:
    """'12.5' -> 12.5; also Cohen's ``str(timedelta)``: '0:00:12.500000', '1 day, 2:03:04'."""
    try:
        return float(text)
    except ValueError:
        pass
    match = _TIMEDELTA.match(text.strip())
    if match is None:
        raise InputError(f"time must be seconds or H:MM:SS[.ffffff], got {text!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400.0 + int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds)


def _parse_fields(line: str, kind: TsvKind = TsvKind.CERTIFY) -> tuple[int, int, int, float | None, int, float]:
    """One TSV line -> raw fields (``correct`` as an int, maybe a running total; ``radius`` None for PREDICT)."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != len(kind.columns):
        raise InputError(f"expected {len(kind.columns)} tab-separated fields, got {len(fields)}")
    if kind is TsvKind.PREDICT:
        fields.insert(3, "")
    try:
        idx, label, predict, correct = (int(fields[i]) for i in (0, 1, 2, 4))
        radius = None if kind is TsvKind.PREDICT else float(fields[3])
    except ValueError as exc:
        raise InputError(f"bad field in {line.rstrip()!r}: {exc}") from exc
    return idx, label, predict, radius, correct, parse_seconds(fields[5])


def _read_lines(path: Path) -> tuple[list[str], bool]:
    """Lines of a text file (newlines kept) and whether the last one was complete."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"result file {str(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}") from exc
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]  # what follows the last newline: "" or a partial line
    if not lines[-1]:
        lines.pop()
    return lines, not lines or lines[-1].endswith("\n")


def _whole_lines(path: Path) -> tuple[list[str], bool]:
    """The lines of ``path`` that end in a newline, and whether a partial last line was dropped.

    A record is written as one line ending in ``\n``; a last line without it is an interrupted write
    (a crash, a full disk) even when what is there still parses, so it is never read as a record.
    """
    lines, complete = _read_lines(path)
    return (lines, False) if complete else (lines[:-1], True)


def _check_header(lines: list[str], path: Path, want: TsvKind | None = None) -> TsvKind:
    """The format of a result file by its header (``want``: the one it must have), or InputError."""
    kind = TsvKind.of_header(lines[0]) if lines else None
    if kind is None:
        got = lines[0].rstrip() if lines else "an empty file"
        expected = want.header if want is not None else f"{TsvKind.CERTIFY.header!r} or {TsvKind.PREDICT.header!r}"
        raise InputError(f"{str(path)!r} is not a result file: expected the header {expected!r}, got {got!r}")
    if want is not None and kind is not want:
        raise InputError(f"{str(path)!r} holds {kind.value} results ({kind.header!r}), this run writes {want.value} "
                         f"results: use another --output, or start it again with --overwrite")
    return kind


def _parse_body(lines: list[str], path: Path, drop_bad_last: bool = False,
                kind: TsvKind = TsvKind.CERTIFY) -> tuple[list[tuple], int]:
    """Parse the (whole) lines after the header. A bad *last* line is dropped when ``drop_bad_last``;
    any other bad line raises InputError. Returns the parsed fields and how many lines (header
    included) were kept."""
    parsed: list[tuple] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            parsed.append(_parse_fields(line, kind))
        except InputError as exc:
            if number == len(lines) and drop_bad_last:
                return parsed, number - 1
            raise InputError(f"{str(path)!r}, line {number}: {exc}") from exc
    return parsed, len(lines)


def _correct_per_row(values: list[int], mode: CorrectColumn, path: Path) -> list[int]:
    rising = all(b >= a for a, b in zip(values, values[1:], strict=False))
    if mode is CorrectColumn.AUTO:
        mode = CorrectColumn.RUNNING_TOTAL if values and max(values) > 1 and rising \
            else CorrectColumn.PER_ROW
    if mode is CorrectColumn.RUNNING_TOTAL:
        values = [b - a for a, b in zip([0, *values], values, strict=False)]
    bad = sorted({v for v in values if v not in (0, 1)})
    if bad:
        raise InputError(f"{str(path)!r}: correct must be 0/1 per row ({mode.value}), got {bad}")
    return values


def read_results(path: str | Path, correct: CorrectColumn = CorrectColumn.AUTO) -> list[ResultRow]:
    """Read a result TSV: ours, Cohen's (``H:MM:SS.ffffff`` times, 3-digit radii) or DDS's
    (running-total ``correct``, see :class:`CorrectColumn`), in the CERTIFY or the PREDICT format (rows
    without a radius: ``radius`` None). Rows come in file order; a partial last line is skipped."""
    path = Path(path)
    lines, _ = _whole_lines(path)
    kind = _check_header(lines, path)
    parsed, _ = _parse_body(lines, path, kind=kind)
    per_row = _correct_per_row([fields[4] for fields in parsed], correct, path)
    rows, seen = [], set()
    for fields, ok in zip(parsed, per_row, strict=True):
        if fields[0] in seen:
            raise InputError(f"{str(path)!r}: image idx {fields[0]} appears twice")
        seen.add(fields[0])
        label, predict = fields[1], fields[2]
        if ok != int(label >= 0 and predict == label):
            raise InputError(f"{str(path)!r}, image idx {fields[0]}: correct={ok} but predict={predict} and "
                             f"label={label}; correct must be 1 exactly when the prediction equals a known label")
        try:
            rows.append(ResultRow(fields[0], fields[1], fields[2], fields[3], ok, fields[5]))
        except InputError as exc:
            raise InputError(f"{str(path)!r}, image idx {fields[0]}: {exc}") from exc
    return rows


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    """Dotted names of the settings that differ between two configurations (nested mappings are
    compared key by key; a key present on one side only counts as different)."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    return tuple(sorted(k for k in flat_old.keys() | flat_new.keys()
                        if flat_old.get(k, _MISSING) != flat_new.get(k, _MISSING)))


_MISSING = object()


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class JsonLines:
    """The whole lines of a JSONL file (newlines kept), its records in order with their 1-based line
    ``numbers``, and the byte length of the valid prefix (``kept``: what a resume keeps)."""

    lines: list[str]
    records: list[dict[str, Any]]
    numbers: list[int]
    kept: int


def read_json_lines(path: Path, drop_bad_last: bool) -> JsonLines:
    """Read a JSONL file (module doc); a bad or partial last line is dropped when ``drop_bad_last``, else it
    raises InputError naming the line."""
    lines, _ = _whole_lines(path)
    records, numbers, kept = [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            kept += len(line.encode("utf-8"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines) and drop_bad_last:
                lines = lines[:-1]
                break
            raise InputError(f"{str(path)!r}, line {number}: not a complete JSON record")
        records.append(record)
        numbers.append(number)
        kept += len(line.encode("utf-8"))
    return JsonLines(lines, records, numbers, kept)


def _read_jsonl(path: Path, drop_bad_last: bool) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSONL file and the byte length of the valid prefix (:func:`read_json_lines`)."""
    found = read_json_lines(path, drop_bad_last)
    return found.records, found.kept


def read_sidecar(path: str | Path) -> Sidecar:
    """Read the sidecar of result file ``path`` (or the sidecar file itself, when ``path`` has no
    sidecar beside it); a partial last record is skipped."""
    path = Path(path)
    if sidecar_path(path).is_file():
        path = sidecar_path(path)
    records, _ = _read_jsonl(path, drop_bad_last=True)
    if not records:
        raise InputError(f"sidecar {str(path)!r} has no header record")
    try:
        header = RunHeader.from_json(records[0])
        images = {r["idx"]: ImageRecord.from_json(r) for r in records[1:] if r["record"] == "image"}
    except (KeyError, TypeError) as exc:
        raise InputError(f"sidecar {str(path)!r}: malformed record ({exc!r})") from exc
    resumes = tuple(r.get("created", "") for r in records[1:] if r["record"] == "resume")
    return Sidecar(header, tuple(images.values()), resumes)
