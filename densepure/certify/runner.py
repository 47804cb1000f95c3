"""Certify or predict a selection of dataset images through the engine, one result line per image,
resumable (result files: :mod:`densepure.results.files`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from densepure.certify.tasks import ImageResult, Task
from densepure.data.datasets import Dataset
from densepure.data.images import validate_image
from densepure.engine.engine import Engine, EngineStats, ImageRequest
from densepure.errors import InputError
from densepure.results.records import ImageRecord
from densepure.results.writer import ResultWriter

StepHook = Callable[[EngineStats], None]


class Progress(Protocol):
    """What a run reports as it goes: how many images it will sample, each decided image with the draws
    it took, and the engine's cumulative stats after every step (draws inside long images)."""

    def start(self, images: int) -> None: ...

    def image(self, record: ImageRecord, draws: int) -> None: ...

    def step(self, stats: EngineStats) -> None: ...


def certify_images(engine: Engine, dataset: Dataset, indices: Iterable[int], task: Task, seed: int,
                   prefixes: Sequence[int] = (), on_step: StepHook | None = None) -> Iterator[ImageResult]:
    """Run ``task`` on ``dataset[i]`` for each ``i`` in ``indices``; yield results in completion order.

    Every image's noise is keyed by ``(seed, i)``, so results do not depend on which process or in which
    order an image runs. Each image is validated ((C,H,W) in [0,1], finite) before any sampling.
    ``time`` is the image's own share of the engine's time (every step's time split evenly among the
    images in flight), so the column adds up to the run's sampling time. ``prefixes`` (the engine must count those ``chain_prefixes``) adds the
    records of each draw's first ``k`` chains. Radii use the engine's own ``smoothing.sigma``. A label
    outside the classifier's classes is refused before the image is sampled.
    """
    labels: dict[int, int] = {}
    sigma = engine.smoothing.sigma

    def requests():
        for idx in indices:
            x, label = dataset[idx]
            x = validate_image(x, name=f"image {idx}")
            if not -1 <= int(label) < engine.num_classes:
                raise InputError(f"image {idx} has label {int(label)}, but the classifier has {engine.num_classes} "
                                 f"classes (0..{engine.num_classes - 1}; -1 means unknown)")
            labels[idx] = int(label)
            yield ImageRequest(idx, x, task.policy(engine.num_classes, sigma), seed, noise_id=idx)

    for request in engine.run(requests(), on_step):
        yield task.image_result(request.key, labels.pop(request.key), request.policy, sigma, tuple(prefixes))


def run_dataset(engine: Engine, dataset: Dataset, indices: Sequence[int], task: Task, seed: int,
                writer: ResultWriter, progress: Progress | None = None,
                extra: Mapping[int, ResultWriter] | None = None) -> list[ImageRecord]:
    """:func:`certify_images` for each ``i`` in ``indices`` not already in every writer, each record
    written (whole and flushed) as its image is decided; ``extra[k]`` receives the ``k``-chain records.
    Returns the main records written."""
    extra = dict(extra or {})
    writers = [writer, *extra.values()]
    todo = [idx for idx in indices if not all(idx in w.finished for w in writers)]
    if progress is not None:
        progress.start(len(todo))
    done = []
    on_step = progress.step if progress is not None else None
    for result in certify_images(engine, dataset, todo, task, seed, tuple(extra), on_step):
        idx = result.record.row.idx
        if idx not in writer.finished:
            writer.write(result.record)
            done.append(result.record)
        for k, out in extra.items():
            if idx not in out.finished:
                out.write(result.prefixes[k])
        if progress is not None:
            progress.image(result.record, result.draws)
    return done
