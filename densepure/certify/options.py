"""The options of a certify/predict job: every user-level setting, validated before any model loads.

The CLI builds :class:`JobOptions` from argv (one field per flag); library users can do the same.
Unset statistics take the preset's defaults (:data:`PRESET_DEFAULTS`).

Unset models take their defaults: with exported graphs (``--artifacts``), the preset, classifier and
resize their manifests record (flags that are given must agree with them); otherwise the digits preset,
its classifier for it (other presets need ``--classifier``), and the resize of
:func:`~densepure.models.sources.default_resize`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from densepure.certify.boundary import DEFAULT_METHOD
from densepure.certify.sequential import SequentialMethod
from densepure.certify.stats import validate_alpha
from densepure.certify.tasks import AnytimeTask, CertifyTask, PredictTask, SequentialTask, Task
from densepure.diffusion import Mode, NoiseKind, NoiseSchedule, SmoothingConfig, TStarRule
from densepure.diffusion.smoothing import MAX_LEVELS
from densepure.engine.backends.select import BackendKind, check_backend_options, exported_models, same_classifier
from densepure.errors import ConfigError
from densepure.kernels import CompileMode, KernelChoice
from densepure.models.classifiers import ResizeChoice
from densepure.models.sources import ClassifierSpec, check_resize, default_resize, required_classifier
from densepure.noise import SEED_BITS
from densepure.precision import Precision

# settings that do not change any label (noise is keyed by identity, not by batch layout; engines in the
# cache are keyed by content)
# (``kernels`` is recorded as what it resolved to on the machine, by the job: see densepure.certify.job)
# (``lookahead`` only changes which draws run past a stopping look, never a certificate.)
# ``skip`` and ``max`` only select which images run (each image's noise is keyed by its own index), so
# a run may be resumed with a longer selection.
_NOT_RECORDED = ("batch_size", "output", "overwrite", "cache_dir", "cuda_graphs", "kernels", "skip", "max", "ray",
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


@dataclass(frozen=True)
class JobOptions:
    """Every user-level setting of a certify/predict job (CLI flags map one to one)."""

    preset: str | None = None  # None: the preset of --artifacts, else digits
    checkpoint: str | None = None
    classifier: str | None = None  # None: the classifier of --artifacts, else digits for the digits preset
    resize: ResizeChoice | None = None  # None: --artifacts', else default_resize (None: the classifier has no resize)
    data: str | None = None
    mode: Mode = Mode.DENSEPURE
    sigma: float | None = None
    n0: int | None = None
    n: int | None = None
    alpha: float = 0.001
    num_chains: int | None = None
    steps: int | None = None
    t_star_rule: TStarRule = TStarRule.AUTO
    radius: float | None = None
    sequential: SequentialMethod = DEFAULT_METHOD  # the test --radius runs
    predict: bool = False
    batch_size: int = 500
    device: str = "auto"
    precision: Precision = Precision.FP32
    backend: BackendKind = BackendKind.TORCH
    artifacts: str | None = None  # export directory (onnxruntime, tensorrt)
    cache_dir: str | None = None  # TensorRT engine cache (tensorrt)
    cuda_graphs: bool = True  # torch on CUDA: bucketed CUDA graphs
    lookahead: bool = True  # sequential tests: look-ahead draws into batch rows that would run empty
    kernels: KernelChoice = KernelChoice.AUTO  # the engine's per-row kernels (torch references or Triton)
    compile: CompileMode | None = None  # torch backend: torch.compile the UNet and the classifier
    also_chains: tuple[int, ...] = ()  # densepure, fixed N: also write the k-chain results (first k chains)
    seed: int | None = None
    output: str = "runs/certify.tsv"
    skip: int | None = None
    max: int | None = None
    overwrite: bool = False
    ray: str | None = None  # run on a Ray cluster: local | auto | ADDRESS (densepure.distributed runs it, not run())
    workers: int = 0  # --ray: how many workers (0: one per GPU of the cluster, or per CPU when it has none)
    split_draws: int = 1  # --ray: each image's draws go to this many workers in disjoint ranges (1: no split)
    noise: NoiseKind | None = None  # None: sound where the grid is known (resolved(), by the job), float otherwise
    levels: int | None = None  # the grid k / levels of the images; None: the data's (resolved())
    budget: int | None = None  # certify: the anytime radius over this many estimation draws (replaces n)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        self._check_noise()
        self._check_budget()
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))
        check_backend_options(self.backend, self.artifacts, self.precision)
        self._resolve_models()
        dense = self.mode is Mode.DENSEPURE
        if not dense and (self.num_chains not in (None, 1) or self.steps not in (None, 1)):
            raise ConfigError(f"--K and --b apply to --mode densepure, not {self.mode.value}")
        defaults = PRESET_DEFAULTS.get(self.preset, PRESET_DEFAULTS[None])
        for key, value in defaults.items():
            skip = (key == "n0" and self.predict) or (key in ("num_chains", "steps") and not dense)
            if getattr(self, key) is None and not skip:
                object.__setattr__(self, key, value)
        if not dense:  # recorded as absent: K and b do not exist for the other base classifiers
            object.__setattr__(self, "num_chains", None)
            object.__setattr__(self, "steps", None)
        object.__setattr__(self, "t_star_rule", TStarRule(self.t_star_rule))
        object.__setattr__(self, "sequential", SequentialMethod(self.sequential))
        object.__setattr__(self, "kernels", KernelChoice(self.kernels))
        if self.compile is not None:
            object.__setattr__(self, "compile", CompileMode(self.compile))
            if self.backend is not BackendKind.TORCH:
                raise ConfigError("--compile applies to the torch backend (exported graphs are compiled by their runtime)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 1 << SEED_BITS):
            raise ConfigError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        validate_alpha(self.alpha)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.predict and self.n0 is not None:
            raise ConfigError("predict draws no selection samples: n0 applies to certify only")
        object.__setattr__(self, "also_chains", tuple(sorted({int(k) for k in self.also_chains})))
        if self.also_chains and (self.mode is not Mode.DENSEPURE or self.radius is not None):
            raise ConfigError("--also-K needs --mode densepure with a fixed N (not --radius): the k-chain counts "
                              "are read from the same draws")
        if self.radius is not None and self.predict:
            raise ConfigError("--radius (sequential certification) and --predict exclude each other")
        self.task()  # n0, n, alpha, radius: checked now, before any model loads
        self._check_cluster()

    def _check_noise(self) -> None:
        if self.noise is not None:
            object.__setattr__(self, "noise", NoiseKind.parse(self.noise))
        if self.levels is not None and (isinstance(self.levels, bool) or not isinstance(self.levels, int)
                                        or not 1 <= self.levels <= MAX_LEVELS):
            raise ConfigError(f"--levels (the grid k / levels of the images) must be an integer in [1, {MAX_LEVELS}], "
                              f"got {self.levels!r}")
        if self.noise is NoiseKind.FLOAT and self.levels is not None:
            raise ConfigError("--levels declares the grid of the sound noise; --noise float reads none: drop one")

    def _check_budget(self) -> None:
        if self.budget is None:
            return
        if self.predict or self.radius is not None or self.also_chains:
            raise ConfigError("--budget (the anytime radius) is a certify task of its own: not with --predict, "
                              "--radius or --also-K")
        if self.n is not None and self.n != self.budget:
            raise ConfigError(f"--budget replaces --n (the estimation draws), got --n {self.n} and --budget {self.budget}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ConfigError(f"--budget must be an integer >= 1, got {self.budget!r}")
        object.__setattr__(self, "n", self.budget)

    def resolved(self, data_levels: int | None) -> JobOptions:
        """These options with the noise decided: ``levels`` (given, else the data's grid ``data_levels``) and
        ``noise`` (given, else sound where a grid is known, float otherwise). Sound noise without a grid is
        a :class:`ConfigError` naming the way out."""
        levels = self.levels if self.levels is not None else data_levels
        noise = self.noise or (NoiseKind.SOUND if levels is not None else NoiseKind.FLOAT)
        if noise is NoiseKind.SOUND and levels is None:
            raise ConfigError("--noise sound needs the grid of the images, and this data declares none (uint8 "
                              "sources and the digits do): give --levels N (values k / N), or --noise float")
        return replace(self, noise=noise, levels=levels if noise is NoiseKind.SOUND else None)

    def _check_cluster(self) -> None:
        for name, low in (("workers", 0), ("split_draws", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.ray is None and (self.workers or self.split_draws != 1):
            raise ConfigError("--workers and --split-draws need --ray (local, auto or a cluster address)")
        if self.ray is not None and not str(self.ray).strip():
            raise ConfigError("--ray must be local, auto or a cluster address, got an empty string")

    def _resolve_models(self) -> None:
        """Fill ``preset``, ``classifier`` and ``resize`` (module doc); explicit ones are checked."""
        if self.backend is not BackendKind.TORCH:
            self._resolve_from_artifacts()
            return
        preset = self.preset or "digits"
        classifier = self.classifier or required_classifier(preset)
        spec = ClassifierSpec.parse(classifier)
        resize = check_resize(spec, self.resize) or default_resize(preset, spec)
        for name, value in (("preset", preset), ("classifier", classifier), ("resize", resize)):
            object.__setattr__(self, name, value)

    def _resolve_from_artifacts(self) -> None:
        """The models of an export directory, by its manifests: ``--artifacts`` alone is enough."""
        found, out = exported_models(self.artifacts, self.precision), self.artifacts
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
        resize = None if self.resize is None else ResizeChoice.parse(self.resize)
        if resize is not None and (found.resize is None or resize.value != found.resize):
            baked = f"was exported with --resize {found.resize}" if found.resize else \
                "does not record its resize (exported before --resize, or from a library classifier)"
            raise ConfigError(f"--resize {resize.value} was given, but the classifier graph in {out} {baked}: drop "
                              f"--resize (it is inside the graph), or export again with --resize {resize.value}")
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "classifier", self.classifier or found.classifier)
        object.__setattr__(self, "resize", None if found.resize is None else ResizeChoice.parse(found.resize))

    def task(self) -> Task:
        """What each image gets: PREDICT, CERTIFY, or sequential certification of ``radius``."""
        if self.predict:
            return PredictTask(self.n, self.alpha)
        if self.budget is not None:
            return AnytimeTask(self.n0, self.budget, self.alpha)
        if self.radius is not None:
            return SequentialTask(self.n0, self.radius, self.alpha, n_max=self.n, method=self.sequential)
        return CertifyTask(self.n0, self.n, self.alpha)

    def smoothing(self, schedule: NoiseSchedule | None) -> SmoothingConfig:
        """The one smoothing configuration of the job (``schedule``: the preset's, for every mode but gaussian)."""
        chains = self.num_chains if self.mode is Mode.DENSEPURE else 1
        steps = self.steps if self.mode is Mode.DENSEPURE else 1
        return SmoothingConfig(self.mode, self.sigma, chains, steps, self.t_star_rule,
                               schedule if self.mode is not Mode.GAUSSIAN else None,
                               noise=self.noise or (NoiseKind.SOUND if self.levels else NoiseKind.FLOAT),
                               levels=self.levels)  # unresolved options: as resolved() with no data grid

    def record(self) -> dict:
        """The configuration written to the sidecar and compared on resume (``resize`` only when the
        classifier has one: the records of digits runs are those of earlier versions)."""
        record = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(self).items() if k not in _NOT_RECORDED}
        if record["resize"] is None:
            del record["resize"]
        # float noise and fixed N are recorded as absent: the records of runs made before the sound noise
        # and the anytime radius, which they are (a resume with another noise is refused: noise differs)
        if self.noise is not NoiseKind.SOUND:
            del record["noise"], record["levels"]
        if record["budget"] is None:
            del record["budget"]
        return record

    def prefix_record(self, k: int) -> dict:
        """The configuration of the ``k``-chain results read from this run (see :meth:`prefix_output`)."""
        return {**self.record(), "num_chains": k, "also_chains": [], "computed_as": f"first {k} of {self.num_chains} chains"}

    def prefix_output(self, k: int) -> Path:
        """``runs/certify.tsv`` -> ``runs/certify.K1.tsv`` for ``k = 1``."""
        path = Path(self.output)
        return path.with_name(f"{path.stem}.K{k}{path.suffix}")
