"""Per-image sampling policies: which draws an image needs, and when it is decided.

The engine defines what a policy is; certification implements the statistical ones
(:mod:`densepure.certify.policies`). A policy sees only ``(phase, draw, label)`` events and hands out
draw indices; it never sees tensors. Draws of a phase are handed out in increasing order, so whatever
order they complete in, the labels a policy decides on are those of the prefix ``0..n-1`` of that
phase: exactly the labels the plain one-image-at-a-time path sees for the same seed.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from densepure.errors import ConfigError
from densepure.noise import NoisePhase


@dataclass(frozen=True)
class DrawRequest:
    phase: NoisePhase
    draw: int


class Policy(abc.ABC):
    """Hands out draws and collects their labels; ``done`` once the image's answer is fixed.

    ``prefix_counts[k][phase]`` (filled when the engine runs with ``chain_prefixes``) counts, for
    the same draws, the vote of the draw's first ``k`` chains: the counts a ``k``-chain run with the
    same seed would record, because chain ``j``'s noise depends only on ``(draw, j, step)``. Only
    fixed policies make those counts a complete ``k``-chain certificate (a sequential policy stops on
    the ``K``-chain labels, so its prefix counts are not what a ``k``-chain sequential run would see).
    """

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.counts: dict[NoisePhase, np.ndarray] = {}
        self.prefix_counts: dict[int, dict[NoisePhase, np.ndarray]] = {}
        self.outstanding = 0
        self.seconds = 0.0  # the engine time attributed to this image (its share of every step it was in)

    def _counts(self, phase: NoisePhase) -> np.ndarray:
        if phase not in self.counts:
            self.counts[phase] = np.zeros(self.num_classes, dtype=np.int64)
        return self.counts[phase]

    def take(self, limit: int, lookahead: bool = True) -> list[DrawRequest]:
        """Up to ``limit`` draws that may be issued now. ``lookahead=False`` hands out only draws the policy
        will read unless it is cancelled (a sequential test: those up to its next look); True may add draws
        it reads only if it does not stop first (the test's look-ahead). Which draws are read, and so every
        decision, never depends on it: only the compute spent and the round trips."""
        out = self._take(limit, lookahead)
        self.outstanding += len(out)
        return out

    def record(self, request: DrawRequest, label: int, prefix_labels: dict[int, int] | None = None) -> None:
        """Count the draw's final label (and, per chain prefix ``k``, the label of its first ``k`` chains)."""
        self.outstanding -= 1
        self._counts(request.phase)[label] += 1
        for k, lab in (prefix_labels or {}).items():
            by_phase = self.prefix_counts.setdefault(k, {})
            if request.phase not in by_phase:
                by_phase[request.phase] = np.zeros(self.num_classes, dtype=np.int64)
            by_phase[request.phase][lab] += 1
        self._recorded(request)

    @property
    def total_draws(self) -> int:
        return int(sum(int(c.sum()) for c in self.counts.values()))

    @abc.abstractmethod
    def _take(self, limit: int, lookahead: bool) -> list[DrawRequest]: ...

    def _recorded(self, request: DrawRequest) -> None:
        """Hook after a label is counted (sequential tests decide here)."""

    @property
    @abc.abstractmethod
    def done(self) -> bool: ...

    @property
    @abc.abstractmethod
    def max_draws(self) -> int:
        """An upper bound on the draws of any one phase (the engine checks it against the noise layout)."""


class FixedPolicy(Policy):
    """A fixed set of draws per phase (CERTIFY: SELECTION n0 + ESTIMATION n; PREDICT: n).

    ``phases[phase]`` is a count ``n`` (draws ``0..n-1``) or a ``range(start, stop)`` of draw indices: one
    share of an image's draws. Labels are functions of the draws' noise identities, so the counts of
    disjoint ranges that cover ``0..n-1`` add up exactly to the counts of ``n`` (a cluster splits one
    image's draws over several workers this way, :mod:`densepure.distributed`).
    """

    def __init__(self, num_classes: int, phases: Mapping[NoisePhase, int | range]):
        super().__init__(num_classes)
        self.ranges = {phase: _draw_range(phase, draws) for phase, draws in phases.items()}
        self.issued = {phase: draws.start for phase, draws in self.ranges.items()}
        for phase in self.ranges:
            self._counts(phase)

    def _take(self, limit: int, lookahead: bool) -> list[DrawRequest]:  # every draw is read: none is look-ahead
        out: list[DrawRequest] = []
        for phase, draws in self.ranges.items():
            start = self.issued[phase]
            stop = min(draws.stop, start + limit - len(out))
            out += [DrawRequest(phase, d) for d in range(start, stop)]
            self.issued[phase] = stop
        return out

    @property
    def done(self) -> bool:
        return self.outstanding == 0 and all(self.issued[p] == r.stop for p, r in self.ranges.items())

    @property
    def max_draws(self) -> int:
        return max((r.stop for r in self.ranges.values()), default=0)


def _draw_range(phase: NoisePhase, draws: int | range) -> range:
    """A count ``n`` -> ``range(0, n)``; a range is checked: step 1, ``0 <= start <= stop``."""
    if isinstance(draws, range):
        if draws.step != 1 or not 0 <= draws.start <= draws.stop:
            raise ConfigError(f"the draws of phase {phase.name} must be a range(start, stop) with 0 <= start <= stop "
                              f"and step 1, got {draws!r}")
        return draws
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 0:
        raise ConfigError(f"the draws of phase {phase.name} must be a count >= 0 or a range, got {draws!r}")
    return range(int(draws))
