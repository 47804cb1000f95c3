"""Checking a result file against itself: nothing in it is believed that its counts do not imply.

:func:`check_run` (``densepure verify``; a resume and ``analyze`` run the same checks and refuse a file
that fails them, naming the line):

* **Certificates from counts.** Every sidecar record is recomputed by the procedure the header's
  configuration names (:class:`Procedure`): CERTIFY by Cohen's bound with the recorded alpha, n0, n and
  sigma; PREDICT by the binomial test; sequential rows by the plan of their method, as far as the final
  counts allow (the stopping count is a look of the plan, the test stops there with the recorded decision,
  and no earlier look could have stopped it whatever the order of the draws); anytime rows (``--budget``)
  by replaying the betting confidence sequence over the recorded hits at each look, which must be
  cumulative and end at the estimation count of the selected class. The label, the radius (to 1e-9
  relative) and ``correct`` must be what the counts give.
* **The chain** (format version 2, :mod:`densepure.results.chain`): an edit of any line but the last is
  named.
* **TSV against sidecar.** Every TSV line must be exactly the line its image's last sidecar record
  formats to; a record without a TSV line is allowed only where a run was interrupted (the last record,
  or the one before a resume record).
* **The configuration**: the statistics are valid, the seed in the header equals the configuration's,
  the TSV format is the procedure's, and every record's n0 and n are the run's.

What it cannot see: a forger who recomputes the chain after an edit, and edits of a format-1 file that
keep counts, rows and configuration consistent (see :mod:`densepure.results.chain`).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densepure.errors import DensePureError, InputError
from densepure.paths import check_input
from densepure.results.chain import check_chain
from densepure.results.files import (
    JsonLines,
    _check_header,
    _parse_fields,
    _whole_lines,
    read_json_lines,
    read_results,
    sidecar_path,
)
from densepure.results.records import ImageRecord, RunHeader, TsvKind
from densepure.stats.boundary import BoundaryPlan, build_plan
from densepure.stats.cohen import certify_from_counts, predict_from_counts, validate_alpha, validate_sample_count
from densepure.stats.confseq import AnytimeRadius, anytime_looks
from densepure.stats.sequential import SequentialDecision, SequentialMethod
from densepure.validation import validate_sigma


class ProcedureKind(enum.Enum):
    CERTIFY = "certify"
    PREDICT = "predict"
    SEQUENTIAL = "sequential"
    ANYTIME = "anytime"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@functools.lru_cache(maxsize=16)
def _boundaries(method: SequentialMethod, radius: float, sigma: float, alpha: float, n_max: int):
    """(looks, certify_at, futile_at) of the plan: look i certifies at ``hits >= certify_at[i]``, stops
    otherwise at ``hits <= futile_at[i]`` or at the last look."""
    plan = build_plan(method, radius, sigma, alpha, n_max=n_max)
    if isinstance(plan, BoundaryPlan):
        return plan.looks, plan.certify_at, plan.futile_at
    return (plan.looks, *plan.count_boundaries())


@dataclass(frozen=True)
class Procedure:
    """How the rows of a run were computed, from its recorded configuration (:meth:`from_config`)."""

    kind: ProcedureKind
    alpha: float
    n: int
    sigma: float | None = None
    n0: int | None = None
    radius: float | None = None
    method: SequentialMethod | None = None

    @property
    def tsv_kind(self) -> TsvKind:
        return TsvKind.PREDICT if self.kind is ProcedureKind.PREDICT else TsvKind.CERTIFY

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Procedure | None:
        """The procedure of a recorded configuration; None when it records no statistics at all (no alpha:
        not a certification run); InputError when they are there but not valid."""
        if "alpha" not in config:
            return None
        try:
            alpha, n = validate_alpha(config["alpha"]), validate_sample_count("n", config.get("n"))
            if config.get("predict"):
                return cls(ProcedureKind.PREDICT, alpha, n)
            sigma, n0 = validate_sigma(config.get("sigma")), validate_sample_count("n0", config.get("n0"))
            if config.get("budget") is not None:
                return cls(ProcedureKind.ANYTIME, alpha, validate_sample_count("budget", config["budget"]), sigma, n0)
            if config.get("radius") is None:
                return cls(ProcedureKind.CERTIFY, alpha, n, sigma, n0)
            method = SequentialMethod.parse(config.get("sequential") or SequentialMethod.GEOMETRIC.value)
            _boundaries(method, float(config["radius"]), sigma, alpha, n)
            return cls(ProcedureKind.SEQUENTIAL, alpha, n, sigma, n0, float(config["radius"]), method)
        except (DensePureError, TypeError, ValueError) as exc:
            raise InputError(f"the recorded configuration is not a valid run: {exc}") from exc

    def check(self, record: ImageRecord) -> str | None:
        """What is wrong with ``record`` under this procedure (one line), or None."""
        if self.kind is ProcedureKind.PREDICT:
            return self._check_predict(record)
        if record.n0 != self.n0:
            return f"n0={record.n0}, but the run's configuration has n0={self.n0}"
        sel, est = record.selection_counts, record.estimation_counts
        if not sel or len(sel) != len(est):
            return (f"its class counts ({len(sel)} selection, {len(est)} estimation classes) cannot give a "
                    "certificate: nothing to recompute it from")
        if sum(sel) != record.n0 or sum(est) != record.n:
            return (f"its counts add up to {sum(sel)} selection and {sum(est)} estimation draws, but it records "
                    f"n0={record.n0}, n={record.n}")
        if self.kind is ProcedureKind.SEQUENTIAL:
            return self._check_sequential(record)
        if record.n != self.n:
            return f"n={record.n}, but the run's configuration has n={self.n}"
        if self.kind is ProcedureKind.ANYTIME:
            return self._check_anytime(record)
        cert = certify_from_counts(np.array(sel), np.array(est), self.sigma, self.alpha)
        return _compare_row(record, cert.label, cert.radius, self) or _compare_extra(record, "p_a_lower",
                                                                                     cert.p_a_lower)

    def _check_predict(self, record: ImageRecord) -> str | None:
        est = record.estimation_counts
        if record.n != self.n or sum(est) != self.n or not est:
            return f"n={record.n} with {sum(est)} counted draws, but the run's configuration has n={self.n}"
        pred = predict_from_counts(np.array(est), self.alpha)
        return _compare_row(record, pred.label, None, self) or _compare_extra(record, "p_value", pred.p_value)

    def _check_sequential(self, record: ImageRecord) -> str | None:
        looks, certify_at, futile_at = _boundaries(self.method, self.radius, self.sigma, self.alpha, self.n)
        n_used = record.n
        if n_used not in looks:
            return f"it stopped after n={n_used} estimation draws, which is not a look of its plan"
        i = looks.index(n_used)
        c_hat = int(np.argmax(record.selection_counts))
        hits = record.estimation_counts[c_hat]
        certified = hits >= certify_at[i]
        if not certified and i < len(looks) - 1 and hits > futile_at[i]:
            return f"the test does not stop at n={n_used} with {hits} hits of class {c_hat} (it continues there)"
        for j in range(i):  # the hits at look j lie in [lo, hi] whatever the order of the draws
            lo, hi = max(0, hits - (n_used - looks[j])), min(hits, looks[j])
            if lo >= certify_at[j] or hi <= futile_at[j]:
                return f"with {hits} hits of class {c_hat} in {n_used} draws the test stops by look n={looks[j]} " \
                       f"already, whatever the order of the draws: it cannot have stopped at n={n_used}"
        decision = SequentialDecision.CERTIFIED if certified else SequentialDecision.NOT_CERTIFIED
        recorded = record.extra.get("decision", decision.value)
        if recorded != decision.value:
            return f"decision={recorded!r}, but its counts give {decision.value!r}"
        if record.extra.get("n_used", n_used) != n_used:
            return f"n_used={record.extra['n_used']!r} differs from its n={n_used}"
        if record.extra.get("sequential", self.method.value) != self.method.value:
            return f"sequential={record.extra['sequential']!r}, but the run's configuration has {self.method.value!r}"
        return _compare_row(record, c_hat if certified else -1, self.radius if certified else 0.0, self)


    def _check_anytime(self, record: ImageRecord) -> str | None:
        looks = anytime_looks(self.n)
        c_hat = int(np.argmax(record.selection_counts))
        hits = record.extra.get("look_hits")
        if not isinstance(hits, list) or len(hits) != len(looks) or not all(_is_count(h) for h in hits):
            return f"look_hits={hits!r}: an anytime record needs the hits of class {c_hat} at each of its " \
                   f"{len(looks)} looks"
        if hits[-1] != record.estimation_counts[c_hat]:
            return f"look_hits end at {hits[-1]}, but class {c_hat} has {record.estimation_counts[c_hat]} estimation hits"
        radius = AnytimeRadius(self.sigma, self.alpha, c_hat)
        try:
            for h, look in zip(hits, looks, strict=True):
                radius.update(h, look)
        except InputError as exc:
            return f"look_hits are not the hits of a sequence of draws: {exc}"
        cert = radius.certificate
        return _compare_row(record, cert.label, cert.radius, self) or _compare_extra(record, "p_a_lower",
                                                                                     cert.p_a_lower)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _compare_row(record: ImageRecord, label: int, radius: float | None, procedure: Procedure) -> str | None:
    row = record.row
    if row.predict != label:
        return f"predict={row.predict}, but its counts give {label}"
    if (row.radius is None) != (radius is None) or (radius is not None and not _close(row.radius, radius)):
        stats = f"sigma={procedure.sigma}, alpha={procedure.alpha}, n={record.n}"
        return f"radius={row.radius!r}, but its counts certify {radius!r} ({stats})"
    if row.correct != (row.label >= 0 and row.predict == row.label):
        return f"correct={int(row.correct)}, but label={row.label} and predict={row.predict}"
    return None


def _compare_extra(record: ImageRecord, name: str, value: float) -> str | None:
    got = record.extra.get(name, value)
    if not isinstance(got, (int, float)) or isinstance(got, bool) or not _close(float(got), value):
        return f"{name}={got!r}, but its counts give {value!r}"
    return None


class ProblemKind(enum.Enum):
    """What a problem is about: the chain, the configuration, a record's certificate, a TSV row, or a TSV row
    without a record (lost records: a resume redoes those rows)."""

    CHAIN = "chain"
    CONFIG = "config"
    RECORD = "record"
    ROW = "row"
    ORPHAN_ROW = "orphan_row"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a result file: ``where`` (a file and line), what, and its kind."""

    where: str
    message: str
    kind: ProblemKind = ProblemKind.RECORD

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class RunText:
    """A result file's text as read: ``tsv`` the TSV's whole lines (header first) in format ``kind``
    (``tsv_name`` None: a sidecar read alone), ``sidecar`` its sidecar's lines and records."""

    tsv_name: str | None
    tsv: list[str]
    kind: TsvKind
    sidecar_name: str
    sidecar: JsonLines


def check_run(run: RunText, procedure_needed: bool = True) -> tuple[RunHeader | None, list[Problem]]:
    """Every problem of a TSV and its sidecar (module doc), in file order; and the header, if readable.
    ``procedure_needed``: a configuration without statistics is a problem (``verify``, ``analyze``); a
    writer resuming a library user's run passes False (then the records are not recomputed)."""
    side, name = run.sidecar, run.sidecar_name
    if not side.records:
        return None, [Problem(f"{name} line 1", "no header record", ProblemKind.CONFIG)]
    try:
        header = RunHeader.from_json(side.records[0])
    except InputError as exc:
        return None, [Problem(f"{name} line 1", str(exc), ProblemKind.CONFIG)]
    problems = _check_config(header, run, procedure_needed)
    procedure = None if problems else Procedure.from_config(header.config)
    if header.chained:
        problems += [Problem(f"{name} line {b.line}", b.message, ProblemKind.CHAIN)
                     for b in check_chain(side.lines, side.records[1:], side.numbers[1:])]
    last, more = _check_records(side, name, procedure)
    problems += more
    if run.tsv_name is not None:
        problems += _check_rows(run, last)
    return header, problems


def _check_config(header: RunHeader, run: RunText, procedure_needed: bool) -> list[Problem]:
    where = f"{run.sidecar_name} line 1"
    config = header.config
    config_problem = functools.partial(Problem, kind=ProblemKind.CONFIG)
    if "seed" in config and config["seed"] != header.seed:
        return [config_problem(where, f"the header's seed {header.seed!r} differs from its configuration's "
                                      f"{config['seed']!r}")]
    try:
        procedure = Procedure.from_config(config)
    except InputError as exc:
        return [config_problem(where, str(exc))]
    if procedure is None:
        return [config_problem(where, "the configuration records no statistics (alpha, n, ...): its certificates "
                                      "cannot be recomputed")] if procedure_needed else []
    if procedure.tsv_kind is not run.kind and run.tsv_name is not None:
        return [config_problem(f"{run.tsv_name} line 1", f"a {run.kind.value} TSV, but the configuration is a "
                                                         f"{procedure.kind.value} run")]
    return []


def _check_records(side, name: str, procedure: Procedure | None):
    """{idx: (record, its line, the record after it)} of the last record of each image, and the problems."""
    last: dict[int, tuple[ImageRecord, int, dict | None]] = {}
    problems: list[Problem] = []
    records, numbers = side.records, side.numbers
    for k in range(1, len(records)):
        raw, number = records[k], numbers[k]
        if raw.get("record") != "image":
            continue
        try:
            record = ImageRecord.from_json(raw)
        except (DensePureError, KeyError, TypeError, ValueError) as exc:
            problems.append(Problem(f"{name} line {number}", f"not a valid image record ({exc})"))
            continue
        wrong = procedure.check(record) if procedure is not None else None
        if wrong:
            problems.append(Problem(f"{name} line {number}", f"image idx {record.row.idx}: {wrong}"))
        last[record.row.idx] = (record, number, records[k + 1] if k + 1 < len(records) else None)
    return last, problems


def _check_rows(run: RunText, last: Mapping[int, tuple[ImageRecord, int, dict | None]]) -> list[Problem]:
    problems, seen = [], set()
    for number, line in enumerate(run.tsv[1:], start=2):
        if not line.strip():
            continue
        where = f"{run.tsv_name} line {number}"
        try:
            idx = _parse_fields(line, run.kind)[0]
        except InputError as exc:
            problems.append(Problem(where, str(exc), ProblemKind.ROW))
            continue
        seen.add(idx)
        if idx not in last:
            problems.append(Problem(where, f"image idx {idx} has no record in {run.sidecar_name}: nothing "
                                           "vouches for this row", ProblemKind.ORPHAN_ROW))
            continue
        record, side_line, _ = last[idx]
        want = record.row.to_line()
        if line.rstrip("\r\n") != want.rstrip("\n"):
            problems.append(Problem(where, f"reads {line.rstrip()!r}, but its record ({run.sidecar_name} line "
                                           f"{side_line}) gives {want.rstrip()!r}", ProblemKind.ROW))
    for idx, (_, side_line, after) in last.items():
        if idx not in seen and after is not None and after.get("record") != "resume":
            problems.append(Problem(f"{run.sidecar_name} line {side_line}", f"image idx {idx} has a record but no "
                                    f"row in {run.tsv_name} (a row removed by hand?)", ProblemKind.ROW))
    return problems


class Status(enum.Enum):
    """A file's verdict: every check passed, a problem was found, or nothing could be checked (no sidecar)."""

    OK = "ok"
    FAILED = "FAILED"
    UNCHECKED = "unchecked"


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify_file` found: the status, one line saying why, and every problem."""

    path: str
    status: Status
    detail: str
    problems: tuple[Problem, ...] = ()

    def line(self) -> str:
        return f"{self.path}: {self.status.value}: {self.detail}"


def _pair(path: Path) -> tuple[Path | None, Path]:
    """(the TSV or None, its sidecar) of a path naming either."""
    if path.name.endswith(".jsonl") and not sidecar_path(path).exists():
        tsv = path.with_name(path.name[: -len(".jsonl")])
        return (tsv if tsv.exists() else None), path
    return path, sidecar_path(path)


def read_run_text(tsv: Path | None, side: Path) -> RunText:
    """Read a TSV (None: the sidecar alone) and its sidecar for :func:`check_run` (InputError if unreadable);
    a partial last line of either is an interrupted write and is left out."""
    check_input(side, "the sidecar")
    if tsv is None:
        lines, kind = [], TsvKind.CERTIFY
    else:
        lines, _ = _whole_lines(tsv)
        kind = _check_header(lines, tsv)
    sidecar = read_json_lines(side, drop_bad_last=True)
    return RunText(tsv.name if tsv is not None else None, lines, kind, side.name, sidecar)


def verify_file(path: str | Path, require_sidecar: bool = False) -> Verdict:
    """Check one result file (module doc) and say what was found. A TSV without a sidecar (Cohen's format)
    is read, but nothing beyond its format can be checked: UNCHECKED (FAILED with ``require_sidecar``)."""
    path = Path(path)
    tsv, side = _pair(path)
    try:
        if not side.exists():
            rows = read_results(tsv)
            detail = (f"no sidecar ({side.name}): {len(rows)} rows read in the {TsvKind.of_header(_whole_lines(tsv)[0][0]).value} "
                      "TSV format; nothing could be checked beyond the format")
            return Verdict(str(path), Status.FAILED if require_sidecar else Status.UNCHECKED, detail)
        run = read_run_text(tsv, side)
        header, problems = check_run(run)
    except InputError as exc:
        return Verdict(str(path), Status.FAILED, str(exc))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Verdict(str(path), Status.FAILED, f"{problems[0]}{more}", tuple(problems))
    images = sum(1 for r in run.sidecar.records[1:] if r.get("record") == "image")
    rows = sum(1 for line in run.tsv[1:] if line.strip())  # run.tsv is empty without a TSV
    chain = "the hash chain holds" if header.chained else \
        "format 1 (written before the hash chain): only what the counts imply could be checked"
    tsv_part = f"{rows} TSV rows agree with their records" if tsv is not None else "no TSV beside it"
    return Verdict(str(path), Status.OK, f"{images} certificates recomputed from their counts, {tsv_part}, {chain}")


def check_before_reading(tsv: str | Path) -> RunHeader | None:
    """For readers of results (``analyze``): if ``tsv`` has a sidecar, refuse the file (InputError naming the
    line) unless every check of :func:`check_run` passes, and return its header. Without a sidecar (Cohen's
    files) nothing is checked: None."""
    tsv = Path(tsv)
    side = sidecar_path(tsv)
    if not side.exists():
        return None
    header, problems = check_run(read_run_text(tsv, side))
    if problems:
        more = f"; {len(problems) - 1} more problems: `densepure verify {tsv}` lists them" if len(problems) > 1 else ""
        raise InputError(f"{problems[0]}: the file was changed after it was written, its numbers are not used{more}")
    return header
