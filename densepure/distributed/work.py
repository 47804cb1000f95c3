"""The driver's work queue: which images (or which draw ranges of an image) go to a worker next, and what
comes back. Pure data structures: no Ray, no tensors on a device, testable with in-process workers.

Two kinds of chunk, both shipped with their images (the driver reads the dataset once; a worker needs no
path to it and the images of a chunk weigh little against minutes of sampling):

* :class:`ImageChunks` - a chunk is a few whole images. The worker certifies them with
  :func:`~densepure.certify.runner.certify_images`, exactly the single-process code, and returns their
  :class:`~densepure.certify.tasks.ImageResult`. Noise is keyed by (run seed, dataset index), so a result
  does not depend on which worker ran it, with which other images, or in which order.
* :class:`DrawSplits` (``--split-draws S``) - the driver holds each open image's sampling policy (the
  same ``task.policy`` a single process runs) and asks it for the draws it needs now: all of them for
  CERTIFY and PREDICT, or the selection plus the estimation draws up to the next look for sequential
  certification. Those draws are cut into ``S`` disjoint ranges per phase, one chunk each; workers
  return each draw's label (and its chain-prefix labels), which the driver records into the policy. The
  policy therefore sees exactly the labels of the draws a single process draws, so the counts, the
  looks at which a sequential test stops and the certificate are the single process's.

A split image's ``time`` is the sum of its parts' sampling times on the workers. A chunk lost with its worker
goes back to the front of the queue; results are keyed, so a result that arrives twice is counted once.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from densepure.certify.tasks import ImageResult, Task
from densepure.engine.policy import DrawRequest, FixedPolicy, Policy
from densepure.noise import NoisePhase

ImageLoader = Callable[[int], tuple[np.ndarray, int]]  # dataset index -> ((C, H, W) float32 in [0, 1], label)


@dataclass(frozen=True, eq=False)
class WholeImage:
    """An image to certify on one worker: dataset index, pixels (C, H, W) float32 in [0, 1], true label."""

    idx: int
    image: np.ndarray
    label: int


@dataclass(frozen=True, eq=False)
class DrawPart:
    """Draws ``start..stop-1`` of each listed phase of one image (``ranges``: (phase, start, stop))."""

    key: tuple[int, int, int]  # (dataset index, round, part)
    idx: int
    image: np.ndarray
    ranges: tuple[tuple[NoisePhase, int, int], ...]

    @property
    def draws(self) -> int:
        return sum(stop - start for _, start, stop in self.ranges)


@dataclass(frozen=True)
class PartLabels:
    """What a worker returns for a :class:`DrawPart`: per phase, the label of each draw of its range
    (int32, draw ``start + i`` at ``i``), per chain prefix ``k`` the labels of the first ``k`` chains, and the
    time it took."""

    key: tuple[int, int, int]
    labels: dict[NoisePhase, np.ndarray]
    prefix_labels: dict[int, dict[NoisePhase, np.ndarray]]
    seconds: float  # the worker's sampling time for the part


@dataclass(frozen=True, eq=False)
class Chunk:
    """One call to a worker: ``method`` ("certify" or "sample") on ``items``; ``attempts``: workers lost with it."""

    number: int
    method: str
    items: tuple[WholeImage, ...] | tuple[DrawPart, ...]
    attempts: int = 0

    @property
    def indices(self) -> list[int]:
        return sorted({item.idx for item in self.items})


def chunk_draws(chunk: Chunk, payload: Sequence[ImageResult] | Sequence[PartLabels]) -> int:
    """Draws a returned chunk took (for the progress rate)."""
    if chunk.method == "certify":
        return sum(result.draws for result in payload)
    return sum(part.draws for part in chunk.items)


def auto_chunk_size(images: int, workers: int, slots: int = 8) -> int:
    """Images per chunk: at most the engine's image slots, and small enough that every worker gets about
    four chunks (the queue stays balanced to the end and a lost worker loses little)."""
    return max(1, min(slots, math.ceil(images / (4 * max(1, workers)))))


class ImageChunks:
    """Whole images, ``size`` per chunk, in the order of ``todo``; lost chunks are retried first."""

    def __init__(self, todo: Sequence[int], load: ImageLoader, size: int):
        self._todo = deque(todo)
        self._load, self._size = load, int(size)
        self._retry: deque[Chunk] = deque()
        self._left = set(todo)
        self._numbers = 0

    @property
    def done(self) -> bool:
        return not self._left

    def next_chunk(self) -> Chunk | None:
        if self._retry:
            return self._retry.popleft()
        if not self._todo:
            return None
        items = []
        while self._todo and len(items) < self._size:
            idx = self._todo.popleft()
            image, label = self._load(idx)
            items.append(WholeImage(idx, image, label))
        self._numbers += 1
        return Chunk(self._numbers, "certify", tuple(items))

    def requeue(self, chunk: Chunk) -> None:
        self._retry.appendleft(replace(chunk, attempts=chunk.attempts + 1))

    def complete(self, chunk: Chunk, results: Sequence[ImageResult]) -> list[ImageResult]:
        """The results of ``chunk`` not seen before (each image is finished once)."""
        expected = {item.idx for item in chunk.items}
        got = {result.record.row.idx for result in results}
        if got != expected:
            raise RuntimeError(f"chunk {chunk.number} asked for images {sorted(expected)}, got {sorted(got)}")
        fresh = [result for result in results if result.record.row.idx in self._left]
        self._left -= got
        return fresh


@dataclass
class _OpenImage:
    """An image whose draws are being split: its policy (the driver's copy of the sampling decision),
    the parts of the current round still out, and the workers' sampling time so far."""

    idx: int
    image: np.ndarray
    label: int
    policy: Policy
    seconds: float = 0.0
    round: int = 0
    pending: set[tuple[int, int, int]] = field(default_factory=set)


class DrawSplits:
    """Each image's draws, round by round, in ``parts`` disjoint ranges per phase (module docstring).

    At most ``open_limit`` images are open at once; parts of images already open go first, so images
    finish in about the order they were opened and memory stays bounded. ``lookahead``: a sequential
    policy's round may run past its next look (a round is a trip through the cluster, so by default it
    does); False: each round is exactly the draws the test reads.
    """

    def __init__(self, todo: Sequence[int], load: ImageLoader, task: Task, num_classes: int, sigma: float,
                 prefixes: Sequence[int], parts: int, open_limit: int, lookahead: bool = True):
        self._todo = deque(todo)
        self._load, self._task = load, task
        self._num_classes, self._sigma, self._prefixes = int(num_classes), float(sigma), tuple(prefixes)
        self._parts, self._open_limit = int(parts), max(1, int(open_limit))
        self._lookahead = bool(lookahead)
        self._open: dict[int, _OpenImage] = {}
        self._ready: deque[Chunk] = deque()
        self._numbers = 0

    @property
    def done(self) -> bool:
        return not self._todo and not self._open

    def next_chunk(self) -> Chunk | None:
        while not self._ready and self._todo and len(self._open) < self._open_limit:
            idx = self._todo.popleft()
            image, label = self._load(idx)
            state = _OpenImage(idx, image, label, self._task.policy(self._num_classes, self._sigma))
            self._open[idx] = state
            self._next_round(state, front=False)
        return self._ready.popleft() if self._ready else None

    def requeue(self, chunk: Chunk) -> None:
        self._ready.appendleft(replace(chunk, attempts=chunk.attempts + 1))

    def complete(self, chunk: Chunk, payload: Sequence[PartLabels]) -> list[ImageResult]:
        """Record the labels of ``chunk``'s parts into their images' policies; the images now decided."""
        finished = []
        by_key = {labels.key: labels for labels in payload}
        for part in chunk.items:
            state = self._open.get(part.idx)
            if state is None or part.key not in state.pending:
                continue  # a duplicate of a part already counted
            record_part(state.policy, part.ranges, by_key[part.key], self._prefixes)
            state.seconds += by_key[part.key].seconds
            state.pending.discard(part.key)
            if state.policy.done:  # parts still out (a policy's look-ahead draws) are ignored when they return
                finished.append(self._finish(state))
            elif not state.pending:
                if state.policy.outstanding:
                    raise RuntimeError(f"image {part.idx}: every part returned but {state.policy.outstanding} "
                                       "draws are unaccounted for")
                self._next_round(state, front=True)
        return finished

    def _next_round(self, state: _OpenImage, front: bool) -> None:
        requests = state.policy.take(sys.maxsize, self._lookahead)
        if not requests:
            raise RuntimeError(f"image {state.idx}: its policy is not decided but asks for no draws")
        parts = split_draws(requests, self._parts)
        state.round += 1
        chunks = []
        for j, ranges in enumerate(parts):
            part = DrawPart((state.idx, state.round, j), state.idx, state.image, ranges)
            state.pending.add(part.key)
            self._numbers += 1
            chunks.append(Chunk(self._numbers, "sample", (part,)))
        if front:
            self._ready.extendleft(reversed(chunks))
        else:
            self._ready.extend(chunks)

    def _finish(self, state: _OpenImage) -> ImageResult:
        del self._open[state.idx]
        return self._task.image_result(state.idx, state.label, state.policy, self._sigma, self._prefixes,
                                       seconds=state.seconds)


def split_draws(requests: Sequence[DrawRequest], parts: int) -> list[tuple[tuple[NoisePhase, int, int], ...]]:
    """Cut the draws a policy handed out into ``parts`` shares: each phase's draws (which must be one
    contiguous run, as every policy hands them out in increasing order) into ``parts`` near-equal ranges;
    share ``j`` holds range ``j`` of every phase. Empty ranges and shares are dropped."""
    runs: dict[NoisePhase, list[int]] = {}
    for request in requests:
        runs.setdefault(request.phase, []).append(request.draw)
    bounds = {}
    for phase, draws in runs.items():
        start, stop = min(draws), max(draws) + 1
        if stop - start != len(draws) or len(set(draws)) != len(draws):
            raise RuntimeError(f"phase {phase.name}: the policy handed out draws that are not one contiguous run")
        bounds[phase] = [start + (stop - start) * j // parts for j in range(parts + 1)]
    shares = []
    for j in range(parts):
        share = tuple((phase, b[j], b[j + 1]) for phase, b in bounds.items() if b[j + 1] > b[j])
        if share:
            shares.append(share)
    return shares


Ranges = tuple[tuple[NoisePhase, int, int], ...]  # (phase, start, stop) of each phase a share covers


def record_part(policy: Policy, ranges: Ranges, labels: PartLabels, prefixes: Sequence[int]) -> None:
    """Record a share's labels into the policy that handed out its draws (draw order within each phase)."""
    for phase, start, stop in ranges:
        phase_labels = labels.labels[phase]
        prefix = {k: labels.prefix_labels[k][phase] for k in prefixes}
        if len(phase_labels) != stop - start or any(len(p) != stop - start for p in prefix.values()):
            raise RuntimeError(f"part {labels.key}: expected {stop - start} labels of phase {phase.name}")
        for i, draw in enumerate(range(start, stop)):
            policy.record(DrawRequest(phase, draw), int(phase_labels[i]), {k: int(p[i]) for k, p in prefix.items()})


class RangeLabels(FixedPolicy):
    """A :class:`FixedPolicy` over one share's ``ranges`` that also keeps each draw's label (and, per chain
    prefix ``k``, the label of its first ``k`` chains): what a worker, or a server's device, returns for a
    share of an image's draws."""

    def __init__(self, num_classes: int, ranges: Ranges, prefixes: Sequence[int] = ()):
        super().__init__(num_classes, {phase: range(start, stop) for phase, start, stop in ranges})
        self.labels = {phase: np.full(len(r), -1, dtype=np.int32) for phase, r in self.ranges.items()}
        self.prefix_labels = {k: {phase: np.full(len(r), -1, dtype=np.int32) for phase, r in self.ranges.items()}
                              for k in prefixes}

    def record(self, request: DrawRequest, label: int, prefix_labels: dict[int, int] | None = None) -> None:
        super().record(request, label, prefix_labels)
        at = request.draw - self.ranges[request.phase].start
        self.labels[request.phase][at] = label
        for k, lab in (prefix_labels or {}).items():
            self.prefix_labels[k][request.phase][at] = lab

    def labelled(self, key: tuple[int, int, int], seconds: float) -> PartLabels:
        missing = [phase.name for phase, labels in self.labels.items() if (labels < 0).any()]
        missing += [f"{phase.name} (first {k} chains)" for k, by_phase in self.prefix_labels.items()
                    for phase, labels in by_phase.items() if (labels < 0).any()]
        if missing:
            raise RuntimeError(f"part {key}: draws without a label in {missing}")
        return PartLabels(key, self.labels, self.prefix_labels, seconds)
