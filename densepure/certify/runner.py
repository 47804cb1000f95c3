"""Certify or predict a selection of dataset images through the engine, one result line per image,
resumable (result files: :mod:`densepure.certify.results`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from densepure.certify.records import ImageRecord
from densepure.certify.results import ResultWriter
from densepure.certify.tasks import Task
from densepure.data.datasets import Dataset
from densepure.data.images import validate_image
from densepure.engine.engine import Engine, ImageRequest

ProgressHook = Callable[[ImageRecord, int], None]


def run_dataset(engine: Engine, dataset: Dataset, indices: Sequence[int], task: Task, seed: int,
                writer: ResultWriter, on_image: ProgressHook | None = None,
                extra: Mapping[int, ResultWriter] | None = None) -> list[ImageRecord]:
    """Run ``task`` on ``dataset[i]`` for each ``i`` in ``indices`` not already in every writer.

    Every image's noise is keyed by ``(seed, i)``. Each image is validated ((C,H,W) in [0,1], finite)
    before any sampling, so a bad image stops the run without a half-written line. Records are written
    in completion order; each line is whole and flushed. ``time`` is the wall time from an image's
    admission to its decision (images overlap, so these add up to more than the run). ``extra[k]``
    receives the records of the first ``k`` chains of each draw (the engine must count those
    ``chain_prefixes``). Radii use the engine's own ``smoothing.sigma``. Returns the main records.
    """
    extra = dict(extra or {})
    writers = [writer, *extra.values()]
    labels: dict[int, int] = {}
    starts: dict[int, float] = {}
    sigma = engine.smoothing.sigma

    def requests():
        for idx in indices:
            if all(idx in w.finished for w in writers):
                continue
            x, label = dataset[idx]
            x = validate_image(x, name=f"image {idx}")
            labels[idx], starts[idx] = int(label), time.perf_counter()
            yield ImageRequest(idx, x, task.policy(engine.num_classes, sigma), seed, noise_id=idx)

    done = []
    for request in engine.run(requests()):
        idx, policy = request.key, request.policy
        label, seconds = labels.pop(idx), time.perf_counter() - starts.pop(idx)
        result = getattr(policy, "result", None)
        sources = [(writer, policy.counts), *((w, policy.prefix_counts[k]) for k, w in extra.items())]
        written = []
        for out, counts in sources:
            if idx in out.finished:
                continue
            record = task.record(idx, label, seconds, counts, sigma, result)
            out.write(record)
            written.append(record)
            if out is writer:
                done.append(record)
        if on_image is not None:
            on_image(written[0], policy.total_draws)
    return done
