"""Majority vote over K chains (ALGORITHM §6) and the exact early-exit test."""

from __future__ import annotations

import torch


def majority_vote(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mode of each row of ``labels`` ``(D, K)`` int64; ties go to the label that occurs first in chain order.

    This is Python's ``max(labels, key=labels.count)`` of the reference code, vectorised: among the
    labels with the highest count, the one whose first occurrence has the lowest chain index wins.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (draws, chains), got shape {tuple(labels.shape)}")
    counts = torch.zeros(labels.shape[0], num_classes, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    top = counts.max(dim=1, keepdim=True).values
    is_top = counts.gather(1, labels) == top  # (D, K): chain k's label has the top count
    first = is_top.to(torch.int64).argmax(dim=1, keepdim=True)  # first chain holding a top label
    return labels.gather(1, first).squeeze(1)


def vote_is_decided(counts: torch.Tensor, chains_left: torch.Tensor | int) -> torch.Tensor:
    """True where no continuation can change the mode: leader > runner-up + chains left (strictly).

    ``counts`` ``(D, classes)`` of the chains run so far. With a strict inequality even a tie-break
    cannot flip the result, since every remaining chain could at most bring the runner-up to one
    below the leader's count.
    """
    top2 = counts.topk(2, dim=1).values if counts.shape[1] >= 2 else torch.cat(
        [counts, torch.zeros_like(counts)], dim=1)
    return top2[:, 0] > top2[:, 1] + chains_left
