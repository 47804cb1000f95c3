"""The options of a certify/predict job: every user-level setting, validated before any model loads.

:class:`JobOptions` composes records that each say what they are and validate themselves:

* :class:`ModelSource` - which diffusion model and classifier (preset, checkpoint, classifier, resize);
* :class:`SmoothingOptions` - the base classifier (mode, sigma, K, b, t* rule, the noise and its grid);
* :class:`SamplingOptions` - the statistics (n0, n, alpha, radius and its test, anytime budget, predict,
  also-K, seed);
* :class:`ExecutionOptions` - how it runs (backend, artifacts, device, precision, batch, kernels, ...);
* :class:`DataSelection` - which images (data, skip, max);
* :class:`OutputOptions` - where the results go (output, overwrite);
* :class:`ClusterOptions` - a Ray run (ray, workers, split draws).

Every leaf field name is unique across the records, so one flat mapping of names to values (the CLI's
parsed flags, or a library user's keywords) builds a job: :meth:`JobOptions.build`. The CLI has no
mapping of its own: a flag's ``dest`` is the field it sets (:mod:`densepure.cli.arguments`).

Unset statistics take the preset's defaults (:data:`PRESET_DEFAULTS`). Unset models take their
defaults: with exported graphs (``--artifacts``), the preset, classifier and resize their manifests
record (flags that are given must agree with them); otherwise the digits preset, its classifier for it
(other presets need ``--classifier``), and the resize of :func:`~densepure.models.sources.default_resize`.

The sidecar's configuration (:meth:`JobOptions.record`) is the flat mapping of the recorded leaf fields,
the same keys as files written before the records were split, so those runs still resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from densepure.certify.tasks import AnytimeTask, CertifyTask, PredictTask, SequentialTask, Task
from densepure.diffusion import Mode, NoiseKind, NoiseSchedule, SmoothingConfig, TStarRule
from densepure.diffusion.smoothing import MAX_LEVELS
from densepure.engine.backends.select import BackendKind, check_backend_options, exported_models, same_classifier
from densepure.errors import ConfigError
from densepure.kernels import CompileMode, KernelChoice
from densepure.models.classifiers import ResizeChoice
from densepure.models.sources import ClassifierSpec, check_resize, default_resize, required_classifier
from densepure.noise import SEED_BITS
from densepure.paths import check_input
from densepure.precision import Precision
from densepure.stats.boundary import DEFAULT_METHOD
from densepure.stats.cohen import validate_alpha
from densepure.stats.sequential import SequentialMethod
from densepure.validation import is_int, is_real, validate_sigma

# Settings that do not change any label, so they are not recorded and a run may resume under others:
# noise is keyed by identity, not by batch layout; engines in the cache are keyed by content; look-ahead
# only changes which draws run past a stopping look; ``skip`` and ``max`` only select which images run
# (each image's noise is keyed by its own index); the kernels give the same counts whichever runs (tested
# against each other in tests/kernels); a Ray run computes the same counts as one process (tested in
# tests/distributed). ``device`` is recorded by the job as the device type it resolves to
# (densepure.certify.job.device_type), which is what can change a count.
_NOT_RECORDED = ("batch_size", "output", "overwrite", "plot", "cache_dir", "cuda_graphs", "kernels", "skip", "max", "ray",
                 "workers", "split_draws", "lookahead")


# Unset options take the preset's defaults. digits, from benchmarks/results/table1_digits.md (100 test
# images, N=10,000): at sigma=0.25 DensePure b=2 reaches ACR 0.535 / 0.567 / 0.582 with K = 1 / 3 / 10,
# so K=10; sigma=0.5 loses accuracy at every radius the main job can certify. n=1000 allows radii up to
# 0.62 (sigma * PhiInv(alpha ** (1/n))) and keeps the job near a minute on 2 CPU cores (20 images spread
# over the test split). Real checkpoints: the papers' protocol (N0=100, N=100,000, K=10, b=2).
PRESET_DEFAULTS = {
    "digits": {"sigma": 0.25, "n0": 50, "n": 1000, "num_chains": 10, "steps": 2, "skip": 22, "max": 20},
    None: {"sigma": 0.25, "n0": 100, "n": 100_000, "num_chains": 10, "steps": 2, "skip": 1, "max": -1},
}


ALSO_K_NEEDS = ("--also-K needs --mode densepure with a fixed N (not --radius): the k-chain counts are read from the "
                "same draws")


def _optional_int(name: str, value: object, low: int) -> None:
    if value is not None and (not is_int(value) or value < low):
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _optional_real(name: str, value: object, what: str) -> None:
    if value is not None and (not is_real(value) or not math.isfinite(value) or not value >= 0):
        raise ConfigError(f"{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class ModelSource:
    """Which models: ``preset`` (None: the preset of --artifacts, else digits), the diffusion ``checkpoint``,
    the ``classifier`` (None: the one of --artifacts, else digits for the digits preset) and how its input
    is resized (None: --artifacts', else :func:`default_resize`; stays None when the classifier has none)."""

    preset: str | None = None
    checkpoint: str | None = None
    classifier: str | None = None
    resize: ResizeChoice | None = None

    def __post_init__(self) -> None:
        if self.resize is not None:
            object.__setattr__(self, "resize", ResizeChoice.parse(self.resize))
        if self.checkpoint is not None:  # unusable: one line now, before a server listens or a job loads anything
            check_input(self.checkpoint, "--checkpoint")

    def resolved(self, execution: ExecutionOptions) -> ModelSource:
        """Every unset model filled in (module doc); explicit ones checked against what they must match."""
        if execution.backend is not BackendKind.TORCH:
            return self._from_artifacts(execution)
        from densepure.models.presets import get_preset

        preset = self.preset or "digits"
        get_preset(preset)  # unknown: named as such, with the list, before anything else is said about it
        classifier = self.classifier or required_classifier(preset)
        resize = check_resize(ClassifierSpec.parse(classifier), self.resize) or default_resize(
            preset, ClassifierSpec.parse(classifier))
        return replace(self, preset=preset, classifier=classifier, resize=resize)

    def _from_artifacts(self, execution: ExecutionOptions) -> ModelSource:
        """The models of an export directory, by its manifests: ``--artifacts`` alone is enough."""
        found, out = exported_models(execution.artifacts, execution.precision), execution.artifacts
        preset = self.preset or found.preset
        if preset is None:
            raise ConfigError(f"the graphs in {out} do not record their preset: add --preset")
        if found.preset is not None and preset != found.preset:
            raise ConfigError(f"--preset {preset} was given, but the graphs in {out} were exported for preset "
                              f"{found.preset!r}: drop --preset (the artifacts name theirs), or export the {preset} "
                              f"models there: `densepure export --preset {preset} ... --out {out}`")
        if self.classifier is not None and not same_classifier(self.classifier, found.classifier):
            raise ConfigError(f"--classifier {self.classifier} was given, but the classifier graph in {out} was "
                              f"exported from {found.classifier!r}: drop --classifier (the artifacts record theirs), "
                              f"or export it there: `densepure export --preset {preset} --classifier "
                              f"{self.classifier} --out {out}`")
        if self.resize is not None and (found.resize is None or self.resize.value != found.resize):
            baked = f"was exported with --resize {found.resize}" if found.resize else \
                "does not record its resize (exported before --resize, or from a library classifier)"
            raise ConfigError(f"--resize {self.resize.value} was given, but the classifier graph in {out} {baked}: "
                              f"drop --resize (it is inside the graph), or export again with --resize "
                              f"{self.resize.value}")
        resize = None if found.resize is None else ResizeChoice.parse(found.resize)
        return replace(self, preset=preset, classifier=self.classifier or found.classifier, resize=resize)


@dataclass(frozen=True)
class SmoothingOptions:
    """The base classifier: ``mode``, ``sigma`` (None: the preset's), and for DensePure ``num_chains`` (K)
    and ``steps`` (b) (None: the preset's; absent for the other modes), the t* rule, and the ``noise``
    (None: sound where the grid is known, float otherwise; decided by :meth:`resolved`) with the grid
    ``k / levels`` of the images (None: the data's)."""

    mode: Mode = Mode.DENSEPURE
    sigma: float | None = None
    num_chains: int | None = None
    steps: int | None = None
    t_star_rule: TStarRule = TStarRule.AUTO
    noise: NoiseKind | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        object.__setattr__(self, "t_star_rule", TStarRule(self.t_star_rule))
        if self.sigma is not None:
            object.__setattr__(self, "sigma", validate_sigma(self.sigma))
        _optional_int("K (num_chains)", self.num_chains, 1)
        _optional_int("b (steps)", self.steps, 1)
        if self.mode is not Mode.DENSEPURE and (self.num_chains not in (None, 1) or self.steps not in (None, 1)):
            raise ConfigError(f"--K and --b apply to --mode densepure, not {self.mode.value}")
        if self.noise is not None:
            object.__setattr__(self, "noise", NoiseKind.parse(self.noise))
        if self.levels is not None and (not is_int(self.levels) or not 1 <= self.levels <= MAX_LEVELS):
            raise ConfigError(f"--levels (the grid k / levels of the images) must be an integer in [1, {MAX_LEVELS}], "
                              f"got {self.levels!r}")
        if self.noise is NoiseKind.FLOAT and self.levels is not None:
            raise ConfigError("--levels declares the grid of the sound noise; --noise float reads none: drop one")

    def resolved(self, data_levels: int | None) -> SmoothingOptions:
        """The noise decided: ``levels`` (given, else the data's grid ``data_levels``) and ``noise`` (given,
        else sound where a grid is known, float otherwise). Sound noise without a grid is a
        :class:`ConfigError` naming the way out."""
        levels = self.levels if self.levels is not None else data_levels
        noise = self.noise or (NoiseKind.SOUND if levels is not None else NoiseKind.FLOAT)
        if noise is NoiseKind.SOUND and levels is None:
            raise ConfigError("--noise sound needs the grid of the images, and this data declares none (uint8 "
                              "sources and the digits do): give --levels N (values k / N), or --noise float")
        return replace(self, noise=noise, levels=levels if noise is NoiseKind.SOUND else None)

    def with_defaults(self, defaults: Mapping[str, object]) -> SmoothingOptions:
        """Unset values from ``defaults``; K and b recorded as absent for the modes that have none."""
        dense = self.mode is Mode.DENSEPURE
        return replace(self, sigma=self.sigma if self.sigma is not None else defaults["sigma"],
                       num_chains=(self.num_chains or defaults["num_chains"]) if dense else None,
                       steps=(self.steps or defaults["steps"]) if dense else None)

    def config(self, schedule: NoiseSchedule | None) -> SmoothingConfig:
        """The one smoothing configuration (``schedule``: the preset's, for every mode but gaussian)."""
        dense = self.mode is Mode.DENSEPURE
        return SmoothingConfig(self.mode, self.sigma, self.num_chains if dense else 1, self.steps if dense else 1,
                               self.t_star_rule, schedule if self.mode is not Mode.GAUSSIAN else None,
                               noise=self.noise or (NoiseKind.SOUND if self.levels else NoiseKind.FLOAT),
                               levels=self.levels)  # unresolved: as resolved() with no data grid


@dataclass(frozen=True)
class SamplingOptions:
    """The statistics: ``n0`` selection and ``n`` estimation draws (None: the preset's; predict has no
    n0), ``alpha``; ``radius`` for sequential certification by ``sequential``'s test; ``budget`` for the
    anytime radius over that many estimation draws (it replaces ``n``); ``predict`` for Cohen's PREDICT;
    ``also_chains`` (the k-chain results of the same draws); the noise ``seed``."""

    n0: int | None = None
    n: int | None = None
    alpha: float = 0.001
    radius: float | None = None
    sequential: SequentialMethod = DEFAULT_METHOD
    predict: bool = False
    also_chains: tuple[int, ...] = ()
    seed: int | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        validate_alpha(self.alpha)
        object.__setattr__(self, "sequential", SequentialMethod.parse(self.sequential))
        _optional_real("radius", self.radius, "a finite number >= 0")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed < 1 << SEED_BITS):
            raise ConfigError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if self.predict and self.n0 is not None:
            raise ConfigError("predict draws no selection samples: n0 applies to certify only")
        if self.radius is not None and self.predict:
            raise ConfigError("--radius (sequential certification) and --predict exclude each other")
        if not all(is_int(k) and k >= 1 for k in self.also_chains):
            raise ConfigError(f"--also-K takes chain counts >= 1, got {self.also_chains!r}")
        object.__setattr__(self, "also_chains", tuple(sorted({int(k) for k in self.also_chains})))
        if self.also_chains and self.radius is not None:
            raise ConfigError(ALSO_K_NEEDS)
        self._check_budget()

    def _check_budget(self) -> None:
        if self.budget is None:
            return
        if self.predict or self.radius is not None or self.also_chains:
            raise ConfigError("--budget (the anytime radius) is a certify task of its own: not with --predict, "
                              "--radius or --also-K")
        if not is_int(self.budget) or self.budget < 1:
            raise ConfigError(f"--budget must be an integer >= 1, got {self.budget!r}")
        if self.n is not None and self.n != self.budget:
            raise ConfigError(f"--budget replaces --n (the estimation draws), got --n {self.n} and --budget {self.budget}")
        object.__setattr__(self, "n", self.budget)

    def with_defaults(self, defaults: Mapping[str, object]) -> SamplingOptions:
        n0 = None if self.predict else (self.n0 if self.n0 is not None else defaults["n0"])
        return replace(self, n0=n0, n=self.n if self.n is not None else defaults["n"])

    def task(self) -> Task:
        """What each image gets: PREDICT, CERTIFY, or sequential certification of ``radius``."""
        if self.predict:
            return PredictTask(self.n, self.alpha)
        if self.budget is not None:
            return AnytimeTask(self.n0, self.budget, self.alpha)
        if self.radius is not None:
            return SequentialTask(self.n0, self.radius, self.alpha, n_max=self.n, method=self.sequential)
        return CertifyTask(self.n0, self.n, self.alpha)


@dataclass(frozen=True)
class ExecutionOptions:
    """How the models run: the backend (torch runs the checkpoint; onnxruntime/tensorrt the graphs of
    ``artifacts``, engines cached in ``cache_dir``), device, precision, rows per model call, the engine's
    kernels, torch.compile, CUDA graphs, and the sequential tests' look-ahead."""

    backend: BackendKind = BackendKind.TORCH
    artifacts: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    precision: Precision = Precision.FP32
    batch_size: int = 500
    kernels: KernelChoice = KernelChoice.AUTO
    compile: CompileMode | None = None
    cuda_graphs: bool = True
    lookahead: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "kernels", KernelChoice.parse(self.kernels))
        check_backend_options(self.backend, self.artifacts, self.precision)
        if self.compile is not None:
            object.__setattr__(self, "compile", CompileMode.parse(self.compile))
            if self.backend is not BackendKind.TORCH:
                raise ConfigError("--compile applies to the torch backend (exported graphs are compiled by their runtime)")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")


@dataclass(frozen=True)
class DataSelection:
    """Which images: ``data`` (None: the shipped digits test split), every ``skip``-th, at most ``max``
    (-1: all; None: the preset's)."""

    data: str | None = None
    skip: int | None = None
    max: int | None = None

    def with_defaults(self, defaults: Mapping[str, object]) -> DataSelection:
        return replace(self, skip=self.skip if self.skip is not None else defaults["skip"],
                       max=self.max if self.max is not None else defaults["max"])


@dataclass(frozen=True)
class OutputOptions:
    """Where the results go: the TSV ``output`` (its sidecar beside it); ``overwrite`` starts it again
    instead of resuming a matching run; ``plot``: the certified-accuracy PNG (None: beside the output)."""

    output: str = "runs/certify.tsv"
    overwrite: bool = False
    plot: str | None = None

    def __post_init__(self) -> None:
        if not str(self.output).strip():
            raise ConfigError("--output must name a file, got an empty string")


@dataclass(frozen=True)
class ClusterOptions:
    """A Ray run: ``ray`` (local | auto | an address; None: one process), ``workers`` (0: one per GPU, or
    per CPU without GPUs), ``split_draws`` (each image's draws on this many workers in disjoint ranges)."""

    ray: str | None = None
    workers: int = 0
    split_draws: int = 1

    def __post_init__(self) -> None:
        for name, low in (("workers", 0), ("split_draws", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.ray is None and (self.workers or self.split_draws != 1):
            raise ConfigError("--workers and --split-draws need --ray (local, auto or a cluster address)")
        if self.ray is not None and not str(self.ray).strip():
            raise ConfigError("--ray must be local, auto or a cluster address, got an empty string")


_RECORDS = {"models": ModelSource, "smoothing": SmoothingOptions, "sampling": SamplingOptions,
            "execution": ExecutionOptions, "selection": DataSelection, "results": OutputOptions,
            "cluster": ClusterOptions}


def route_fields(values: Mapping[str, object], records: Mapping[str, type]) -> dict[str, dict[str, object]]:
    """Split a flat ``{field: value}`` mapping by the record (``records[key]``, a dataclass) owning each
    field; a name no record has is a TypeError (a flag or keyword that would otherwise be dropped)."""
    owner = {f.name: key for key, record in records.items() for f in fields(record)}
    unknown = sorted(set(values) - set(owner))
    if unknown:
        raise TypeError(f"no option is named {', '.join(unknown)} (known: {', '.join(sorted(owner))})")
    out: dict[str, dict[str, object]] = {key: {} for key in records}
    for name, value in values.items():
        out[owner[name]][name] = value
    return out


@dataclass(frozen=True)
class JobOptions:
    """Every user-level setting of a certify/predict job, as the records of the module doc; build one
    from flat names with :meth:`build`. Construction resolves the models and the preset's defaults and
    checks what spans records (the task's statistics, K/b and also-K against the mode)."""

    models: ModelSource = field(default_factory=ModelSource)
    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    selection: DataSelection = field(default_factory=DataSelection)
    results: OutputOptions = field(default_factory=OutputOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    def __post_init__(self) -> None:
        for name, record in _RECORDS.items():
            if not isinstance(getattr(self, name), record):
                raise TypeError(f"JobOptions.{name} must be a {record.__name__}, got {getattr(self, name)!r}")
        models = self.models.resolved(self.execution)
        defaults = PRESET_DEFAULTS.get(models.preset, PRESET_DEFAULTS[None])
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "smoothing", self.smoothing.with_defaults(defaults))
        object.__setattr__(self, "sampling", self.sampling.with_defaults(defaults))
        object.__setattr__(self, "selection", self.selection.with_defaults(defaults))
        if self.sampling.also_chains and self.smoothing.mode is not Mode.DENSEPURE:
            raise ConfigError(ALSO_K_NEEDS)
        self.task()  # n0, n, alpha, radius: checked now, before any model loads

    @classmethod
    def build(cls, **values: object) -> JobOptions:
        """A job from flat option names (``JobOptions.build(sigma=0.5, n=1000, device="cpu")``): each goes
        to the record that owns it. The CLI builds every job this way, so no flag can be dropped."""
        parts = route_fields(values, _RECORDS)
        return cls(**{key: _RECORDS[key](**given) for key, given in parts.items()})

    def replace(self, **values: object) -> JobOptions:
        """A copy with flat option names changed (:meth:`build`'s names), everything re-validated."""
        parts = route_fields(values, _RECORDS)
        return JobOptions(**{key: replace(getattr(self, key), **given) if given else getattr(self, key)
                             for key, given in parts.items()})

    def flat(self) -> dict[str, object]:
        """Every leaf option by name (the inverse of :meth:`build`)."""
        return {f.name: getattr(getattr(self, key), f.name) for key, record in _RECORDS.items()
                for f in fields(record)}

    def task(self) -> Task:
        """What each image gets: PREDICT, CERTIFY, the anytime radius, or sequential certification of the radius."""
        return self.sampling.task()

    def resolved(self, data_levels: int | None) -> JobOptions:
        """These options with the noise decided for data whose grid is ``k / data_levels`` (None: no grid
        declared): :meth:`SmoothingOptions.resolved`."""
        return replace(self, smoothing=self.smoothing.resolved(data_levels))

    def smoothing_config(self, schedule: NoiseSchedule | None) -> SmoothingConfig:
        """The one smoothing configuration of the job (``schedule``: the preset's, for every mode but gaussian)."""
        return self.smoothing.config(schedule)

    def record(self) -> dict:
        """The configuration written to the sidecar and compared on resume: the recorded leaf options,
        enums by value (``resize`` only when the classifier has one: the records of digits runs are
        those of earlier versions)."""
        record = {k: (v.value if hasattr(v, "value") else list(v) if isinstance(v, tuple) else v)
                  for k, v in self.flat().items() if k not in _NOT_RECORDED}
        if record["resize"] is None:
            del record["resize"]
        # float noise and a fixed N are recorded as absent: the records of runs made before the sound noise
        # and the anytime radius, which they are (a resume with another noise is refused: noise differs)
        if self.smoothing.noise is not NoiseKind.SOUND:
            del record["noise"], record["levels"]
        if record["budget"] is None:
            del record["budget"]
        return record

    def prefix_record(self, k: int) -> dict:
        """The configuration of the ``k``-chain results read from this run (see :meth:`prefix_output`)."""
        return {**self.record(), "num_chains": k, "also_chains": [],
                "computed_as": f"first {k} of {self.smoothing.num_chains} chains"}

    def prefix_output(self, k: int) -> Path:
        """``runs/certify.tsv`` -> ``runs/certify.K1.tsv`` for ``k = 1``."""
        path = Path(self.results.output)
        return path.with_name(f"{path.stem}.K{k}{path.suffix}")
