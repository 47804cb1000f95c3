import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densepure.certify.vote import majority_vote, vote_is_decided


def reference_vote(labels):
    return max(labels, key=labels.count)  # the official code's rule


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=9), min_size=1, max_size=20).filter(
    lambda rows: len({len(r) for r in rows}) == 1))
def test_vote_equals_python_max_count(rows):
    got = majority_vote(torch.tensor(rows), 4).tolist()
    assert got == [reference_vote(r) for r in rows]


def test_tie_goes_to_first_occurrence():
    assert majority_vote(torch.tensor([[2, 1, 1, 2], [3, 0, 0, 3], [5, 6, 7, 8]]), 9).tolist() == [2, 3, 5]


def test_early_exit_is_exact_by_brute_force():
    classes, k_total = 3, 5
    for run in range(1, k_total + 1):
        for prefix in itertools.product(range(classes), repeat=run):
            counts = torch.bincount(torch.tensor(prefix), minlength=classes)[None]
            left = k_total - run
            if not bool(vote_is_decided(counts, left)[0]):
                continue
            outcomes = {reference_vote(list(prefix) + list(rest))
                        for rest in itertools.product(range(classes), repeat=left)}
            assert len(outcomes) == 1, (prefix, outcomes)


def test_not_decided_when_a_completion_can_flip():
    counts = torch.tensor([[3, 1, 0]])
    assert not bool(vote_is_decided(counts, 2)[0])  # 3 vs 1+2: a tie is possible -> must continue
    assert bool(vote_is_decided(counts, 1)[0])
