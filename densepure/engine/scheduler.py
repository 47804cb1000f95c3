"""The chain scheduler: a plain data structure that decides what the executor runs next.

Work flows draw -> shared first step -> chains -> classifier -> vote -> per-image counts. Every UNet
batch may mix rows of different images, draws, chains and steps (the executor gathers per-row
coefficients), and is refilled from all images in flight, so no image waits for another.

Savings, each exact:

* **Shared first step.** The K chains of a draw start from the same ``y`` at the same timestep, so
  the first UNet evaluation is done once per draw (a START row); each chain then begins with its
  own noise ``z`` from the stored ``(mean, std)`` (a SPAWN row at step 1).
* **Early exit of the vote.** Chains are launched in waves, in chain order 0, 1, ...; a wave has the
  fewest chains that could decide the vote, and the draw is finalised once the leader's count
  exceeds the runner-up's plus the chains not yet run (strictly): then no continuation changes the
  mode, tie-break included. Otherwise all K chains run and :func:`~densepure.engine.vote.vote` decides.
  Chain k's noise is keyed by ``(draw, k, step)``, so it is the same whether or not other chains ran.
* **b = 1** (and one-step denoising): the single step adds no noise, so all K chains are identical;
  one evaluation and one classification stand for all of them.
* **Chain prefixes** (``prefixes``): the vote of a draw's first ``k < K`` chains is what a ``k``-chain
  run with the same seed computes (same grid, same per-chain noise keys), so one ``K``-chain run also
  yields the ``k``-chain counts. Early exit always runs the first wave, ``K // 2 + 1`` chains, so
  prefixes up to that size are always complete.

Look-ahead only into empty room: new draws are issued in two passes. First every draw a policy will
read (``take(..., lookahead=False)``: all of a fixed policy's, a sequential test's up to its next look);
then, only with ``lookahead`` and only as many as the coming batch has rows left beyond the work already
queued, the draws a policy reads only if it does not stop first (its look-ahead). Under load the batches
are full of draws that will be read and nothing is computed to be thrown away; when they are not, the
look-ahead fills rows that would run empty and saves the round trip of a look. Which draws a policy reads,
and so every count and decision, is the same either way (each label is a function of its draw's noise
identity; a policy decides on the prefixes of its draws). ``EngineConfig(lookahead=False)`` (the
``--no-lookahead`` flag) turns the
second pass off: no draw past a stopping look, at the price of a round trip per look and smaller batches
(on a CPU, where small batches run fewer rows per second, that was no faster:
``benchmarks/results/serve_digits_cpu.md``).

Slots: draw ``d`` in flight owns draw slot ``s`` (the executor's stored ``mean, std``) and chain
slots ``s*K .. s*K+K-1`` (chain states and outputs). A slot is reused only after its draw is final, and
the lowest free slot is taken first, so the executor's pools only grow as far as the work in flight.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np

from densepure.engine.policy import DrawRequest, Policy
from densepure.engine.vote import decided, next_wave, vote


class RowKind(enum.IntEnum):
    START = 0  # step 0 from the start point: shared by the draw's chains
    SPAWN = 1  # a chain's step 1 from the draw's stored (mean, std) and its own z
    CONTINUE = 2  # a chain's step >= 2 from its own state


@dataclass(frozen=True, eq=False)
class Rows:
    """One batch of work as equal-length int64 columns (``step`` is the reverse-step index i)."""

    kind: np.ndarray
    image_slot: np.ndarray
    phase: np.ndarray
    draw: np.ndarray
    chain: np.ndarray
    step: np.ndarray
    draw_slot: np.ndarray
    chain_slot: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.shape[0])


class _Draw:
    __slots__ = ("image", "request", "slot", "labels", "launched", "finished", "final")

    def __init__(self, image: int, request: DrawRequest, slot: int):
        self.image, self.request, self.slot = image, request, slot
        self.labels: list[int] = []
        self.launched = self.finished = 0
        self.final: int | None = None


class Scheduler:
    """Decides batches; consumes model results as plain integers.

    ``steps`` (b) and ``chains`` (K) describe the base classifier; ``uses_unet`` is False for
    Gaussian smoothing (draws go straight to the classifier). ``draw_capacity`` bounds the draws in
    flight (the executor allocates that many draw slots and ``draw_capacity * K`` chain slots).
    ``lookahead``: issue policies' look-ahead draws into a batch's empty rows (module docstring).
    """

    def __init__(self, steps: int, chains: int, num_classes: int, draw_capacity: int,
                 uses_unet: bool = True, early_exit: bool = True, prefixes: tuple[int, ...] = (),
                 lookahead: bool = True):
        self.steps, self.num_classes = int(steps), int(num_classes)
        self.prefixes = check_prefixes(prefixes, int(chains), early_exit)
        self.chains = int(chains) if steps >= 2 else 1  # b = 1: the chains are identical
        self.shared = self.steps >= 2
        self.uses_unet, self.early_exit, self.lookahead = uses_unet, early_exit, bool(lookahead)
        self.draw_capacity = int(draw_capacity)
        self.free_slots = list(range(self.draw_capacity))  # a min-heap: the lowest free slot first
        self.images: dict[int, Policy] = {}
        self._order: deque[int] = deque()
        self.unet_ready: deque[tuple[RowKind, _Draw, int, int]] = deque()  # (kind, draw, chain, step)
        self.starts: deque[_Draw] = deque()
        self.cls_ready: deque[tuple[_Draw, int]] = deque()
        self.unet_rows = self.cls_rows = self.draws = 0
        self._by_slot: dict[int, _Draw] = {}

    # -- images -------------------------------------------------------------------------------
    def add_image(self, image_slot: int, policy: Policy) -> None:
        if image_slot in self.images:
            raise ValueError(f"image slot {image_slot} is already in use")
        self.images[image_slot] = policy
        self._order.append(image_slot)

    def pop_finished(self) -> list[int]:
        """Image slots whose policy is done (their slot may be reused). Work still queued for them (a
        policy may decide before all the draws it handed out return) is dropped: it is never read."""
        done = [slot for slot, policy in self.images.items() if policy.done]
        for slot in done:
            self.drop_image(slot)
        return done

    def drop_image(self, image_slot: int) -> None:
        """Forget an image: its queued rows are removed and its draw slots freed (a cancelled request, or
        a decided one with draws still queued). Call between batches (no batch of it is then in flight)."""
        if self.images.pop(image_slot, None) is None:
            return
        self._order.remove(image_slot)
        if not any(d.image == image_slot for d in self._by_slot.values()):
            return
        self.unet_ready = deque(item for item in self.unet_ready if item[1].image != image_slot)
        self.starts = deque(d for d in self.starts if d.image != image_slot)
        self.cls_ready = deque(item for item in self.cls_ready if item[0].image != image_slot)
        for slot in [s for s, d in self._by_slot.items() if d.image == image_slot]:
            del self._by_slot[slot]
            heapq.heappush(self.free_slots, slot)

    @property
    def idle(self) -> bool:
        return not (self.unet_ready or self.starts or self.cls_ready)

    def _fill(self, max_rows: int | None = None) -> None:
        """Issue new draws while draw slots are free: every draw a policy will read, then look-ahead draws
        into the rows a batch of ``max_rows`` has left beyond the queued work (module docstring)."""
        self._issue(len(self.free_slots), lookahead=False)
        if self.lookahead and max_rows is not None:
            queued = len(self.unet_ready) + len(self.starts) if self.uses_unet else len(self.cls_ready)
            if max_rows > queued:
                self._issue(max_rows - queued, lookahead=True)

    def _issue(self, budget: int, lookahead: bool) -> None:
        """Up to ``budget`` new draws, round-robin over images, while draw slots are free."""
        progress, issued = True, 0
        while self.free_slots and self._order and progress and issued < budget:
            progress = False
            share = max(1, min(len(self.free_slots), budget - issued) // len(self._order))
            for image in list(self._order):
                limit = min(share, len(self.free_slots), budget - issued)
                if limit <= 0:
                    break
                for request in self.images[image].take(limit, lookahead):
                    draw = _Draw(image, request, heapq.heappop(self.free_slots))
                    self._by_slot[draw.slot] = draw
                    (self.starts if self.uses_unet else self.cls_ready).append(
                        draw if self.uses_unet else (draw, 0))
                    issued += 1
                    progress = True

    # -- UNet batches -------------------------------------------------------------------------
    def next_unet(self, max_rows: int) -> Rows | None:
        """Up to ``max_rows`` UNet rows: chain rows first (they free slots), then new draws."""
        self._fill(max_rows)
        items = []
        while self.unet_ready and len(items) < max_rows:
            items.append(self.unet_ready.popleft())
        while self.starts and len(items) < max_rows:
            items.append((RowKind.START, self.starts.popleft(), 0, 0))
        if not items:
            return None
        self.unet_rows += len(items)
        return self._rows(items)

    def _rows(self, items: list[tuple[RowKind, _Draw, int, int]]) -> Rows:
        cols = np.array([(int(k), d.image, int(d.request.phase), d.request.draw, c, s, d.slot,
                          d.slot * self.chains + c) for k, d, c, s in items], dtype=np.int64).reshape(-1, 8)
        return Rows(*(cols[:, i].copy() for i in range(8)))

    def unet_done(self, rows: Rows) -> None:
        """Advance the rows of a finished UNet batch (call with the batch from :meth:`next_unet`)."""
        for _, kind, draw, chain, step in self._last_items(rows):
            if kind is RowKind.START and self.shared:
                self._launch(draw)
            elif step + 1 < self.steps:
                self.unet_ready.append((RowKind.CONTINUE, draw, chain, step + 1))
            else:
                self.cls_ready.append((draw, chain))

    def _last_items(self, rows: Rows):
        """The batch's rows as (position, kind, draw, chain, step); rows of draws dropped since the batch
        was made (a cancelled or already decided image) are skipped, even if their slot holds another draw."""
        for i in range(len(rows)):
            draw = self._by_slot.get(int(rows.draw_slot[i]))
            if draw is None or draw.image != rows.image_slot[i] or draw.request.draw != rows.draw[i] \
                    or int(draw.request.phase) != rows.phase[i]:
                continue
            yield i, RowKind(int(rows.kind[i])), draw, int(rows.chain[i]), int(rows.step[i])

    def _counts(self, draw: _Draw) -> np.ndarray:
        return np.bincount(np.array(draw.labels, dtype=np.int64), minlength=self.num_classes)

    def _launch(self, draw: _Draw) -> None:
        """Launch the next wave of chains of ``draw`` (SPAWN rows at step 1): with early exit, the
        fewest chains that could decide the vote (:func:`~densepure.engine.vote.next_wave`)."""
        left = self.chains - draw.launched
        wave = next_wave(self._counts(draw), left) if self.early_exit else left
        for chain in range(draw.launched, draw.launched + wave):
            self.unet_ready.append((RowKind.SPAWN, draw, chain, 1))
        draw.launched += wave

    # -- classifier batches -------------------------------------------------------------------
    def next_classify(self, max_rows: int) -> Rows | None:
        self._fill(None if self.uses_unet else max_rows)  # with a UNet, new draws reach it later
        items = []
        while self.cls_ready and len(items) < max_rows:
            draw, chain = self.cls_ready.popleft()
            items.append((RowKind.START if not self.shared else RowKind.SPAWN, draw, chain, self.steps - 1))
        if not items:
            return None
        self.cls_rows += len(items)
        return self._rows(items)

    def classified(self, rows: Rows, labels: np.ndarray) -> None:
        """Record the labels of a classifier batch; finalise, or launch more chains of, each draw."""
        labels = labels.tolist()
        for i, _, draw, chain, _ in self._last_items(rows):  # a dropped draw's label is never counted
            label = labels[i]
            if chain != len(draw.labels):
                raise RuntimeError("chains must be classified in launch order")  # waves keep this true
            draw.labels.append(int(label))
            draw.finished += 1
            if draw.finished < draw.launched:
                continue
            if self._decided(draw):
                self._finalise(draw)
            else:
                self._launch(draw)

    def _decided(self, draw: _Draw) -> bool:
        if not self.shared or draw.finished == self.chains:
            return True
        return self.early_exit and decided(self._counts(draw), self.chains - draw.finished)

    def _finalise(self, draw: _Draw) -> None:
        draw.final = vote(draw.labels)
        prefix = {k: vote(draw.labels[:k]) for k in self.prefixes} if self.prefixes else None
        self.images[draw.image].record(draw.request, draw.final, prefix)
        self.draws += 1
        del self._by_slot[draw.slot]
        heapq.heappush(self.free_slots, draw.slot)


def check_prefixes(prefixes: tuple[int, ...], chains: int, early_exit: bool) -> tuple[int, ...]:
    """Validate chain prefixes ``k`` (1 <= k <= K; with early exit, k <= K // 2 + 1, the first wave)."""
    limit = chains // 2 + 1 if early_exit else chains
    out = tuple(sorted({int(k) for k in prefixes}))
    bad = [k for k in out if not 1 <= k <= min(limit, chains)]
    if bad:
        raise ValueError(f"chain prefixes {bad} out of range: need 1 <= k <= {min(limit, chains)} "
                         f"for K={chains}{' with early exit' if early_exit else ''}")
    return out
