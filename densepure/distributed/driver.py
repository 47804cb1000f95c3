"""The driver of a cluster run: one result file, written as results arrive, from many workers.

Loop (:func:`drive`): every live worker holds up to ``depth`` chunks (so it starts the next one the moment
it returns one); the driver waits for any chunk to return, writes its finished images through the same
:class:`~densepure.results.files.ResultWriter` a single process uses (sidecar record, then TSV line,
each flushed), and refills. Images already in the result file are skipped, so a driver killed at any
moment resumes with no image lost or written twice: an image is in the file whole or not at all.

Order: rows are appended as images are decided; when every image of the run is in the file, the TSV is
put in image order (:meth:`~densepure.results.writer.ResultWriter.sort_rows`), as a single process does, so
a completed cluster run's TSV is the single-process one (times aside).

Faults: a worker that dies (or becomes unreachable) with chunks in flight is dropped and its chunks go
back to the front of the queue for the other workers; results are keyed by image (and draw range), so
nothing is counted twice. A chunk that loses ``MAX_ATTEMPTS`` workers, or the loss of the last worker,
stops the run with a ClusterError; what was written stays, and the same command resumes it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from densepure.certify.job import Job, JobOptions, prepare_draft
from densepure.certify.tasks import ImageResult
from densepure.data.datasets import Dataset
from densepure.data.images import validate_image
from densepure.distributed.cluster import ClusterError, RayPool, WorkerLost, connect, require_ray
from densepure.distributed.work import DrawSplits, ImageChunks, auto_chunk_size, chunk_draws
from densepure.distributed.worker import WorkerInfo
from densepure.results.records import IfExists, ImageRecord
from densepure.results.writer import ResultWriter, open_results

MAX_ATTEMPTS = 3  # a chunk that took down this many workers is not sent again
DEPTH = 2  # chunks queued per worker: it starts the next one as soon as it returns one


class RunObserver(Protocol):
    """What a cluster run reports as it goes (the CLI draws one progress bar from it)."""

    def started(self, images: int, plan: str, workers: Sequence[WorkerInfo]) -> None: ...

    def progressed(self, draws: int) -> None: ...

    def image_done(self, record: ImageRecord) -> None: ...

    def worker_lost(self, message: str, workers_left: int) -> None: ...


class _Silent:
    def started(self, images: int, plan: str, workers: Sequence[WorkerInfo]) -> None:
        pass

    def progressed(self, draws: int) -> None:
        pass

    def image_done(self, record: ImageRecord) -> None:
        pass

    def worker_lost(self, message: str, workers_left: int) -> None:
        pass


class Pool(Protocol):
    """Workers as the driver sees them (:class:`~densepure.distributed.cluster.RayPool`, or in-process ones):
    ``infos`` of the workers started, ``live`` ids, ``started`` count; a handle per chunk submitted."""

    infos: dict[int, WorkerInfo]

    def describe(self) -> str: ...

    @property
    def live(self) -> list[int]: ...

    @property
    def started(self) -> int: ...

    def submit(self, worker: int, chunk: Any) -> Any: ...

    def wait(self, handles: list[Any], timeout_s: float) -> list[Any]: ...

    def result(self, handle: Any) -> Any: ...

    def discard(self, worker: int) -> bool: ...


@dataclass
class ClusterJob:
    """A certification job for a cluster: options with the seed fixed, the dataset and the selected indices
    (no model: the workers load them)."""

    options: JobOptions
    dataset: Dataset
    indices: list[int]
    draft: Job

    def describe(self, command: str = "certify") -> str:
        s, o, x, c = self.options.smoothing, self.options.sampling, self.options.execution, self.options.cluster
        chains = f"K={s.num_chains} b={s.steps} " if s.mode.value == "densepure" else ""
        stats = f"n={o.n}" if o.predict else f"n0={o.n0} n={o.n}" + (f" radius={o.radius}" if o.radius is not None
                                                                     else "")
        split = f", draws split {c.split_draws} ways" if c.split_draws > 1 else ""
        noise = f" noise={s.noise.value}" + (f" levels={s.levels}" if s.levels is not None else "") if s.noise else ""
        return (f"{command} on Ray ({c.ray}{split}): {len(self.indices)} images, mode={s.mode.value} sigma={s.sigma}"
                f"{noise} {chains}{stats} alpha={o.alpha} seed={o.seed} device={x.device} backend={x.backend.value} "
                f"precision={x.precision.value}")


def prepare_cluster_job(options: JobOptions) -> ClusterJob:
    """Fix the seed (drawn once, here, or resumed) and select the images; load no model."""
    if options.cluster.ray is None:
        raise ClusterError("prepare_cluster_job needs options.ray (local, auto or a cluster address)")
    require_ray()  # before anything is written
    draft = prepare_draft(options)
    return ClusterJob(draft.options, draft.dataset, draft.indices, draft)


def run_cluster_job(job: ClusterJob, observer: RunObserver | None = None, *, threads: int | None = None,
                    chunk_size: int | None = None, start_timeout_s: float = 600.0, timeout_s: float | None = None,
                    local_cpus: int | None = None) -> tuple[Path, list[ImageRecord]]:
    """Certify ``job`` on the Ray cluster ``job.options.ray`` into ``options.output`` (and the ``--also-K``
    files), resuming a matching earlier run. Returns the path and the records written by this call.

    ``threads``: torch threads per CPU worker; ``chunk_size``: images per chunk (default
    :func:`~densepure.distributed.work.auto_chunk_size`); ``start_timeout_s``: how long workers may take to
    start; ``timeout_s``: stop (ClusterError) if the run takes longer; ``local_cpus``: CPUs of a ``local``
    instance (default all).
    """
    opts = job.options

    def start(stack: ExitStack, image_shape: tuple[int, int, int]) -> RayPool:
        ray = stack.enter_context(connect(opts.cluster.ray, num_cpus=local_cpus))
        pool = RayPool.start(ray, opts, image_shape, job.dataset.num_classes, threads, start_timeout_s)
        stack.callback(pool.close)
        return pool

    return execute(job, start, observer, chunk_size=chunk_size, timeout_s=timeout_s)


def execute(job: ClusterJob, start_pool: Callable[[ExitStack, tuple[int, int, int]], Pool],
            observer: RunObserver | None = None, *, chunk_size: int | None = None,
            timeout_s: float | None = None) -> tuple[Path, list[ImageRecord]]:
    """Open the result files (resume: skip what they hold), then, if any image is left, start the workers
    (``start_pool(stack, image_shape)``, closed with ``stack``) and :func:`drive` them."""
    opts, observer = job.options, observer or _Silent()
    sampling, output = opts.sampling, Path(opts.results.output)
    mode = IfExists.OVERWRITE if opts.results.overwrite else IfExists.RESUME
    with ExitStack() as stack:
        writers = [stack.enter_context(open_results(path, config, sampling.seed, mode, job.draft.tsv_kind,
                                                    job.draft.read_old))
                   for path, config in job.draft.outputs()]
        writer, extra = writers[0], dict(zip(sampling.also_chains, writers[1:], strict=True))
        todo = [idx for idx in job.indices if not all(idx in w.finished for w in writers)]
        if not todo:
            _sort(writers)
            return output, []
        pool = start_pool(stack, tuple(job.dataset[todo[0]][0].shape))
        _check_devices(pool, job.draft.record.get("device"))
        observer.started(len(todo), pool.describe(), list(pool.infos.values()))
        info, load = next(iter(pool.infos.values())), _loader(job.dataset)
        if opts.cluster.split_draws > 1:
            queue = DrawSplits(todo, load, opts.task(), info.num_classes, info.sigma, sampling.also_chains,
                               opts.cluster.split_draws, open_limit=DEPTH * len(pool.live),
                               lookahead=opts.execution.lookahead)
        else:
            queue = ImageChunks(todo, load, chunk_size or auto_chunk_size(len(todo), len(pool.live)))
        records = drive(pool, queue, writer, extra, observer, output, timeout_s)
        _sort(writers)  # complete: image order, as one process writes it
    return output, records


def _sort(writers: Sequence[ResultWriter]) -> None:
    for writer in writers:
        writer.sort_rows()


def _check_devices(pool: Pool, recorded: str | None) -> None:
    """The workers must compute on the device type the result file records (``densepure.certify.job.device_type``):
    CPU and CUDA counts may differ, so a file holds one of them. Checked before any image runs."""
    found = sorted({info.device.split(":")[0] for info in pool.infos.values()})
    if recorded is not None and found != [recorded]:
        raise ClusterError(f"the workers run on {', '.join(found)} but this run records device {recorded!r} (what "
                           "--device gives on this driver): pass --device cpu or --device cuda to say which the "
                           "cluster should use")


def _loader(dataset: Dataset):
    def load(idx: int):
        image, label = dataset[idx]
        image = validate_image(image, name=f"image {idx}")
        return image.detach().cpu().numpy().astype(np.float32, copy=False), int(label)

    return load


def drive(pool: Pool, queue: ImageChunks | DrawSplits, writer: ResultWriter, extra: Mapping[int, ResultWriter],
          observer: RunObserver, output: Path | str, timeout_s: float | None = None, poll_s: float = 1.0) -> list[ImageRecord]:
    """Keep every live worker busy until ``queue`` is done; write each finished image once (module docstring)."""
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    in_flight: dict[Any, tuple[int, Any]] = {}
    busy: Counter[int] = Counter()
    written: list[ImageRecord] = []
    last_loss = ""
    while not queue.done:
        for worker in pool.live:
            while busy[worker] < DEPTH and (chunk := queue.next_chunk()) is not None:
                in_flight[pool.submit(worker, chunk)] = (worker, chunk)
                busy[worker] += 1
        if not in_flight:
            if not pool.live:
                raise ClusterError(f"all {pool.started} workers were lost (last: {last_loss}); {len(written)} images "
                                   f"of this run are saved in {output}: run the same command again to resume")
            raise RuntimeError("work remains but no chunk is in flight")  # a queue bug
        if time.monotonic() > deadline:
            raise ClusterError(f"the run took longer than {timeout_s:g} s; {len(written)} images of this run are "
                               f"saved in {output}: run the same command again to resume")
        for handle in pool.wait(list(in_flight), poll_s):
            worker, chunk = in_flight.pop(handle)
            busy[worker] -= 1
            try:
                payload = pool.result(handle)
            except WorkerLost as lost:
                last_loss = str(lost)
                if pool.discard(worker):
                    observer.worker_lost(f"worker {worker} lost ({lost}); its chunks go to the others",
                                         len(pool.live))
                if chunk.attempts + 1 >= MAX_ATTEMPTS:
                    raise ClusterError(f"images {chunk.indices} were in flight on {MAX_ATTEMPTS} workers that were "
                                       f"lost (last: {lost}); {len(written)} images of this run are saved in "
                                       f"{output}: run the same command again to resume") from None
                queue.requeue(chunk)
                continue
            observer.progressed(chunk_draws(chunk, payload))
            for result in queue.complete(chunk, payload):
                if _write(result, writer, extra):
                    written.append(result.record)
                observer.image_done(result.record)
    return written


def _write(result: ImageResult, writer: ResultWriter, extra: Mapping[int, ResultWriter]) -> bool:
    """Write an image to the files that do not have it yet (like the single-process runner)."""
    idx = result.record.row.idx
    fresh = idx not in writer.finished
    if fresh:
        writer.write(result.record)
    for k, out in extra.items():
        if idx not in out.finished:
            out.write(result.prefixes[k])
    return fresh
