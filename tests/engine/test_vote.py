import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densepure.engine.vote import decided, majority_vote, next_wave, vote


def reference_vote(labels):
    return max(labels, key=labels.count)  # the official code's rule


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=9), min_size=1, max_size=20).filter(
    lambda rows: len({len(r) for r in rows}) == 1))
def test_vote_equals_python_max_count(rows):
    got = majority_vote(torch.tensor(rows), 4).tolist()
    assert got == [reference_vote(r) for r in rows] == [vote(r) for r in rows]


def test_tie_goes_to_first_occurrence():
    assert majority_vote(torch.tensor([[2, 1, 1, 2], [3, 0, 0, 3], [5, 6, 7, 8]]), 9).tolist() == [2, 3, 5]


def test_early_exit_is_exact_by_brute_force():
    classes, k_total = 3, 5
    for run in range(1, k_total + 1):
        for prefix in itertools.product(range(classes), repeat=run):
            counts = np.bincount(np.array(prefix), minlength=classes)
            left = k_total - run
            if not decided(counts, left):
                continue
            outcomes = {reference_vote(list(prefix) + list(rest))
                        for rest in itertools.product(range(classes), repeat=left)}
            assert len(outcomes) == 1, (prefix, outcomes)


def test_not_decided_when_a_completion_can_flip():
    counts = np.array([3, 1, 0])
    assert not decided(counts, 2)  # 3 vs 1+2: a tie is possible -> must continue
    assert decided(counts, 1)


def test_next_wave_is_the_fewest_chains_that_could_decide():
    for counts, left in [([0, 0, 0], 10), ([3, 1, 0], 6), ([2, 2, 0], 6), ([1, 0, 0], 9), ([4, 0, 1], 5)]:
        counts = np.array(counts)
        wave = next_wave(counts, left)
        leader = counts.max()
        runner = np.sort(counts)[-2]
        assert 1 <= wave <= left
        assert wave == left or leader + wave > runner + (left - wave)  # could decide
        assert wave == 1 or not leader + wave - 1 > runner + (left - wave + 1)  # one fewer could not
