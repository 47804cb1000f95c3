"""The records of a result file: one image's TSV row and sidecar record, the run header, versions.

The file formats are described in :mod:`densepure.results.files`, which reads and writes them.
"""

from __future__ import annotations

import enum
import json
import numbers
import platform
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from densepure.errors import ConfigError, InputError
from densepure.results.chain import CHAIN_FIELDS
from densepure.validation import is_int as _is_int

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
TSV_HEADER = "\t".join(TSV_COLUMNS)
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
PREDICT_HEADER = "\t".join(PREDICT_COLUMNS)
SIDECAR_FORMAT = "densepure-results"
SIDECAR_VERSION = 2  # 2: records carry the hash chain (densepure.results.chain); 1: files written before it
SIDECAR_VERSIONS = (1, 2)  # the versions this release reads (and resumes, each in its own version)
_RESERVED = frozenset(TSV_COLUMNS) | {"record", "n0", "n", "selection_counts", "estimation_counts"} | CHAIN_FIELDS
_TIMEDELTA = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def _coerce(row: Any, name: str, kind: type, low: float) -> None:
    """Set ``row.name`` to a plain int/float >= ``low`` (numpy scalars accepted), or raise."""
    value = getattr(row, name)
    ok_type = _is_int(value) if kind is int else \
        isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if not ok_type or not low <= value < float("inf"):
        allowed = f"an int >= {low:g}" if kind is int else f"a finite number >= {low:g}"
        raise InputError(f"{name} must be {allowed}, got {value!r}")
    object.__setattr__(row, name, kind(value))


class TsvKind(enum.Enum):
    """The two TSV formats of the ecosystem: Cohen's ``certify.py`` (``idx label predict radius correct time``)
    and ``predict.py`` (``idx label predict correct time``: PREDICT certifies no radius)."""

    CERTIFY = "certify"
    PREDICT = "predict"

    @property
    def columns(self) -> tuple[str, ...]:
        return TSV_COLUMNS if self is TsvKind.CERTIFY else PREDICT_COLUMNS

    @property
    def header(self) -> str:
        return TSV_HEADER if self is TsvKind.CERTIFY else PREDICT_HEADER

    @classmethod
    def of_header(cls, line: str) -> TsvKind | None:
        """The format whose header ``line`` is, or None."""
        fields = line.rstrip("\r\n").split("\t")
        return next((kind for kind in cls if list(kind.columns) == fields), None)


@dataclass(frozen=True)
class ResultRow:
    """One image: ``predict = -1`` abstains; ``radius`` (L2, [0,1] pixel units) >= 0, or None for a PREDICT
    row (no radius is certified); ``correct`` is ``predict == label``; ``time`` is wall seconds."""

    idx: int
    label: int
    predict: int
    radius: float | None
    correct: bool
    time: float

    def __post_init__(self) -> None:
        for name, kind, low in (("idx", int, 0), ("label", int, -1), ("predict", int, -1),
                                ("radius", float, 0.0), ("time", float, 0.0)):
            if name != "radius" or self.radius is not None:
                _coerce(self, name, kind, low)
        if self.correct not in (0, 1):
            raise InputError(f"correct must be 0/1 or a bool, got {self.correct!r}")
        object.__setattr__(self, "correct", bool(self.correct))

    @property
    def kind(self) -> TsvKind:
        """The file format this row belongs to."""
        return TsvKind.PREDICT if self.radius is None else TsvKind.CERTIFY

    def to_line(self) -> str:
        """The TSV line of its format (:attr:`kind`), newline included."""
        radius = "" if self.radius is None else f"{format_radius(self.radius)}\t"
        return f"{self.idx}\t{self.label}\t{self.predict}\t{radius}{int(self.correct)}\t{self.time:.4f}\n"


def format_radius(radius: float) -> str:
    """4 decimals, rounded towards zero: '0.49999' -> '0.4999' (never overstates a certificate)."""
    return str(Decimal(repr(float(radius))).quantize(Decimal("0.0001"), rounding=ROUND_FLOOR))


@dataclass(frozen=True)
class ImageRecord:
    """A row with its statistics: ``n0`` selection and ``n`` estimation samples, the per-class
    counts of each (empty when not kept), and JSON-able ``extra`` fields (names not reserved)."""

    row: ResultRow
    n0: int
    n: int
    selection_counts: tuple[int, ...] = ()
    estimation_counts: tuple[int, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.row, ResultRow):
            raise InputError(f"row must be a ResultRow, got {type(self.row).__name__}")
        _coerce(self, "n0", int, 0)
        _coerce(self, "n", int, 0)
        for name in ("selection_counts", "estimation_counts"):
            counts = tuple(getattr(self, name))
            if not all(_is_int(c) and c >= 0 for c in counts):
                raise InputError(f"{name} must be ints >= 0, got {counts!r}")
            object.__setattr__(self, name, tuple(int(c) for c in counts))
        clash = sorted(_RESERVED.intersection(self.extra))
        if clash:
            raise InputError(f"extra field names {clash} are reserved; allowed: any other name")
        object.__setattr__(self, "extra", dict(self.extra))
        _to_json(self.extra, "extra", InputError)

    def to_json(self) -> dict[str, Any]:
        row = self.row
        record = {"record": "image", "idx": row.idx, "label": row.label, "predict": row.predict,
                  "radius": row.radius, "correct": int(row.correct), "time": row.time,
                  "n0": self.n0, "n": self.n, "selection_counts": list(self.selection_counts),
                  "estimation_counts": list(self.estimation_counts)}
        record.update(self.extra)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ImageRecord:
        row = ResultRow(record["idx"], record["label"], record["predict"], record["radius"],
                        record["correct"], record["time"])
        extra = {k: v for k, v in record.items() if k not in _RESERVED}
        return cls(row, record["n0"], record["n"], tuple(record["selection_counts"]),
                   tuple(record["estimation_counts"]), extra)


@dataclass(frozen=True)
class Versions:
    """Software that produced a run."""

    python: str
    torch: str
    numpy: str
    densepure: str
    platform: str

    @classmethod
    def current(cls) -> Versions:
        import numpy
        import torch  # imported here: reading results needs no torch

        from densepure import __version__
        return cls(platform.python_version(), torch.__version__, numpy.__version__, __version__,
                   platform.platform())


@dataclass(frozen=True)
class RunHeader:
    """The sidecar's first record: the run's configuration (JSON-normalized), seed and versions, and the
    sidecar's ``format_version`` (:data:`SIDECAR_VERSIONS`; new files get :data:`SIDECAR_VERSION`)."""

    config: Mapping[str, Any]
    seed: int
    versions: Versions
    created: str
    format_version: int = SIDECAR_VERSION

    def __post_init__(self) -> None:
        if self.format_version not in SIDECAR_VERSIONS:
            raise InputError(f"sidecar format_version {self.format_version!r} is not one this densepure reads "
                             f"({', '.join(map(str, SIDECAR_VERSIONS))}): was it written by a newer release?")

    @property
    def chained(self) -> bool:
        """True when the sidecar's records carry the hash chain (format version 2 and later)."""
        return self.format_version >= 2

    def to_json(self) -> dict[str, Any]:
        return {"record": "header", "format": SIDECAR_FORMAT, "format_version": self.format_version,
                "config": dict(self.config), "seed": self.seed,
                "versions": asdict(self.versions), "created": self.created}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunHeader:
        if record.get("record") != "header" or record.get("format") != SIDECAR_FORMAT:
            raise InputError(f"the first sidecar record must be a {SIDECAR_FORMAT} header, got "
                             f"{str(record)[:120]}")
        try:
            return cls(dict(record["config"]), record["seed"], Versions(**record["versions"]),
                       record["created"], record.get("format_version", 1))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed sidecar header ({exc!r}): {str(record)[:120]}") from exc


@dataclass(frozen=True)
class Sidecar:
    """A parsed sidecar: the header, the last record of each index (file order), resume times."""

    header: RunHeader
    records: tuple[ImageRecord, ...]
    resumed_at: tuple[str, ...]


class IfExists(enum.Enum):
    """What :func:`open_results` does with an existing result file."""

    RESUME = "resume"  # check the configuration, skip finished images, append
    OVERWRITE = "overwrite"  # start again from an empty file
    FAIL = "fail"  # refuse (InputError)


class CorrectColumn(enum.Enum):
    """How to read the ``correct`` column. AUTO: per-row 0/1, unless the values are non-decreasing
    integers exceeding 1 -- the running total the DDS script writes -- then differenced to 0/1.
    (A running total that never exceeds 1 cannot be told apart: name RUNNING_TOTAL.)"""

    AUTO = "auto"
    PER_ROW = "per_row"
    RUNNING_TOTAL = "running_total"


def _to_json(value: Any, what: str, error: type[Exception] = ConfigError) -> str:
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be JSON-serializable (str, int, float, bool, None, lists, "
                    f"mappings with str keys; no NaN), got: {exc}") from exc
