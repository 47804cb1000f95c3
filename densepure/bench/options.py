"""The options of a ``densepure bench`` run: the job it measures and the benchmark's own records.

:class:`BenchRun` composes the :class:`~densepure.certify.options.JobOptions` of the run (the same models,
backend, precision, kernels, smoothing, statistics and data as ``densepure certify``; built by
:meth:`JobOptions.build`, so a flag means the same in both commands) and the benchmark's records:

* :class:`BenchOptions` - where the report goes, overwrite, progress lines, repeats, torch threads;
* :class:`LoadOptions` - how queries arrive: a plain loop, closed-loop clients at concurrency levels, or an
  MLPerf LoadGen scenario with its settings;
* :class:`ThroughputOptions` - the official baseline, its batch and precision, the peak for MFU, random weights;
* :class:`ServeTarget` - an Open Inference Protocol v2 server: URL, model, request parameters, timeout;
* :class:`KernelOptions` - the tolerance of the kernels' reference check;
* :class:`SimulationOptions` - the sequential tests on a Bernoulli oracle (no model);
* :class:`ScalingOptions` - Ray worker counts.

Every leaf name is unique across the records (and the job's), so one flat mapping builds a run:
:meth:`BenchRun.build` (the CLI's parsed flags go there, as certify's go to :meth:`JobOptions.build`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from densepure.certify.options import JobOptions, route_fields
from densepure.choices import Choice
from densepure.errors import ConfigError
from densepure.precision import Precision
from densepure.validation import is_int, is_real


class Scenario(Choice, what="scenario"):
    """How queries arrive (MLPerf Inference's scenarios; driven by LoadGen)."""

    SINGLE_STREAM = "single-stream"  # one query at a time, the next when the last is answered: tail latency
    SERVER = "server"  # Poisson arrivals at a target rate, under a latency bound
    OFFLINE = "offline"  # every query at once: throughput


class Baseline(Choice, what="baseline"):
    OFFICIAL = "official"  # the published DensePure loop: K full passes, one per reverse seed, fp32 eager


PROCEDURES = ("default", "geometric", "betting", "betting-cs", "betting-cs-mix")


def _positive(name: str, value: object, integer: bool = False, zero: bool = False) -> None:
    ok = is_int(value) if integer else is_real(value) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} {'>=' if zero else '>'} 0, got {value!r}")


def _positive_tuple(name: str, values: tuple, integer: bool = False) -> tuple:
    values = tuple(values)
    if not values:
        raise ConfigError(f"{name} needs at least one value")
    for value in values:
        _positive(name, value, integer)
    return values


@dataclass(frozen=True)
class BenchOptions:
    """``output``: the report directory (None: print only); ``overwrite``: replace a report there;
    ``progress_json``: print each figure as a ``{"partial": {name: value}}`` line the moment it is measured
    (:mod:`densepure.bench.report`); ``repeats``: measurements of each side (alternating, medians reported);
    ``threads``: torch threads (0: torch's default)."""

    output: str | None = None
    overwrite: bool = False
    progress_json: bool = False
    repeats: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        _positive("repeats", self.repeats, integer=True)
        _positive("threads", self.threads, integer=True, zero=True)
        if self.output is not None and not str(self.output).strip():
            raise ConfigError("--output must name a directory, got an empty string")


@dataclass(frozen=True)
class LoadOptions:
    """``scenario``: None runs the plain loop; a :class:`Scenario` drives the queries with LoadGen.
    ``target_qps``: the Server scenario's arrival rates (one LoadGen run each) or the Offline scenario's
    expected rate; ``latency_bound_s``: the Server scenario's bound (its 99th percentile); ``min_duration_s``,
    ``max_duration_s`` (0: none), ``min_queries``: LoadGen's run length (its validity checks these);
    ``image_slots``: images a local engine holds at once (None: 1 one image at a time, 64 otherwise);
    without a scenario, ``concurrency``: closed-loop client counts, one level each (None: the subcommand's
    default), with ``requests`` per level (None: 2 per client, at least 4)."""

    scenario: Scenario | None = None
    concurrency: tuple[int, ...] | None = None
    requests: tuple[int, ...] | None = None
    target_qps: tuple[float, ...] = (1.0,)
    latency_bound_s: float = 60.0
    min_duration_s: float = 10.0
    max_duration_s: float = 0.0
    min_queries: int = 1
    image_slots: int | None = None

    def __post_init__(self) -> None:
        if self.scenario is not None:
            object.__setattr__(self, "scenario", Scenario.parse(self.scenario))
        object.__setattr__(self, "target_qps", _positive_tuple("target_qps", self.target_qps))
        _positive("latency_bound_s", self.latency_bound_s)
        _positive("min_duration_s", self.min_duration_s, zero=True)
        _positive("max_duration_s", self.max_duration_s, zero=True)
        _positive("min_queries", self.min_queries, integer=True)
        if self.image_slots is not None:
            _positive("image_slots", self.image_slots, integer=True)
        if self.max_duration_s and self.max_duration_s < self.min_duration_s:
            raise ConfigError(f"max_duration_s ({self.max_duration_s:g}) must be >= min_duration_s "
                              f"({self.min_duration_s:g}) or 0 (no limit)")
        if self.concurrency is not None:
            object.__setattr__(self, "concurrency", _positive_tuple("concurrency", self.concurrency, integer=True))
        if self.requests is not None:
            object.__setattr__(self, "requests", _positive_tuple("requests", self.requests, integer=True))
            if self.concurrency is not None:
                self.levels(self.concurrency)

    def slots(self) -> int:
        """Images in a local engine at once."""
        if self.image_slots is not None:
            return self.image_slots
        one_at_a_time = self.scenario is Scenario.SINGLE_STREAM or (self.scenario is None and self.concurrency is None)
        return 1 if one_at_a_time else 64

    def levels(self, default: tuple[int, ...]) -> list[tuple[int, int]]:
        """(clients, requests) per closed-loop level (``default`` client counts when none were given)."""
        clients = self.concurrency or default
        counts = self.requests or tuple(max(4, 2 * c) for c in clients)
        if len(counts) != len(clients):
            raise ConfigError(f"give one --requests count per --concurrency level: {len(clients)} levels "
                              f"({' '.join(map(str, clients))}), {len(counts)} counts")
        return list(zip(clients, counts, strict=True))


@dataclass(frozen=True)
class ThroughputOptions:
    """``baseline``: also run the official loop on the same images and seeds; ``official_batch``: its
    draws per batch (None: 100, or 16 for imagenet256, as published); ``official_precision``: the
    official loop's models cast to this precision, computing with its float32 math (fp32, as published:
    exact float32; tf32; fp16; bf16); ``peak_tflops``: the device's peak for MFU (None: the table's for a
    known GPU and the precision); ``random_weights``: the preset's UNet and a classifier of the papers'
    size with seeded random weights (no checkpoint needed)."""

    baseline: Baseline | None = None
    official_batch: int | None = None
    official_precision: Precision = Precision.FP32
    peak_tflops: float | None = None
    random_weights: bool = False

    def __post_init__(self) -> None:
        if self.baseline is not None:
            object.__setattr__(self, "baseline", Baseline.parse(self.baseline))
        if self.official_batch is not None:
            _positive("official_batch", self.official_batch, integer=True)
        object.__setattr__(self, "official_precision", Precision.parse(self.official_precision))
        if not self.official_precision.torch_compute:
            raise ConfigError(f"the official loop runs torch modules: --official-precision "
                              f"{self.official_precision.value} is not one of fp32, tf32, fp16, bf16")
        if self.peak_tflops is not None:
            _positive("peak_tflops", self.peak_tflops)


@dataclass(frozen=True)
class ServeTarget:
    """An Open Inference Protocol v2 server: ``url``, the ``model`` name (None: the preset's), request
    ``params`` (``key=value`` strings: mode, radius, n, ...) and the ``timeout_s`` of one request (the
    closed-loop levels are :class:`LoadOptions`')."""

    url: str | None = None
    model: str | None = None
    params: tuple[str, ...] = ()
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _positive("timeout_s", self.timeout_s)
        object.__setattr__(self, "params", tuple(self.params))
        for item in self.params:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        if self.url is not None and not str(self.url).startswith(("http://", "https://")):
            raise ConfigError(f"the server URL must start with http:// or https://, got {self.url!r}")

    def parameters(self) -> dict[str, object]:
        """``params`` as a JSON object: numbers and booleans parsed, anything else a string."""
        out: dict[str, object] = {}
        for item in self.params:
            key, text = (part.strip() for part in item.split("=", 1))
            out[key] = _json_scalar(text)
        return out


def _json_scalar(text: str) -> object:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class SimulationOptions:
    """The sequential tests on Bernoulli(p) streams: ``reps`` per cell, each ``p_values`` x ``radii`` (in
    units of sigma) x ``n_max`` cell, for each of ``procedures``."""

    reps: int = 1000
    p_values: tuple[float, ...] = (0.80, 0.85, 0.90, 0.95, 0.99, 0.999, 0.9999)
    radii: tuple[float, ...] = (1.0, 2.0)
    n_max: tuple[int, ...] = (10_000, 100_000)
    procedures: tuple[str, ...] = PROCEDURES

    def __post_init__(self) -> None:
        _positive("reps", self.reps, integer=True)
        object.__setattr__(self, "p_values", _positive_tuple("p", self.p_values))
        if not all(0 < p < 1 for p in self.p_values):
            raise ConfigError(f"p must be in (0, 1), got {self.p_values!r}")
        object.__setattr__(self, "radii", _positive_tuple("r", self.radii))
        object.__setattr__(self, "n_max", _positive_tuple("n_max", self.n_max, integer=True))
        unknown = sorted(set(self.procedures) - set(PROCEDURES))
        if unknown or not self.procedures:
            raise ConfigError(f"procedures must be among {', '.join(PROCEDURES)}, got {list(self.procedures)!r}")
        object.__setattr__(self, "procedures", tuple(self.procedures))


@dataclass(frozen=True)
class ScalingOptions:
    """A Ray scaling run: the ``workers`` counts measured in turn, ``worker_threads`` torch threads each,
    and whether to time one process without Ray (``single``)."""

    workers: tuple[int, ...] = (1, 2)
    worker_threads: int = 1
    single: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", _positive_tuple("workers", self.workers, integer=True))
        _positive("worker_threads", self.worker_threads, integer=True)


@dataclass(frozen=True)
class KernelOptions:
    """``check_scale``: how many times the dtype's tolerance a kernel may differ from its torch reference
    before it is refused untimed (whole UNet forwards: 10 times that; :mod:`densepure.bench.kernels`)."""

    check_scale: float = 4.0

    def __post_init__(self) -> None:
        _positive("check_scale", self.check_scale)


_RECORDS = {"bench": BenchOptions, "load": LoadOptions, "throughput": ThroughputOptions, "target": ServeTarget,
            "simulation": SimulationOptions, "scaling": ScalingOptions, "kernels": KernelOptions}


@dataclass(frozen=True)
class BenchRun:
    """A benchmark: the measured ``job`` and the records of the module doc."""

    job: JobOptions = field(default_factory=JobOptions)
    bench: BenchOptions = field(default_factory=BenchOptions)
    load: LoadOptions = field(default_factory=LoadOptions)
    throughput: ThroughputOptions = field(default_factory=ThroughputOptions)
    target: ServeTarget = field(default_factory=ServeTarget)
    simulation: SimulationOptions = field(default_factory=SimulationOptions)
    scaling: ScalingOptions = field(default_factory=ScalingOptions)
    kernels: KernelOptions = field(default_factory=KernelOptions)

    @classmethod
    def build(cls, **values: object) -> BenchRun:
        """A run from flat option names: the benchmark records' own, and every other name to
        :meth:`JobOptions.build` (a name neither knows is a TypeError there, never dropped). With
        ``random_weights`` and no classifier, the job names the papers' classifier of the preset (whose
        architecture the random one has)."""
        own = {f.name for record in _RECORDS.values() for f in fields(record)}
        parts = route_fields({k: v for k, v in values.items() if k in own}, _RECORDS)
        job = {k: v for k, v in values.items() if k not in own}
        if parts["throughput"].get("random_weights") and job.get("classifier") is None:
            from densepure.models.sources import PAPERS_CLASSIFIERS

            preset = job.get("preset") or "digits"
            if preset in PAPERS_CLASSIFIERS:
                job["classifier"] = PAPERS_CLASSIFIERS[preset]
        records = {key: _RECORDS[key](**given) for key, given in parts.items()}
        return cls(job=JobOptions.build(**job), **records)

    def replace(self, **values: object) -> BenchRun:
        """A copy with flat option names changed, everything re-validated."""
        own = {f.name for record in _RECORDS.values() for f in fields(record)}
        parts = route_fields({k: v for k, v in values.items() if k in own}, _RECORDS)
        job = {k: v for k, v in values.items() if k not in own}
        records = {key: replace(getattr(self, key), **given) if given else getattr(self, key)
                   for key, given in parts.items()}
        return BenchRun(job=self.job.replace(**job) if job else self.job, **records)

    def flat(self) -> dict[str, object]:
        """Every leaf option by name, the job's included (the inverse of :meth:`build`)."""
        out = self.job.flat()
        out.update({f.name: getattr(getattr(self, key), f.name) for key, record in _RECORDS.items()
                    for f in fields(record)})
        return out

    def configuration(self, keys: tuple[str, ...] | None = None) -> dict[str, object]:
        """The flat options as JSON values (enums by value, tuples as lists); ``keys``: only those."""
        out = {}
        for name, value in self.flat().items():
            if keys is not None and name not in keys:
                continue
            if hasattr(value, "value"):
                value = value.value
            elif isinstance(value, tuple):
                value = [v.value if hasattr(v, "value") else v for v in value]
            out[name] = value
        return out
