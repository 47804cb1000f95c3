"""The one report of every ``densepure bench`` subcommand: versioned JSON, every number with its unit.

A report (``report.json``) is an object with these keys (schema ``densepure-bench-report``, version
:data:`SCHEMA_VERSION`; a reader refuses other versions and malformed files with one line):

* ``schema``, ``version``: ``"densepure-bench-report"``, 1;
* ``subcommand``: ``throughput``, ``latency``, ``serve``, ``sequential``, ``kernels``, ``models`` or ``scaling``;
* ``partial``: true when the run was interrupted (Ctrl-C) or failed, and the report holds what was measured
  so far (a failure's message is the last note);
* ``started_at``, ``finished_at``: UTC times (ISO 8601); ``command``: the command line (argv);
* ``environment``: the machine and its software (:mod:`densepure.bench.environment`);
* ``configuration``: every option of the run by its flag's field name (models, smoothing, statistics,
  execution, the benchmark's own);
* ``metrics``: ``{name: {"value": number, "unit": unit, "description": text}}``; names are dotted by the
  side measured (``engine.draws_per_s``, ``official.draws_per_s``, ``ratio.draws_per_s``), units from
  :class:`Unit`;
* ``series``: ``{name: {"columns": [{"name", "unit"}], "rows": [[...]]}}``: per-request latencies, the
  concurrency sweep, per-cell results;
* ``loadgen``: ``[{"scenario", "settings", "result", "checks", "metrics", "directory"}]``: each LoadGen
  run's own verdict (``VALID``/``INVALID``) and checks, its summary files under ``directory``;
* ``notes``: sentences a reader needs (what a number includes, why one is missing).

This module is pure (no torch): :class:`ReportBuilder` collects a run's numbers as it goes, so an
interrupted run still has a report (``partial``), and tells a ``listener`` each figure the moment it is
measured (``densepure bench --progress-json`` prints them as ``{"partial": {name: value}}`` lines: a harness
that kills a run keeps what it measured; :data:`PARTIAL_KEY`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from densepure.choices import Choice
from densepure.errors import InputError

SCHEMA = "densepure-bench-report"
SCHEMA_VERSION = 1
SUBCOMMANDS = ("throughput", "latency", "serve", "sequential", "kernels", "models", "scaling")
PARTIAL_KEY = "partial"  # a progress line is {"partial": {metric name: value, ..., "notes": [...]}}


class Unit(Choice, what="unit"):
    """Every unit a bench report uses."""

    COUNT = "count"
    RATIO = "x"  # B / A of the same quantity
    FRACTION = "fraction"
    SECONDS = "s"
    MICROSECONDS = "us"
    BYTES = "bytes"
    DRAWS = "draws"
    DRAWS_PER_S = "draws/s"
    IMAGES_PER_HOUR = "images/h"
    ROWS_PER_S = "rows/s"
    ROWS_PER_CALL = "rows/call"
    ROWS_PER_DRAW = "rows/draw"
    REQUESTS_PER_S = "requests/s"
    QUERIES_PER_S = "queries/s"
    GB_PER_S = "GB/s"
    TFLOP_PER_S = "TFLOP/s"
    GFLOP_PER_ROW = "GFLOP/row"
    IMAGES_PER_S = "images/s"
    RADIUS = "L2"  # a certified radius, in the images' [0, 1] pixel units


@dataclass(frozen=True)
class Metric:
    """One number: ``value`` (finite), its ``unit``, what it is."""

    value: float
    unit: Unit
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", Unit.parse(self.unit))
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise InputError(f"a metric's value must be a finite number, got {self.value!r}")

    def to_json(self) -> dict:
        return {"value": self.value, "unit": self.unit.value, "description": self.description}


@dataclass(frozen=True)
class Series:
    """A table of numbers: ``columns`` (name, unit) and ``rows``, each a value per column (None: absent)."""

    columns: tuple[tuple[str, Unit], ...]
    rows: tuple[tuple[float | None, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple((str(n), Unit.parse(u)) for n, u in self.columns))
        object.__setattr__(self, "rows", tuple(tuple(row) for row in self.rows))
        for row in self.rows:
            if len(row) != len(self.columns):
                raise InputError(f"a series row has {len(row)} values for {len(self.columns)} columns")
            for value in row:
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not math.isfinite(value)):
                    raise InputError(f"series values must be finite numbers or null, got {value!r}")

    def column(self, name: str) -> list[float | None]:
        index = [n for n, _ in self.columns].index(name)
        return [row[index] for row in self.rows]

    def to_json(self) -> dict:
        return {"columns": [{"name": n, "unit": u.value} for n, u in self.columns], "rows": [list(r) for r in self.rows]}


@dataclass(frozen=True)
class LoadGenRun:
    """One LoadGen test: its scenario and settings, LoadGen's verdict (``VALID``/``INVALID``) and the checks
    behind it (min duration, min queries, latency bound / early stopping), the numbers of its summary, and
    the directory of its own log files (relative to the report)."""

    scenario: str
    settings: Mapping[str, object]
    result: str
    checks: Mapping[str, bool]
    metrics: Mapping[str, float]
    directory: str

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "settings": dict(self.settings), "result": self.result,
                "checks": dict(self.checks), "metrics": dict(self.metrics), "directory": self.directory}


@dataclass(frozen=True)
class Report:
    """A whole report (module doc). Build one with :class:`ReportBuilder`; read one with :func:`read_report`."""

    subcommand: str
    command: tuple[str, ...]
    environment: Mapping[str, object]
    configuration: Mapping[str, object]
    metrics: Mapping[str, Metric]
    series: Mapping[str, Series] = field(default_factory=dict)
    loadgen: tuple[LoadGenRun, ...] = ()
    notes: tuple[str, ...] = ()
    partial: bool = False
    started_at: str = ""
    finished_at: str = ""

    def __post_init__(self) -> None:
        if self.subcommand not in SUBCOMMANDS:
            raise InputError(f"subcommand must be one of {', '.join(SUBCOMMANDS)}, got {self.subcommand!r}")

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "subcommand": self.subcommand, "partial": self.partial,
                "started_at": self.started_at, "finished_at": self.finished_at, "command": list(self.command),
                "environment": dict(self.environment), "configuration": dict(self.configuration),
                "metrics": {k: m.to_json() for k, m in self.metrics.items()},
                "series": {k: s.to_json() for k, s in self.series.items()},
                "loadgen": [run.to_json() for run in self.loadgen], "notes": list(self.notes)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False, allow_nan=False) + "\n"


_KEYS = {"schema": str, "version": int, "subcommand": str, "partial": bool, "started_at": str, "finished_at": str,
         "command": list, "environment": dict, "configuration": dict, "metrics": dict, "series": dict,
         "loadgen": list, "notes": list}


def report_from_json(obj: object, name: str = "report") -> Report:
    """A :class:`Report` from its JSON object; :class:`InputError` naming what is wrong (one line)."""
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise InputError(f"{name} is not a densepure bench report (no \"schema\": \"{SCHEMA}\")")
    if obj.get("version") != SCHEMA_VERSION:
        raise InputError(f"{name} is a bench report of version {obj.get('version')!r}; this densepure reads "
                         f"version {SCHEMA_VERSION}")
    for key, kind in _KEYS.items():
        if not isinstance(obj.get(key), kind) or (kind is int and isinstance(obj.get(key), bool)):
            raise InputError(f"{name}: {key!r} must be a JSON {kind.__name__}, got {obj.get(key)!r:.80}")
    try:
        metrics = {k: Metric(m["value"], m["unit"], m.get("description", "")) for k, m in obj["metrics"].items()}
        series = {k: Series(tuple((c["name"], c["unit"]) for c in s["columns"]), tuple(map(tuple, s["rows"])))
                  for k, s in obj["series"].items()}
        loadgen = tuple(LoadGenRun(r["scenario"], r["settings"], r["result"], r["checks"], r["metrics"],
                                   r["directory"]) for r in obj["loadgen"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{name}: a metric, series or loadgen entry is malformed ({type(exc).__name__}: {exc})") \
            from exc
    except ValueError as exc:  # a unit or value the records refuse, with their one-line message
        raise InputError(f"{name}: {exc}") from exc
    return Report(obj["subcommand"], tuple(obj["command"]), obj["environment"], obj["configuration"], metrics,
                  series, loadgen, tuple(obj["notes"]), obj["partial"], obj["started_at"], obj["finished_at"])


def read_report(path: str | Path) -> Report:
    """The report in ``path`` (a report.json, or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the report {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    return report_from_json(obj, str(path))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


Listener = Callable[[dict[str, object]], None]


def progress_line(figures: Mapping[str, object]) -> str:
    """One progress line: ``{"partial": figures}`` as JSON (what a listener of ``--progress-json`` prints)."""
    return json.dumps({PARTIAL_KEY: dict(figures)}, allow_nan=False)


class ReportBuilder:
    """Collects a run's numbers as they are measured; :meth:`report` freezes them (``partial`` when the
    run was interrupted). Adding a metric twice replaces it (a later repeat's median). ``listener``, when
    given, is called with ``{name: value}`` for each metric as it is added, and with ``{"notes": [...]}``
    (every note so far) for each new note: merged in order, the calls give the report's metrics and notes."""

    def __init__(self, subcommand: str, command: Sequence[str], configuration: Mapping[str, object],
                 listener: Listener | None = None):
        self.subcommand, self.command, self.configuration = subcommand, tuple(command), dict(configuration)
        self.listener = listener
        self.environment: dict[str, object] = {}
        self.metrics: dict[str, Metric] = {}
        self.series: dict[str, Series] = {}
        self.loadgen: list[LoadGenRun] = []
        self.notes: list[str] = []
        self.started_at = utc_now()

    def metric(self, name: str, value: float, unit: Unit | str, description: str = "") -> None:
        self.metrics[name] = Metric(float(value) if not isinstance(value, int) else value, unit, description)
        if self.listener is not None:
            self.listener({name: self.metrics[name].value})

    def ratio(self, name: str, numerator: str, denominator: str, description: str = "") -> None:
        """``name`` = metric ``numerator`` / metric ``denominator`` (same unit), when both are there."""
        top, bottom = self.metrics.get(numerator), self.metrics.get(denominator)
        if top is not None and bottom is not None and bottom.value:
            self.metric(name, top.value / bottom.value, Unit.RATIO, description or f"{numerator} / {denominator}")

    def add_series(self, name: str, columns: Sequence[tuple[str, Unit | str]],
                   rows: Sequence[Sequence[float | None]]) -> None:
        self.series[name] = Series(tuple(columns), tuple(tuple(r) for r in rows))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            if self.listener is not None:
                self.listener({"notes": list(self.notes)})

    def report(self, partial: bool = False) -> Report:
        return Report(self.subcommand, self.command, self.environment, self.configuration, dict(self.metrics),
                      dict(self.series), tuple(self.loadgen), tuple(self.notes), partial, self.started_at,
                      utc_now())
