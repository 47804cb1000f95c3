"""Certify or predict a selection of dataset images, one result line per image, resumable.

Two drivers share the record format: :func:`run_dataset` (the plain path, one image at a time
through a :class:`~densepure.certify.procedures.LabelCounter`) and :func:`run_dataset_engine`
(all images through the engine, which returns per-image policies holding the same counts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from densepure.certify.procedures import CertifyParams, LabelCounter, certify, certify_sequential, predict
from densepure.certify.results import ImageRecord, ResultRow, ResultWriter
from densepure.certify.sequential import SequentialPlan, SequentialResult
from densepure.certify.stats import certify_from_counts, predict_from_counts
from densepure.data.datasets import Dataset
from densepure.data.images import validate_image
from densepure.noise import NoisePhase


@dataclass(frozen=True)
class Task:
    """What to compute per image: CERTIFY (``plan`` None), sequential at ``plan.radius``, or PREDICT."""

    params: CertifyParams
    sigma: float
    plan: SequentialPlan | None = None
    predict_only: bool = False


ProgressHook = Callable[[ImageRecord, int], None]


def _tuple(counts: np.ndarray | None) -> tuple[int, ...]:
    return () if counts is None else tuple(int(c) for c in counts)


def make_record(task: Task, idx: int, label: int, seconds: float, counts0: np.ndarray | None,
                counts: np.ndarray, sequential: SequentialResult | None = None) -> ImageRecord:
    """The result line and sidecar record of one image from its counts (and sequential result)."""
    p = task.params
    if task.predict_only:
        pred = predict_from_counts(counts, p.alpha)
        predicted, radius, extra, n0, n = pred.label, 0.0, {"p_value": pred.p_value}, 0, p.n
    elif sequential is not None:
        predicted = sequential.label
        radius = sequential.radius_requested if sequential.certified else 0.0
        extra = {"decision": sequential.decision.value, "n_used": sequential.n_used, "p_a_lower": sequential.p_a_lower}
        n0, n = p.n0, sequential.n_used
    else:
        cert = certify_from_counts(counts0, counts, task.sigma, p.alpha)
        predicted, radius, extra, n0, n = cert.label, cert.radius, {"p_a_lower": cert.p_a_lower}, p.n0, p.n
    row = ResultRow(idx=idx, label=int(label), predict=int(predicted), radius=float(radius),
                    correct=bool(predicted == label), time=seconds)
    return ImageRecord(row=row, n0=n0, n=int(n), selection_counts=_tuple(counts0),
                       estimation_counts=_tuple(counts), extra=extra)


def _plain_image(counter: LabelCounter, task: Task, x, idx: int, label: int) -> tuple[ImageRecord, int]:
    start = time.perf_counter()
    if task.predict_only:
        out = predict(counter, x, idx, task.params.n, task.params.alpha)
        return make_record(task, idx, label, time.perf_counter() - start, None, out.counts), task.params.n
    if task.plan is not None:
        seq = certify_sequential(counter, x, idx, task.params.n0, task.plan)
        return make_record(task, idx, label, time.perf_counter() - start, seq.counts_selection,
                           seq.counts_estimation, seq.result), seq.draws
    out = certify(counter, x, idx, task.params, task.sigma)
    return make_record(task, idx, label, time.perf_counter() - start, out.counts_selection,
                       out.counts_estimation), out.draws


def run_dataset(counter: LabelCounter, dataset: Dataset, indices: Sequence[int], task: Task,
                writer: ResultWriter, on_image: ProgressHook | None = None) -> list[ImageRecord]:
    """Run ``task`` on ``dataset[i]`` for each ``i`` in ``indices`` not already in ``writer.finished``.

    Each image is validated ((C,H,W) in [0,1], finite) before any sampling, so a bad image stops the
    run without a half-written line. Returns the records written by this call.
    """
    done = []
    for idx in indices:
        if idx in writer.finished:
            continue
        x, label = dataset[idx]
        record, draws = _plain_image(counter, task, validate_image(x, name=f"image {idx}"), int(idx), int(label))
        writer.write(record)
        done.append(record)
        if on_image is not None:
            on_image(record, draws)
    return done


def policy_for(task: Task, num_classes: int):
    """The engine policy that samples what ``task`` needs for one image."""
    from densepure.engine.policy import FixedPolicy, SequentialPolicy

    p = task.params
    if task.predict_only:
        return FixedPolicy(num_classes, {NoisePhase.PREDICT: p.n})
    if task.plan is not None:
        return SequentialPolicy(num_classes, p.n0, task.plan)
    return FixedPolicy(num_classes, {NoisePhase.SELECTION: p.n0, NoisePhase.ESTIMATION: p.n})


def run_dataset_engine(engine, dataset: Dataset, indices: Sequence[int], task: Task, writer: ResultWriter,
                       on_image: ProgressHook | None = None,
                       extra: Mapping[int, ResultWriter] | None = None) -> list[ImageRecord]:
    """Like :func:`run_dataset`, with all images streamed through one engine (same counts, same records).

    Records are written in completion order; each line is whole and flushed. ``time`` is the wall
    time from an image's admission to its decision (images overlap, so these add up to more than the run).
    ``extra[k]`` receives the records of the first ``k`` chains of each draw (the engine must run with
    those ``chain_prefixes``); an image is sampled unless every writer has it. Returns the main records.
    """
    extra = dict(extra or {})
    writers = [writer, *extra.values()]
    labels: dict[int, int] = {}
    starts: dict[int, float] = {}

    def jobs():
        for idx in indices:
            if all(idx in w.finished for w in writers):
                continue
            x, label = dataset[idx]
            x = validate_image(x, name=f"image {idx}")
            labels[idx], starts[idx] = int(label), time.perf_counter()
            yield idx, x, policy_for(task, engine.num_classes)

    done = []
    for idx, policy in engine.run(jobs()):
        label, seconds = labels.pop(idx), time.perf_counter() - starts.pop(idx)
        sources = [(writer, policy.counts), *((w, policy.prefix_counts[k]) for k, w in extra.items())]
        written = []
        for out, counts in sources:
            if idx in out.finished:
                continue
            final = counts[NoisePhase.PREDICT if task.predict_only else NoisePhase.ESTIMATION]
            record = make_record(task, idx, label, seconds, counts.get(NoisePhase.SELECTION), final,
                                 getattr(policy, "result", None))
            out.write(record)
            written.append(record)
            if out is writer:
                done.append(record)
        if on_image is not None:
            on_image(written[0], policy.total_draws)
    return done
