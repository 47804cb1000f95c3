"""Majority vote over a draw's K chains (ALGORITHM §6) and its exact early exit: the one rule that
both the scheduler (one draw at a time, plain integers) and the reference path (tensors) run.

The mode of the K labels wins; ties go to the tied label whose first occurrence in chain order
(k = 0, 1, ...) is earliest, which is the reference code's ``max(labels, key=labels.count)``.
Early exit is exact when the leader's count exceeds the runner-up's count plus the chains not yet
run (strictly): every continuation then leaves the leader ahead, tie-break included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def vote(labels: Sequence[int]) -> int:
    """The majority label of one draw's chain labels (in chain order); ties to the first occurrence."""
    if len(labels) == 1:
        return int(labels[0])
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    top = counts.max()
    return next(int(lab) for lab in labels if counts[lab] == top)


def leader_runner(counts: np.ndarray) -> tuple[int, int]:
    """The highest and second-highest entries of a label-count vector (0 for a missing runner-up)."""
    if counts.shape[0] == 0:
        return 0, 0
    top = np.sort(counts)[::-1]
    return int(top[0]), int(top[1]) if top.shape[0] > 1 else 0


def decided(counts: np.ndarray, chains_left: int) -> bool:
    """True when no continuation of ``chains_left`` more chains can change the vote."""
    leader, runner = leader_runner(counts)
    return leader > runner + chains_left


def next_wave(counts: np.ndarray, chains_left: int) -> int:
    """The fewest further chains that could decide the vote if all agreed with the leader: the smallest
    ``j`` with ``leader + j > runner + (chains_left - j)``, capped at ``chains_left``."""
    leader, runner = leader_runner(counts)
    return min(chains_left, (runner + chains_left - leader) // 2 + 1)


def majority_vote(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """:func:`vote` of each row of ``labels`` ``(D, K)`` int64, vectorised; returns ``(D,)`` int64.

    Among the labels with the highest count, the one whose first occurrence has the lowest chain index
    wins (the same rule as :func:`vote`, tested against it).
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (draws, chains), got shape {tuple(labels.shape)}")
    counts = torch.zeros(labels.shape[0], num_classes, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    top = counts.max(dim=1, keepdim=True).values
    is_top = counts.gather(1, labels) == top  # (D, K): chain k's label has the top count
    first = is_top.to(torch.int64).argmax(dim=1, keepdim=True)  # first chain holding a top label
    return labels.gather(1, first).squeeze(1)
