"""A certification job: options -> data, checks, models and engine -> result file -> summary.

The CLI builds :class:`~densepure.certify.options.JobOptions` and calls :func:`prepare` and :func:`run`
(:func:`prepare_draft`, :func:`unfinished` and :func:`load_models` when it first asks whether the run is
already complete); library users can do the same. :func:`prepare` checks everything that needs no model first (the data,
its shape, the output files and whether they can be resumed) and only then loads the models, so a
mistake costs a second, not a model load, and no result file is created before the run can start.

Resume identity is content, not paths: the sidecar records the sha256 of the data, the diffusion
checkpoint and the classifier's files (and, for exported backends, the graphs' manifests), so a file
replaced at the same path cannot be mixed into a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from densepure.certify.loading import build_engine
from densepure.certify.options import _NOT_RECORDED, JobOptions
from densepure.certify.runner import Progress, run_dataset
from densepure.certify.tasks import PredictTask, Task
from densepure.data.datasets import Dataset, data_levels, open_dataset, select_indices
from densepure.diffusion import Mode, NoiseKind
from densepure.engine.backends.select import BackendKind, check_calibration_split
from densepure.engine.device import resolve_device
from densepure.engine.engine import Engine
from densepure.errors import ConfigError, DensePureError
from densepure.noise import draw_seed
from densepure.noise.sound import grid_indices
from densepure.results.records import IfExists, ImageRecord, TsvKind
from densepure.results.writer import check_results, open_results

__all__ = ["Job", "JobOptions", "build_engine", "load_models", "prepare", "prepare_draft", "run", "unfinished"]


@dataclass
class Job:
    options: JobOptions
    engine: Engine
    dataset: Dataset
    indices: list[int]
    task: Task
    seed: int
    record: dict  # the sidecar configuration: options, the device type, content hashes
    warnings: tuple[str, ...] = field(default=())  # what may be a mistake but can run (the CLI prints them)

    @property
    def tsv_kind(self) -> TsvKind:
        """The result files' format: Cohen's predict.py for PREDICT, certify.py otherwise."""
        return TsvKind.PREDICT if isinstance(self.task, PredictTask) else TsvKind.CERTIFY

    def describe(self, command: str = "certify") -> str:
        """One line: what the job runs, with which seed, where."""
        m, o, x, s = self.options.models, self.options.sampling, self.options.execution, self.engine.smoothing
        chains = f"K={s.num_chains} b={s.steps} " if s.mode is Mode.DENSEPURE else ""
        stats = f"n={o.n}" if o.predict else f"n0={o.n0} n={o.n}" + (f" radius={o.radius}" if o.radius is not None
                                                                     else "")
        stats += f" budget={o.budget} (anytime radius)" if o.budget is not None else ""
        noise = f"noise={s.noise.value}" + (f" levels={s.levels}" if s.sound else "")
        resize = f" resize={m.resize.value}" if m.resize is not None else ""
        return (f"{command}: {len(self.indices)} images, preset={m.preset} classifier={m.classifier}{resize} "
                f"mode={s.mode.value} sigma={s.sigma} {noise} {chains}{stats} "
                f"alpha={o.alpha} seed={self.seed} device={self.engine.device} backend={x.backend.value} "
                f"precision={x.precision.value} kernels={self.engine.kernels.name}")

    def read_old(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """How this release reads a configuration an earlier run recorded, before comparing it with
        :attr:`record` (``read_old`` of :func:`~densepure.results.writer.open_results`): settings that change
        no label are left out (``kernels``, recorded by earlier releases: every kernel choice gives the same
        counts, by test), and a device recorded as requested (``auto``, ``cuda:1``) is read as the device
        type it gives here, which is what is recorded now."""
        old = {k: v for k, v in config.items() if k not in _NOT_RECORDED}
        if isinstance(old.get("device"), str):
            try:
                old["device"] = device_type(old["device"], self.options.cluster.ray is not None)
            except ConfigError:
                pass  # a device this machine cannot name: compared as recorded (and found different)
        return old

    def prefix_record(self, k: int) -> dict:
        """The configuration of the ``k``-chain results read from this run."""
        return {**self.record, "num_chains": k, "also_chains": [],
                "computed_as": f"first {k} of {self.options.smoothing.num_chains} chains"}

    def outputs(self) -> list[tuple[Path, dict]]:
        """Every result file of the job with its configuration: the main one, then each ``--also-K``."""
        o = self.options
        return [(Path(o.results.output), self.record),
                *((o.prefix_output(k), self.prefix_record(k)) for k in o.sampling.also_chains)]


def _dataset(options: JobOptions) -> tuple[Dataset, Path]:
    """The data and the file or directory it was read from (for its content hash)."""
    if options.selection.data is not None:
        return open_dataset(options.selection.data), Path(options.selection.data)
    if options.models.preset != "digits":
        raise ConfigError(f"preset {options.models.preset!r} needs --data (a CIFAR-10 batch, an image folder, .npz or image)")
    from densepure.data.arrays import ArrayDataset
    from densepure.models.digits import PIXEL_LEVELS, load_digits_test_split
    from densepure.models.presets import digits_asset_path

    images, labels = load_digits_test_split()
    dataset = ArrayDataset(images.numpy(), labels.numpy(), name="digits-test", num_classes=10, levels=PIXEL_LEVELS)
    return dataset, digits_asset_path("test_split.npz")


def _resumed_seed(options: JobOptions) -> int:
    """An unset seed is drawn from the OS, except when resuming: then the run's recorded seed."""
    from densepure.results.files import read_sidecar, sidecar_path

    output = options.results.output
    if not options.results.overwrite and sidecar_path(output).is_file():
        try:
            return int(read_sidecar(output).header.seed)
        except (DensePureError, ValueError):
            pass  # unreadable sidecar: open_results decides (it restarts or reports the problem)
    return draw_seed()


def _check_shape(options: JobOptions, dataset: Dataset, source: Path) -> tuple[int, int, int]:
    from densepure.models import get_preset

    preset = options.models.preset
    cfg = get_preset(preset).unet_config
    want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    got = tuple(int(d) for d in dataset[0][0].shape)
    if got != want:
        raise ConfigError(f"images must be (N, {', '.join(map(str, want))}) for preset {preset}, got "
                          f"(N, {', '.join(map(str, got))}) from {source}")
    return want


def content_hashes(options: JobOptions, data_source: Path) -> dict[str, object]:
    """sha256 of what the results are computed from: the data, the checkpoint, the classifier, the graphs."""
    from densepure.hashing import tree_sha256
    from densepure.models import resolve_checkpoint
    from densepure.models.sources import ClassifierSpec, classifier_source_path

    models, execution = options.models, options.execution
    content: dict[str, object] = {"data": tree_sha256(data_source)}
    if execution.backend is BackendKind.TORCH:
        if options.smoothing.mode is not Mode.GAUSSIAN:
            content["checkpoint"] = tree_sha256(resolve_checkpoint(models.preset, models.checkpoint))
        content["classifier"] = tree_sha256(classifier_source_path(ClassifierSpec.parse(models.classifier)))
    else:
        graphs = sorted(Path(execution.artifacts).glob("*.manifest.json"))
        content["artifacts"] = {p.name: tree_sha256(p) for p in graphs}
    return content


def prepare(options: JobOptions) -> Job:
    """Check the data and the outputs, then load the models and build the engine; nothing is written yet."""
    if options.cluster.ray is not None:
        raise ConfigError("a --ray run is driven by densepure.distributed (prepare_cluster_job), not prepare()")
    return load_models(prepare_draft(options))


def load_models(draft: Job) -> Job:
    """The second half of :func:`prepare`: ``draft`` (from :func:`prepare_draft`) with its engine."""
    shape = tuple(int(d) for d in draft.dataset[0][0].shape)
    engine = build_engine(draft.options, shape, draft.dataset.num_classes)
    return replace(draft, engine=engine, warnings=_class_warnings(engine.num_classes, draft.dataset))


def unfinished(job: Job) -> list[int]:
    """The job's images that some result file does not hold yet, in selection order (read only; with
    ``--overwrite``, all of them). An image counts as held once its TSV row and its sidecar record are both
    there, as a resume counts it (:func:`~densepure.results.writer.open_results`). A file whose rows are not
    yet in image order (a run stopped between its last image and the sort), or that cannot be read, leaves
    every image unfinished, so that the run opens the file and completes it (or says what is wrong)."""
    from densepure.results.files import read_results, read_sidecar

    if job.options.results.overwrite:
        return list(job.indices)
    held = set(job.indices)
    try:
        for path, _ in job.outputs():
            rows = [row.idx for row in read_results(path)] if path.is_file() and path.stat().st_size else []
            if not rows or rows != sorted(rows):
                return list(job.indices)
            held &= set(rows) & {record.row.idx for record in read_sidecar(path).records}
    except (DensePureError, OSError):
        return list(job.indices)  # opening the file for the run says what is wrong, or repairs it
    return [idx for idx in job.indices if idx not in held]


def device_type(requested: str, cluster: bool = False) -> str:
    """The type of device the counts are computed on, ``cpu`` or ``cuda``: what the sidecar records (the two
    round differently, so their counts may differ; the device index and the spelling ``auto`` change no
    count). ``cluster``: for a Ray driver, whose workers run on the cluster's devices, not its own (``auto``
    is what it gives on the driver; the driver checks that the workers agree before any image runs)."""
    if not cluster:
        return resolve_device(requested).type
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(requested).type
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {requested!r}: use auto, cpu, cuda or cuda:N") from exc


def prepare_draft(options: JobOptions) -> Job:
    """:func:`prepare` without the models (``engine`` is None): seed, data, checks, sidecar record. A cluster
    driver uses it and leaves the models to its workers."""
    seed = options.sampling.seed if options.sampling.seed is not None else _resumed_seed(options)
    options = options.replace(seed=seed)
    dataset, source = _dataset(options)
    if not len(dataset):
        raise ConfigError(f"the dataset {source} is empty")
    selection = options.selection
    indices = select_indices(len(dataset), selection.skip, selection.max)
    if not indices:
        raise ConfigError(f"--skip {selection.skip} --max {selection.max} select no image of {len(dataset)}")
    options = options.resolved(data_levels(dataset))
    shape = _check_shape(options, dataset, source)
    smoothing = options.smoothing
    if smoothing.noise is NoiseKind.SOUND:  # the first image now; the engine checks every image as it is submitted
        grid_indices(dataset[indices[0]][0], smoothing.levels, name=f"image {indices[0]} of {source}")
    device = device_type(options.execution.device, options.cluster.ray is not None)
    record = {**options.record(), **sound_accounting(options, shape), "device": device,
              "content": content_hashes(options, source)}
    run = options.execution
    if run.precision.quantized:  # a certified image must never be a calibration one
        check_calibration_split(run.artifacts, run.precision, record["content"]["data"], indices)
    draft = Job(options, None, dataset, indices, options.task(), seed, record)  # type: ignore[arg-type]
    mode = IfExists.OVERWRITE if options.results.overwrite else IfExists.RESUME
    for path, config in draft.outputs():
        check_results(path, config, seed, mode, draft.tsv_kind, draft.read_old)
    return draft


def sound_accounting(options: JobOptions, shape: tuple[int, int, int]) -> dict[str, float]:
    """Sound noise: ``effective_alpha``, the certificate's failure probability with the sampler's departure
    from the exact discretized Gaussian added (docs/guarantees.md), for the most draws one image can take;
    empty for float noise (whose departures are not accounted: docs/guarantees.md)."""
    if options.smoothing.noise is not NoiseKind.SOUND:
        return {}
    from densepure.models import get_preset
    from densepure.noise import added_failure, sound_table

    smoothing = options.smoothing_config(get_preset(options.models.preset).schedule)
    added = added_failure(sound_table(smoothing.levels, smoothing.noise_sigma()), math.prod(shape),
                          options.task().max_draws)
    return {"effective_alpha": math.nextafter(options.sampling.alpha + added, math.inf)}


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
    mode = IfExists.OVERWRITE if opts.results.overwrite else IfExists.RESUME
    with ExitStack() as stack, torch.inference_mode():
        writers = [stack.enter_context(open_results(path, config, job.seed, mode, job.tsv_kind, job.read_old))
                   for path, config in job.outputs()]
        extra = dict(zip(opts.sampling.also_chains, writers[1:], strict=True))
        records = run_dataset(job.engine, job.dataset, job.indices, job.task, job.seed, writers[0], progress, extra)
        for writer in writers:  # complete: image order, as Cohen's files (an interrupted run stays as decided)
            writer.sort_rows()
    return Path(opts.results.output), records
