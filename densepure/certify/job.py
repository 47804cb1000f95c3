"""A certification job: options -> data, checks, models and engine -> result file -> summary.

The CLI builds :class:`~densepure.certify.options.JobOptions` and calls :func:`prepare` and :func:`run`;
library users can do the same. :func:`prepare` checks everything that needs no model first (the data,
its shape, the output files and whether they can be resumed) and only then loads the models, so a
mistake costs a second, not a model load, and no result file is created before the run can start.

Resume identity is content, not paths: the sidecar records the sha256 of the data, the diffusion
checkpoint and the classifier's files (and, for exported backends, the graphs' manifests), so a file
replaced at the same path cannot be mixed into a run.
"""

from __future__ import annotations

import math
import secrets
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from densepure.certify.loading import build_engine
from densepure.certify.options import JobOptions
from densepure.certify.records import IfExists, ImageRecord, TsvKind
from densepure.certify.runner import Progress, run_dataset
from densepure.certify.tasks import PredictTask, Task
from densepure.certify.writer import check_results, open_results
from densepure.data.datasets import Dataset, data_levels, open_dataset, select_indices
from densepure.diffusion import Mode, NoiseKind
from densepure.engine.backends.select import BackendKind
from densepure.engine.device import resolve_device
from densepure.engine.engine import Engine
from densepure.errors import ConfigError, DensePureError
from densepure.noise.sound import grid_indices

__all__ = ["Job", "JobOptions", "build_engine", "prepare", "run"]


@dataclass
class Job:
    options: JobOptions
    engine: Engine
    dataset: Dataset
    indices: list[int]
    task: Task
    seed: int
    record: dict  # the sidecar configuration: options, resolved kernels, content hashes
    warnings: tuple[str, ...] = field(default=())  # what may be a mistake but can run (the CLI prints them)

    @property
    def tsv_kind(self) -> TsvKind:
        """The result files' format: Cohen's predict.py for PREDICT, certify.py otherwise."""
        return TsvKind.PREDICT if isinstance(self.task, PredictTask) else TsvKind.CERTIFY

    def describe(self, command: str = "certify") -> str:
        """One line: what the job runs, with which seed, where."""
        o, s = self.options, self.engine.smoothing
        chains = f"K={s.num_chains} b={s.steps} " if s.mode is Mode.DENSEPURE else ""
        stats = f"n={o.n}" if o.predict else f"n0={o.n0} n={o.n}" + (f" radius={o.radius}" if o.radius is not None
                                                                     else "")
        stats += f" budget={o.budget} (anytime radius)" if o.budget is not None else ""
        noise = f"noise={s.noise.value}" + (f" levels={s.levels}" if s.sound else "")
        resize = f" resize={o.resize.value}" if o.resize is not None else ""
        return (f"{command}: {len(self.indices)} images, preset={o.preset} classifier={o.classifier}{resize} "
                f"mode={s.mode.value} sigma={s.sigma} {noise} {chains}{stats} "
                f"alpha={o.alpha} seed={self.seed} device={self.engine.device} backend={o.backend.value} "
                f"precision={o.precision.value} kernels={self.engine.kernels.name}")

    def prefix_record(self, k: int) -> dict:
        """The configuration of the ``k``-chain results read from this run."""
        return {**self.record, "num_chains": k, "also_chains": [],
                "computed_as": f"first {k} of {self.options.num_chains} chains"}

    def outputs(self) -> list[tuple[Path, dict]]:
        """Every result file of the job with its configuration: the main one, then each ``--also-K``."""
        o = self.options
        return [(Path(o.output), self.record), *((o.prefix_output(k), self.prefix_record(k)) for k in o.also_chains)]


def _dataset(options: JobOptions) -> tuple[Dataset, Path]:
    """The data and the file or directory it was read from (for its content hash)."""
    if options.data is not None:
        return open_dataset(options.data), Path(options.data)
    if options.preset != "digits":
        raise ConfigError(f"preset {options.preset!r} needs --data (a CIFAR-10 batch, an image folder, .npz or image)")
    from densepure.data.arrays import ArrayDataset
    from densepure.models.digits import load_digits_test_split
    from densepure.models.presets import digits_asset_path

    from densepure.models.digits import PIXEL_LEVELS

    images, labels = load_digits_test_split()
    dataset = ArrayDataset(images.numpy(), labels.numpy(), name="digits-test", num_classes=10, levels=PIXEL_LEVELS)
    return dataset, digits_asset_path("test_split.npz")


def _resumed_seed(options: JobOptions) -> int:
    """An unset seed is drawn from the OS, except when resuming: then the run's recorded seed."""
    from densepure.certify.results import read_sidecar, sidecar_path

    if not options.overwrite and sidecar_path(options.output).is_file():
        try:
            return int(read_sidecar(options.output).header.seed)
        except (DensePureError, ValueError):
            pass  # unreadable sidecar: open_results decides (it restarts or reports the problem)
    return secrets.randbits(63)


def _check_shape(options: JobOptions, dataset: Dataset, source: Path) -> tuple[int, int, int]:
    from densepure.models import get_preset

    cfg = get_preset(options.preset).unet_config
    want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    got = tuple(int(d) for d in dataset[0][0].shape)
    if got != want:
        raise ConfigError(f"images must be (N, {', '.join(map(str, want))}) for preset {options.preset}, got "
                          f"(N, {', '.join(map(str, got))}) from {source}")
    return want


def content_hashes(options: JobOptions, data_source: Path) -> dict[str, object]:
    """sha256 of what the results are computed from: the data, the checkpoint, the classifier, the graphs."""
    from densepure.hashing import tree_sha256
    from densepure.models import resolve_checkpoint
    from densepure.models.sources import ClassifierSpec, classifier_source_path

    content: dict[str, object] = {"data": tree_sha256(data_source)}
    if options.backend is BackendKind.TORCH:
        if options.mode is not Mode.GAUSSIAN:
            content["checkpoint"] = tree_sha256(resolve_checkpoint(options.preset, options.checkpoint))
        content["classifier"] = tree_sha256(classifier_source_path(ClassifierSpec.parse(options.classifier)))
    else:
        graphs = sorted(Path(options.artifacts).glob("*.manifest.json"))
        content["artifacts"] = {p.name: tree_sha256(p) for p in graphs}
    return content


def prepare(options: JobOptions) -> Job:
    """Check the data and the outputs, then load the models and build the engine; nothing is written yet."""
    if options.ray is not None:
        raise ConfigError("a --ray run is driven by densepure.distributed (prepare_cluster_job), not prepare()")
    draft = prepare_draft(options)
    shape = tuple(int(d) for d in draft.dataset[0][0].shape)
    engine = build_engine(draft.options, shape, draft.dataset.num_classes)
    return replace(draft, engine=engine, warnings=_class_warnings(engine.num_classes, draft.dataset))


def prepare_draft(options: JobOptions) -> Job:
    """:func:`prepare` without the models (``engine`` is None): seed, data, checks, sidecar record. A cluster
    driver uses it and leaves the models to its workers; there the kernels are recorded as requested
    (each worker resolves them on its own device)."""
    from densepure.kernels import resolve_kernels

    seed = options.seed if options.seed is not None else _resumed_seed(options)
    options = replace(options, seed=seed)
    dataset, source = _dataset(options)
    if not len(dataset):
        raise ConfigError(f"the dataset {source} is empty")
    indices = select_indices(len(dataset), options.skip, options.max)
    if not indices:
        raise ConfigError(f"--skip {options.skip} --max {options.max} select no image of {len(dataset)}")
    options = options.resolved(data_levels(dataset))
    shape = _check_shape(options, dataset, source)
    if options.noise is NoiseKind.SOUND:  # the first image now; the engine checks every image as it is submitted
        grid_indices(dataset[indices[0]][0], options.levels, name=f"image {indices[0]} of {source}")
    kernels = options.kernels.value if options.ray is not None else \
        resolve_kernels(options.kernels, resolve_device(options.device)).name
    record = {**options.record(), **sound_accounting(options, shape), "kernels": kernels,
              "content": content_hashes(options, source)}
    draft = Job(options, None, dataset, indices, options.task(), seed, record)  # type: ignore[arg-type]
    mode = IfExists.OVERWRITE if options.overwrite else IfExists.RESUME
    for path, config in draft.outputs():
        check_results(path, config, seed, mode, draft.tsv_kind)
    return draft


def sound_accounting(options: JobOptions, shape: tuple[int, int, int]) -> dict[str, float]:
    """Sound noise: ``effective_alpha``, the certificate's failure probability with the sampler's departure
    from the exact discretized Gaussian added (docs/guarantees.md), for the most draws one image can take;
    empty for float noise (whose departures are not accounted: docs/guarantees.md)."""
    if options.noise is not NoiseKind.SOUND:
        return {}
    from densepure.models import get_preset
    from densepure.noise import added_failure, sound_table

    smoothing = options.smoothing(get_preset(options.preset).schedule)
    added = added_failure(sound_table(options.levels, smoothing.noise_sigma()), math.prod(shape),
                          options.task().max_draws())
    return {"effective_alpha": math.nextafter(options.alpha + added, math.inf)}


def _class_warnings(classes: int, dataset: Dataset) -> tuple[str, ...]:
    """A classifier with more classes than the data can run, but is most often the wrong one (an ImageNet
    classifier on CIFAR-10): say so. (Fewer classes than the data is an error: see :func:`build_engine`.)"""
    if dataset.num_classes is None or classes <= dataset.num_classes or getattr(dataset, "classes_inferred", False):
        return ()
    return (f"the classifier has {classes} classes but the data ({dataset.name}) has {dataset.num_classes}: "
            f"its predictions {dataset.num_classes}..{classes - 1} can never be correct; is it the classifier "
            "trained on this data?",)


def run(job: Job, progress: Progress | None = None) -> tuple[Path, list[ImageRecord]]:
    """Certify the job's images into ``options.output`` (resuming a matching earlier run), and the
    ``k``-chain results of ``also_chains`` into their own files (:meth:`JobOptions.prefix_output`)."""
    opts = job.options
    mode = IfExists.OVERWRITE if opts.overwrite else IfExists.RESUME
    with ExitStack() as stack, torch.inference_mode():
        writers = [stack.enter_context(open_results(path, config, job.seed, mode, job.tsv_kind))
                   for path, config in job.outputs()]
        extra = dict(zip(opts.also_chains, writers[1:]))
        records = run_dataset(job.engine, job.dataset, job.indices, job.task, job.seed, writers[0], progress, extra)
        for writer in writers:  # complete: image order, as Cohen's files (an interrupted run stays as decided)
            writer.sort_rows()
    return Path(opts.output), records
