"""The sound noise (densepure.noise.sound, sound_table): exact tables, the fast path against the exact
96-bit rule, the keying contract, and the sampled law against the discretized Gaussian."""

from __future__ import annotations

import bisect
import math
from itertools import pairwise

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from densepure.errors import ConfigError, InputError
from densepure.noise import NoiseKeys, gaussian_words, row_words, sound_steps, sound_steps_words, sound_table
from densepure.noise.fields import word_field
from densepure.noise.sound import refined_words, steps_from_words
from densepure.noise.sound_table import BITS, CROWDED, added_failure

CPU = torch.device("cpu")
TABLES = [(16, 0.25), (16, 0.5), (16, 1.0), (255, 0.25), (255, 0.5), (7, 0.013)]
TEST_LEVEL = 1e-4  # chance that a correct sampler fails a statistical test here


def _words(rows: int, seed: int = 11, image: int = 3) -> torch.Tensor:
    keys = NoiseKeys.from_arrays(seed, image=image, phase=1, draw=torch.arange(rows), chain=0, step=0, stream=0)
    return row_words(keys, CPU)


def _exact_p(levels: int, sigma: float, j: int, prec: int = 400):
    """P(j) of the discretized Gaussian from erfc at ``prec`` bits (independent of the module's ncdf)."""
    with mpmath.workprec(prec):
        scale = mpmath.mpf(sigma) * levels * mpmath.sqrt(2)
        cdf = [mpmath.erfc(-(mpmath.mpf(2 * i + 1) / 2) / scale) / 2 for i in (j - 1, j)]
        return cdf[1] - cdf[0]


@pytest.mark.parametrize(("levels", "sigma"), TABLES)
def test_table_is_monotone_symmetric_and_its_law_is_the_discretized_gaussian(levels, sigma):
    table = sound_table(levels, sigma)
    t = table.thresholds
    assert len(t) == 2 * table.k and all(a <= b for a, b in pairwise(t)) and 0 <= t[0] and t[-1] < 1 << BITS
    assert all(t[i] + t[-1 - i] == 1 << BITS for i in range(table.k))
    law = table.probabilities()
    assert sum(q for _, q in law) == 1 << BITS and [j for j, _ in law] == list(range(-table.k, table.k + 1))
    with mpmath.workprec(400):
        tv = mpmath.mpf(0)
        for j, q in law:
            p = _exact_p(levels, sigma, j)
            assert abs(float(mpmath.mpf(q) / 2**BITS - p)) <= 1e-15, (j, q, p)
            tv += abs(mpmath.mpf(q) / 2**BITS - p)
        scale = mpmath.mpf(sigma) * levels * mpmath.sqrt(2)
        tv += 2 * mpmath.erfc((mpmath.mpf(2 * table.k + 1) / 2) / scale) / 2  # P(|j| > k): never sampled
        tv /= 2
    assert float(tv) <= table.tv_per_value <= 1.001 * float(tv) + 1e-300  # a bound, and a tight one
    assert table.tv_per_value <= table.k * 2.0 ** -BITS  # at most one rounding unit per threshold
    # k is the smallest with every omitted threshold rounding to 0
    for kk, omitted in ((table.k, True), (table.k - 1, False)):
        with mpmath.workprec(400):
            below = mpmath.ncdf(-(mpmath.mpf(2 * kk + 1) / 2) / (mpmath.mpf(sigma) * levels)) * 2**BITS
        assert (below < 0.5) is omitted or kk == 0


def test_tables_are_refused_outside_their_domain():
    for levels, sigma in ((0, 0.25), (1 << 17, 0.25), (16, 0.0), (16, -1.0), (16, math.inf), (True, 0.25)):
        with pytest.raises(ConfigError):
            sound_table(levels, sigma)
    with pytest.raises(ConfigError):
        added_failure(sound_table(16, 0.25), 0, 10)


def _reference_steps(words: torch.Tensor, numel: int, table) -> torch.Tensor:
    """The definition: all three words of every value, j = #{T <= U} - k with Python integers."""
    u = [word_field(refined_words(words, level) if level else words, numel, CPU).flatten().tolist()
         for level in (0, 1, 2)]
    full = [(a << 64) | (b << 32) | c for a, b, c in zip(*u, strict=True)]
    return torch.tensor([bisect.bisect_right(table.thresholds, x) - table.k for x in full]).reshape(-1, numel)


@pytest.mark.parametrize(("levels", "sigma", "rows", "shape"), [(16, 0.25, 40, (3, 5, 7)), (255, 0.5, 40, (3, 5, 7)),
                                                               (16, 0.25, 64, (4, 64, 16))])
def test_fast_path_equals_the_96_bit_rule_on_keyed_words(levels, sigma, rows, shape):
    """The fused lane-by-lane path against the definition; the large case (262,144 values of the digits' table)
    lands in its crowded buckets, whose values take the exact path."""
    table, words = sound_table(levels, sigma), _words(rows)
    numel = math.prod(shape)
    got = sound_steps_words(words, shape, table, CPU)
    assert got.dtype == torch.int64 and got.shape == (rows, *shape)
    assert torch.equal(got.reshape(rows, -1), _reference_steps(words, numel, table))
    if numel == 4096:
        guide = table.tensors(CPU).guide
        buckets = word_field(words, numel, CPU) >> 16
        assert int(((guide[buckets] & CROWDED) == CROWDED).sum()) >= 3, "no value took the exact path"


@pytest.mark.parametrize(("levels", "sigma"), [(16, 0.25), pytest.param(255, 1.0, marks=pytest.mark.slow), (7, 0.013)])
def test_fast_path_on_every_threshold_tie_and_bucket_edge(levels, sigma):
    """u0 on each threshold's high word (ties: the refinement words decide), beside it, on every guide
    bucket's edges and at the extremes, with refinement words below, at and above the threshold's."""
    table = sound_table(levels, sigma)
    highs = sorted({t >> 64 for t in table.thresholds})
    edges = [b << 16 for b in range(0, 1 << 16, 997)] + [(b << 16) - 1 for b in range(1, 1 << 16, 991)]
    u0_values = sorted({v for h in highs for v in (h - 1, h, h + 1) if 0 <= v < 1 << 32} | set(edges)
                       | {0, 1, (1 << 32) - 1})
    u0, lower = [], []
    for v in u0_values:
        tied = [t & ((1 << 64) - 1) for t in table.thresholds if t >> 64 == v] or [12345]
        for t in tied[:3]:
            for lo in (t - 1, t, t + 1):
                if 0 <= lo < 1 << 64:
                    u0.append(v)
                    lower.append(lo)
    u0_t = torch.tensor(u0, dtype=torch.int64).reshape(1, -1)
    asked = []

    def refine(rows, elements, level):
        asked.append(level)
        values = [lower[e] for e in elements.tolist()]
        return torch.tensor([(v >> 32) if level == 1 else (v & 0xFFFFFFFF) for v in values], dtype=torch.int64)

    got = steps_from_words(u0_t, table, refine)[0].tolist()
    want = [bisect.bisect_right(table.thresholds, (a << 64) | b) - table.k for a, b in zip(u0, lower, strict=True)]
    assert got == want
    assert set(asked) == {1, 2}, "no tie was exercised"


def test_a_field_is_a_pure_function_of_its_words_and_index():
    table = sound_table(16, 0.5)
    words = _words(9)
    full = sound_steps_words(words, (1, 8, 8), table, CPU)
    order = torch.tensor([4, 0, 8, 2, 2])
    assert torch.equal(sound_steps_words(words[order], (1, 8, 8), table, CPU), full[order])
    prefix = sound_steps_words(words, (13,), table, CPU)
    assert torch.equal(prefix, full.reshape(9, -1)[:, :13])
    keys = NoiseKeys.from_arrays(11, image=3, phase=1, draw=torch.arange(9), chain=0, step=0, stream=0)
    assert torch.equal(sound_steps(keys, (1, 8, 8), table, CPU), full)
    other = NoiseKeys.from_arrays(12, image=3, phase=1, draw=torch.arange(9), chain=0, step=0, stream=0)
    assert not torch.equal(sound_steps(other, (1, 8, 8), table, CPU), full)


def test_refinement_words_are_other_identities_words():
    """u1, u2 come from the row's identity with step 1 and 2: never the words of the row itself."""
    words = _words(3)
    for level in (1, 2):
        refined = refined_words(words, level)
        keys = NoiseKeys.from_arrays(11, image=3, phase=1, draw=torch.arange(3), chain=0, step=level, stream=0)
        assert torch.equal(refined, row_words(keys, CPU))
    assert not torch.equal(word_field(refined_words(words, 1), 8, CPU), word_field(words, 8, CPU))


def test_bad_requests_are_refused():
    table = sound_table(16, 0.25)
    with pytest.raises(InputError):
        sound_steps_words(torch.zeros(2, 5, dtype=torch.int64), (4,), table, CPU)
    with pytest.raises(InputError):
        sound_steps_words(_words(2), (4,), "table", CPU)
    with pytest.raises(InputError):
        sound_steps("keys", (4,), table, CPU)


def _chi_square_p(counts: np.ndarray, law: list[tuple[int, int]]) -> float:
    """Pearson's chi-square p-value of the counts of j = -k..k against the table's law, the cells with
    fewer than 20 expected draws pooled into one."""
    total = counts.sum()
    expected = np.array([q / 2.0**BITS for _, q in law]) * total
    big = expected >= 20
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue)


@pytest.mark.parametrize(("levels", "sigma"), [(16, 0.25), (16, 0.5), (16, 1.0), (255, 0.25)])
def test_ten_million_draws_follow_the_discretized_gaussian(levels, sigma):
    table = sound_table(levels, sigma)
    rows, numel = 1000, 10_000  # 10^7 values, each an independent draw
    counts = np.zeros(2 * table.k + 1, dtype=np.int64)
    for start in range(0, rows, 250):
        words = _words(250, seed=2026 + int(levels * 1000 * sigma), image=start)
        j = sound_steps_words(words, (numel,), table, CPU)
        counts += np.bincount((j + table.k).flatten().numpy(), minlength=2 * table.k + 1)
    assert counts.sum() == 10**7
    assert _chi_square_p(counts, table.probabilities()) >= TEST_LEVEL
    # and the float generator's words give a normal of the same scale: the two modes share the words
    z = gaussian_words(_words(10), (numel,), CPU)
    assert abs(float(z.std()) - 1.0) < 0.01


def test_added_failure_is_values_times_draws_times_tv():
    table = sound_table(255, 1.0)
    added = added_failure(table, 3 * 256 * 256, 100_100)
    assert added >= 3 * 256 * 256 * 100_100 * table.tv_per_value
    assert added < 1e-9 * 1e-3  # below 1e-9 of alpha = 0.001 at ImageNet size, N = 100,000
