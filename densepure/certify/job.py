"""A certification job: options -> models, data and engine -> result file -> summary.

The CLI builds :class:`JobOptions` from argv and calls :func:`prepare` and :func:`run`; library
users can do the same. Defaults are the embedded digits preset, so a job with no options runs.
Everything that needs no model is validated when the options are built, before any model loads.
"""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from densepure.certify.records import IfExists, ImageRecord
from densepure.certify.results import open_results
from densepure.certify.runner import ProgressHook, run_dataset
from densepure.certify.stats import validate_alpha
from densepure.certify.tasks import CertifyTask, PredictTask, SequentialTask, Task
from densepure.data.datasets import Dataset, open_dataset, select_indices
from densepure.diffusion import Mode, NoiseSchedule, SmoothingConfig, TStarRule
from densepure.engine.backends.select import BackendChoice, BackendKind, ModelIdentity, check_backend_options
from densepure.engine.device import resolve_device
from densepure.engine.engine import Engine, EngineConfig
from densepure.errors import ConfigError, DensePureError
from densepure.precision import Precision

# settings that do not change any label (noise is keyed by identity, not by batch layout; engines in the
# cache are keyed by content; a cluster run's certificates do not depend on its workers, see densepure.distributed)
_NOT_RECORDED = ("batch_size", "output", "overwrite", "cache_dir", "cuda_graphs", "ray", "workers", "split_draws")


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

    preset: str = "digits"
    checkpoint: str | None = None
    classifier: str = "digits"
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
    predict: bool = False
    batch_size: int = 500
    device: str = "auto"
    precision: Precision = Precision.FP32
    backend: BackendKind = BackendKind.TORCH
    artifacts: str | None = None  # export directory (onnxruntime, tensorrt)
    cache_dir: str | None = None  # TensorRT engine cache (tensorrt)
    cuda_graphs: bool = True  # torch on CUDA: bucketed CUDA graphs
    also_chains: tuple[int, ...] = ()  # densepure, fixed N: also write the k-chain results (first k chains)
    seed: int | None = None
    output: str = "runs/certify.tsv"
    skip: int | None = None
    max: int | None = None
    overwrite: bool = False
    ray: str | None = None  # run on a Ray cluster: local | auto | ADDRESS (densepure.distributed runs it, not run())
    workers: int = 0  # --ray: how many workers (0: one per GPU of the cluster, or per CPU when it has none)
    split_draws: int = 1  # --ray: each image's draws go to this many workers in disjoint ranges (1: no split)

    def __post_init__(self) -> None:
        defaults = PRESET_DEFAULTS.get(self.preset, PRESET_DEFAULTS[None])
        for key, value in defaults.items():
            if getattr(self, key) is None and not (key == "n0" and self.predict):
                object.__setattr__(self, key, value)
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))
        object.__setattr__(self, "t_star_rule", TStarRule(self.t_star_rule))
        validate_alpha(self.alpha)
        check_backend_options(self.backend, self.artifacts, self.precision)
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
        self._check_cluster()
        self.task()  # n0, n, alpha, radius: checked now, before any model loads

    def _check_cluster(self) -> None:
        for name, low in (("workers", 0), ("split_draws", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.ray is None and (self.workers or self.split_draws != 1):
            raise ConfigError("--workers and --split-draws need --ray (local, auto or a cluster address)")
        if self.ray is not None and not str(self.ray).strip():
            raise ConfigError("--ray must be local, auto or a cluster address, got an empty string")

    def task(self) -> Task:
        """What each image gets: PREDICT, CERTIFY, or sequential certification of ``radius``."""
        if self.predict:
            return PredictTask(self.n, self.alpha)
        if self.radius is not None:
            return SequentialTask(self.n0, self.radius, self.alpha, n_max=self.n)
        return CertifyTask(self.n0, self.n, self.alpha)

    def smoothing(self, schedule: NoiseSchedule | None) -> SmoothingConfig:
        """The one smoothing configuration of the job (``schedule``: the preset's, for every mode but gaussian)."""
        chains = self.num_chains if self.mode is Mode.DENSEPURE else 1
        steps = self.steps if self.mode is Mode.DENSEPURE else 1
        return SmoothingConfig(self.mode, self.sigma, chains, steps, self.t_star_rule,
                               schedule if self.mode is not Mode.GAUSSIAN else None)

    def record(self) -> dict:
        """The configuration written to the sidecar and compared on resume."""
        return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(self).items() if k not in _NOT_RECORDED}

    def prefix_record(self, k: int) -> dict:
        """The configuration of the ``k``-chain results read from this run (see :meth:`prefix_output`)."""
        return {**self.record(), "num_chains": k, "also_chains": [], "computed_as": f"first {k} of {self.num_chains} chains"}

    def prefix_output(self, k: int) -> Path:
        """``runs/certify.tsv`` -> ``runs/certify.K1.tsv`` for ``k = 1``."""
        path = Path(self.output)
        return path.with_name(f"{path.stem}.K{k}{path.suffix}")


@dataclass
class Job:
    options: JobOptions
    engine: Engine
    dataset: Dataset
    indices: list[int]
    task: Task
    seed: int

    def describe(self, command: str = "certify") -> str:
        """One line: what the job runs, with which seed, where."""
        o, s = self.options, self.engine.smoothing
        chains = f"K={s.num_chains} b={s.steps} " if s.mode is Mode.DENSEPURE else ""
        stats = f"n={o.n}" if o.predict else f"n0={o.n0} n={o.n}" + (f" radius={o.radius}" if o.radius is not None
                                                                     else "")
        return (f"{command}: {len(self.indices)} images, mode={s.mode.value} sigma={s.sigma} {chains}{stats} "
                f"alpha={o.alpha} seed={self.seed} device={self.engine.device} backend={o.backend.value} "
                f"precision={o.precision.value}")


def _dataset(options: JobOptions) -> Dataset:
    if options.data is not None:
        return open_dataset(options.data)
    if options.preset != "digits":
        raise ConfigError(f"preset {options.preset!r} needs --data (a CIFAR-10 batch, an image folder, .npz or image)")
    from densepure.data.arrays import ArrayDataset
    from densepure.models.digits import load_digits_test_split

    images, labels = load_digits_test_split()
    return ArrayDataset(images.numpy(), labels.numpy(), name="digits-test", num_classes=10)


def _resumed_seed(options: JobOptions) -> int:
    """An unset seed is drawn from the OS, except when resuming: then the run's recorded seed."""
    from densepure.certify.results import read_sidecar, sidecar_path

    if not options.overwrite and sidecar_path(options.output).is_file():
        try:
            return int(read_sidecar(options.output).header.seed)
        except (DensePureError, ValueError):
            pass  # unreadable sidecar: open_results decides (it restarts or reports the problem)
    return secrets.randbits(63)


def prepare_data(options: JobOptions) -> tuple[JobOptions, Dataset, list[int]]:
    """:func:`prepare` without the models: the options with their seed (given, resumed or drawn once, here),
    the dataset and the selected indices. A cluster driver calls this and leaves the models to its workers."""
    seed = options.seed if options.seed is not None else _resumed_seed(options)
    options = replace(options, seed=seed)
    dataset = _dataset(options)
    if not len(dataset):
        raise ConfigError("the dataset is empty")
    return options, dataset, select_indices(len(dataset), options.skip, options.max)


def prepare(options: JobOptions) -> Job:
    """Load models and data and build the engine; nothing is written yet."""
    if options.ray is not None:
        raise ConfigError("options.ray is set: run the job with densepure.distributed.run_cluster_job, not prepare/run")
    options, dataset, indices = prepare_data(options)
    engine = build_engine(options, tuple(dataset[0][0].shape), dataset.num_classes)
    return Job(options, engine, dataset, indices, options.task(), options.seed)


def build_engine(options: JobOptions, image_shape: tuple[int, int, int], num_classes: int | None = None) -> Engine:
    """The engine for ``options``' models, backend, precision and device, for images of ``image_shape``.

    ``num_classes`` is used when the classifier does not say (a dataset's class count). Shared by the
    dataset job, the server and cluster workers, so all of them run exactly the same models.
    """
    from densepure.engine.backends.select import make_backends
    from densepure.hashing import file_sha256
    from densepure.models import build_unet, get_preset, resolve_checkpoint
    from densepure.models.sources import ClassifierSpec, load_classifier

    preset = get_preset(options.preset)
    smoothing = options.smoothing(preset.schedule)
    spec = ClassifierSpec.parse(options.classifier)
    device = resolve_device(options.device)
    classifier = load_classifier(spec, device)
    torch_backend = options.backend is BackendKind.TORCH
    if torch_backend and options.precision is not Precision.FP32:
        classifier.set_precision(options.precision.dtype)  # the classifier is most of the work for ViT-sized models
    num_classes = classifier.num_classes or num_classes
    if num_classes is None:
        raise ConfigError("cannot tell the number of classes from the classifier or the data")
    denoiser = checkpoint = None
    if smoothing.needs_denoiser:
        checkpoint = resolve_checkpoint(preset, options.checkpoint)
        if torch_backend:  # exported backends run the graphs, not the checkpoint
            denoiser = build_unet(preset, checkpoint, device, options.precision.dtype)
    shape = tuple(int(d) for d in image_shape)
    rows = _rows_per_call(options, device, denoiser, classifier, shape)
    identity = ModelIdentity(options.preset, shape, num_classes,
                             file_sha256(checkpoint) if not torch_backend and checkpoint is not None else None,
                             options.classifier)
    choice = BackendChoice(options.backend, options.artifacts, options.precision, options.cache_dir,
                           torch.get_num_threads(), rows, options.cuda_graphs)
    backends = make_backends(choice, identity, device, needs_denoiser=smoothing.needs_denoiser, unet=denoiser,
                             classifier=classifier)
    config = EngineConfig(unet_rows=rows, classifier_rows=rows, draw_capacity=2 * rows, image_slots=8,
                          chain_prefixes=options.also_chains)
    return Engine(smoothing, backends, shape, device, config)


def _rows_per_call(options: JobOptions, device: torch.device, denoiser, classifier, shape) -> int:
    """``--batch-size``, lowered on CUDA to what fits in the free memory (torch backend: one probe batch
    through the UNet and the classifier measures the memory per row)."""
    if device.type != "cuda" or options.backend is not BackendKind.TORCH:
        return options.batch_size
    from densepure.engine.backends.graphs import rows_for_memory

    def batch(rows: int) -> torch.Tensor:
        return torch.rand((rows, *shape), device=device) * 2 - 1

    def unet_probe(rows: int) -> None:
        with torch.inference_mode():
            denoiser.eps_and_var(batch(rows), torch.full((rows,), 100.0, device=device))

    def classifier_probe(rows: int) -> None:
        with torch.inference_mode():
            classifier(batch(rows))

    probes = [classifier_probe] if denoiser is None else [unet_probe, classifier_probe]
    return rows_for_memory(probes, device, cap=options.batch_size)


def run(job: Job, on_image: ProgressHook | None = None) -> tuple[Path, list[ImageRecord]]:
    """Certify the job's images into ``options.output`` (resuming a matching earlier run), and the
    ``k``-chain results of ``also_chains`` into their own files (:meth:`JobOptions.prefix_output`)."""
    opts = job.options
    mode = IfExists.OVERWRITE if opts.overwrite else IfExists.RESUME
    with ExitStack() as stack, torch.inference_mode():
        writer = stack.enter_context(open_results(opts.output, opts.record(), job.seed, mode))
        extra = {k: stack.enter_context(open_results(opts.prefix_output(k), opts.prefix_record(k), job.seed, mode))
                 for k in opts.also_chains}
        records = run_dataset(job.engine, job.dataset, job.indices, job.task, job.seed, writer, on_image, extra)
    return Path(opts.output), records
