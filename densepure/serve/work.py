"""What a request becomes for the engine loops: a :class:`Work` (images, one policy each, and how to answer),
its :data:`Outcome`, and the refusals of a loop that cannot take it. Messages only: no threads, no engine.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from densepure.certify.tasks import AnytimeTask, Task
from densepure.engine.policy import Policy
from densepure.errors import DensePureError
from densepure.noise import NoisePhase, draw_seed


class QueueFull(DensePureError):
    """The server is at a backpressure bound; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class NotAccepting(DensePureError):
    """The loop is not taking work: still loading, draining for shutdown, or failed to load."""


class FailKind(enum.Enum):
    CANCELLED = "cancelled"  # the client went away, its deadline passed, or DELETE
    BAD_INPUT = "bad_input"  # the engine refused an image (the protocol checks come first)
    MODEL_ERROR = "model_error"  # a model returned NaN/inf for a batch this work had rows in
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"  # its device failed while it was there; another device serves (the client retries)


@dataclass(frozen=True)
class ImageOutcome:
    """One decided image: ``label`` (-1 abstains), ``radius`` (certify: Cohen's; certify_radius: the
    requested radius when certified, else 0; predict: 0), ``draws`` (all phases), and the counts."""

    label: int
    radius: float
    draws: int
    selection_counts: np.ndarray
    estimation_counts: np.ndarray


@dataclass(frozen=True)
class WorkResult:
    images: tuple[ImageOutcome, ...]
    queue_wait_s: float


@dataclass(frozen=True)
class WorkFailed:
    kind: FailKind
    message: str


Outcome = WorkResult | WorkFailed


@dataclass(eq=False)
class Work:
    """A request's images ``(B, C, H, W)`` float32 in [0, 1], one policy each, and how to answer it.

    ``seed`` None draws a secret seed from the OS; image ``j`` has noise identity ``(seed, noise_id + j)``.
    ``on_done`` is called exactly once, on the loop thread, with the :data:`Outcome`. ``priority``: queued
    works enter the engine in increasing priority, then in order of submission. ``partial``: the policies
    are shares of other images' draws (:mod:`densepure.serve.split`): each image's outcome carries only its
    draws and raw counts, its owner reads the labels from the policy.
    """

    images: torch.Tensor
    policies: Sequence[Policy]
    task: Task
    on_done: Callable[[Outcome], None]
    draw_bound: int
    seed: int | None = None
    noise_id: int = 0
    priority: int = 0
    partial: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # progress, written by the loop thread only (enqueued and arrival: by submit, under the lock)
    enqueued: float = 0.0
    arrival: int = 0
    admitted: float | None = None
    submitted: int = 0
    outcomes: dict[int, ImageOutcome] = field(default_factory=dict)
    draws_done: int = 0

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = draw_seed()


def image_outcome(task: Task, policy: Policy, sigma: float, index: int) -> ImageOutcome:
    """The answer for one decided image, through the task's own record (so its statistics are the
    certify command's): label, radius, draws and the counts."""
    record = task.image_result(index, -1, policy, sigma, seconds=0.0).record
    classes = policy.num_classes
    selection = policy.counts.get(NoisePhase.SELECTION, np.zeros(classes, dtype=np.int64))
    estimation = policy.counts.get(NoisePhase.ESTIMATION, policy.counts.get(NoisePhase.PREDICT))
    return ImageOutcome(record.row.predict, record.row.radius, policy.total_draws, selection.copy(),
                        estimation.copy())


def share_outcome(policy: Policy) -> ImageOutcome:
    """A share of an image's draws (a partial work): no statistics, its draws and raw counts only."""
    classes = policy.num_classes
    zeros = np.zeros(classes, dtype=np.int64)
    return ImageOutcome(-1, 0.0, policy.total_draws, policy.counts.get(NoisePhase.SELECTION, zeros).copy(),
                        policy.counts.get(NoisePhase.ESTIMATION, policy.counts.get(NoisePhase.PREDICT, zeros)).copy())


def anytime_view(task: Task, policies: Sequence[Policy]) -> list[dict | None] | None:
    """``certify_anytime``: each image's anytime certificate so far (``{label, radius, p_a_lower, n}``,
    None before its selection is complete), or None for the other tasks. The certificates are immutable
    values the loop thread replaces as the radius grows, so reading them needs no lock of their own."""
    if not isinstance(task, AnytimeTask):
        return None
    certificates = [getattr(policy, "certificate", None) for policy in policies]
    return [None if c is None else {"label": c.label, "radius": c.radius, "p_a_lower": c.p_a_lower, "n": c.n}
            for c in certificates]
