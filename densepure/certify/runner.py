"""Certify or predict a selection of dataset images, one result line per image, resumable."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from densepure.certify.procedures import (
    CertifyParams,
    LabelCounter,
    certify,
    certify_sequential,
    predict,
)
from densepure.certify.results import ImageRecord, ResultRow, ResultWriter
from densepure.certify.sequential import SequentialPlan
from densepure.data.datasets import Dataset
from densepure.data.images import validate_image


@dataclass(frozen=True)
class Task:
    """What to compute per image: CERTIFY (``plan`` None), sequential at ``plan.radius``, or PREDICT."""

    params: CertifyParams
    sigma: float
    plan: SequentialPlan | None = None
    predict_only: bool = False


ProgressHook = Callable[[ImageRecord, int], None]


def _one_image(counter: LabelCounter, task: Task, x, idx: int, label: int) -> tuple[ResultRow, ImageRecord, int]:
    start = time.perf_counter()
    p = task.params
    if task.predict_only:
        out = predict(counter, x, idx, p.n, p.alpha)
        pred, radius, extra = out.prediction.label, 0.0, {"p_value": out.prediction.p_value}
        counts0, counts, draws, n0 = (), tuple(int(c) for c in out.counts), p.n, 0
    elif task.plan is not None:
        out = certify_sequential(counter, x, idx, p.n0, task.plan)
        res = out.result
        pred = res.label if res.certified else -1
        radius = res.radius_requested if res.certified else 0.0
        extra = {"decision": res.decision.value, "n_used": res.n_used, "p_a_lower": res.p_a_lower}
        counts0, counts, draws, n0 = tuple(out.counts_selection), tuple(out.counts_estimation), out.draws, p.n0
    else:
        out = certify(counter, x, idx, p, task.sigma)
        pred, radius = out.certificate.label, out.certificate.radius
        extra = {"p_a_lower": out.certificate.p_a_lower}
        counts0, counts, draws, n0 = tuple(out.counts_selection), tuple(out.counts_estimation), out.draws, p.n0
    row = ResultRow(idx=idx, label=int(label), predict=int(pred), radius=float(radius),
                    correct=bool(pred == label), time=time.perf_counter() - start)
    n_used = extra.get("n_used", p.n)
    record = ImageRecord(row=row, n0=n0, n=int(n_used), selection_counts=tuple(int(c) for c in counts0),
                         estimation_counts=tuple(int(c) for c in counts), extra=extra)
    return row, record, draws


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
        x = validate_image(x, name=f"image {idx}")
        _, record, draws = _one_image(counter, task, x, int(idx), int(label))
        writer.write(record)
        done.append(record)
        if on_image is not None:
            on_image(record, draws)
    return done
