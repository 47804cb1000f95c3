"""The sound start (densepure.kernels.rows with a table, and its Triton kernel): bit-identical to the
torch reference on real tables and on tables built so that the kernel's rare 96-bit comparison runs,
and the model input a function of the grid index alone."""

from __future__ import annotations

import bisect
import math

import pytest
import torch

from densepure.diffusion import StartKind, dds_noise_sigma, start_scale
from densepure.errors import ConfigError
from densepure.kernels import StartRule, resolve_kernels
from densepure.noise import NoiseKeys, row_words, sound_steps_words, sound_table
from densepure.noise.fields import word_field
from densepure.noise.sound import refined_words
from densepure.noise.sound_table import SoundTable

ABAR = 0.37
CASES = [((3, 5, 7), 5), ((1, 4, 4), 1), ((2, 33, 17), 3)]  # as tests/kernels/test_rows.py: odd sizes, 2 chunks
TORCH = resolve_kernels("torch", "cpu")


def _ints(gen, high, n):
    return torch.randint(0, high, (n,), generator=gen, dtype=torch.int64)


def _poisoned(n: int, shape, device) -> torch.Tensor:
    return torch.full((n, *shape), float("nan"), device=device)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Identical float32 bits (any NaN equals any NaN)."""
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), "NaNs differ"
    differ = got.masked_fill(nan, 0).view(torch.int32) != want.masked_fill(nan, 0).view(torch.int32)
    assert not differ.any(), f"{int(differ.sum())} of {differ.numel()} values differ"


def _rules(table_of) -> dict[StartKind, StartRule]:
    return {StartKind.DENSEPURE: StartRule(StartKind.DENSEPURE, sigma=0.25, table=table_of(0.25)),
            StartKind.GAUSSIAN: StartRule(StartKind.GAUSSIAN, sigma=0.5, table=table_of(0.5)),
            StartKind.DDS: StartRule(StartKind.DDS, alpha_bar=ABAR, table=table_of(dds_noise_sigma(ABAR)))}


def _sound_words(n: int, gen, device) -> torch.Tensor:
    """Row words of DELTA/FORWARD keys (step 0, chain 0), random images, draws and seeds."""
    seed = int(_ints(gen, 2**62, 1))
    keys = NoiseKeys.from_arrays(seed, image=_ints(gen, 2**24, n), phase=_ints(gen, 3, n),
                                 draw=_ints(gen, 2**40, n), chain=0, step=0, stream=_ints(gen, 3, n) % 2 * 2)
    return row_words(keys, device)


def _grid_images(levels: int, shape, gen, device) -> torch.Tensor:
    return torch.randint(0, levels + 1, (4, *shape), generator=gen).to(torch.float32).to(device)


@pytest.mark.parametrize("levels", [16, 255])
@pytest.mark.parametrize("form", list(StartKind))
@pytest.mark.parametrize("shape,rows", CASES)
def test_sound_start_bit_identical(levels, form, shape, rows, device, triton_kernels, gen):
    rule = _rules(lambda s: sound_table(levels, s))[form]
    images, slot = _grid_images(levels, shape, gen, device), _ints(gen, 4, rows).to(device)
    words = _sound_words(rows, gen, device)
    out_rows = torch.randperm(rows + 2, generator=gen)[:rows].to(device)
    results = []
    for kernels in (TORCH, triton_kernels):
        out = _poisoned(rows + 2, shape, device)
        assert kernels.start_rows(images, slot, words, rule, out, out_rows) is out
        results.append((out, kernels.start_rows(images, slot, words, rule)))
    assert_same_bits(results[1][0], results[0][0])
    assert_same_bits(results[1][1], results[0][1])


def test_the_start_is_the_grid_value_of_index_plus_steps(gen):
    """y = scale (2 (x_int + j) / levels - 1): with the steps read back from the noise module."""
    table = sound_table(255, 0.25)
    rule = StartRule(StartKind.DENSEPURE, sigma=0.25, table=table)
    images = _grid_images(255, (3, 4, 4), gen, "cpu")
    words = _sound_words(6, gen, "cpu")
    slot = torch.arange(6) % 4
    y = TORCH.start_rows(images, slot, words, rule)
    j = sound_steps_words(words, (3, 4, 4), table, torch.device("cpu"))
    value = (images[slot] + j) / 255.0  # in float64 below
    want = math.sqrt(start_scale(0.25)) * (2.0 * value.double() - 1.0)
    assert torch.allclose(y.double(), want, rtol=0, atol=4e-7)
    same = TORCH.start_rows(images[slot] * 0 + images[slot], torch.arange(6), words, rule)
    assert torch.equal(same, y)  # a function of (x_int, words) only


def _tie_table(words: torch.Tensor, numel: int, rows: int) -> SoundTable:
    """A table whose thresholds sit on, just below and just above the 96-bit words of some values, so
    that their u0 ties with a high word and the kernel's full comparison decides."""
    u = [word_field(refined_words(words, level) if level else words, numel, torch.device("cpu"))
         for level in (0, 1, 2)]
    picks = [(r, e) for r in range(rows) for e in (0, 3, numel // 2, numel - 1)]
    thresholds = set()
    for r, e in picks:
        full = (int(u[0][r, e]) << 64) | (int(u[1][r, e]) << 32) | int(u[2][r, e])
        thresholds.update({full - 1, full, full + 1} if (r + e) % 2 else {full + 2})
    thresholds.update(int(v) << 90 for v in range(1, 60, 7))
    ordered = sorted(thresholds)
    if len(ordered) % 2:
        ordered.append((1 << 96) - 1)
    return SoundTable(16, 0.25, len(ordered) // 2, tuple(ordered), 0.0)


@pytest.mark.parametrize("shape,rows", CASES)
def test_sound_start_ties_take_all_96_bits(shape, rows, device, triton_kernels, gen):
    words = _sound_words(rows, gen, torch.device("cpu"))
    numel = math.prod(shape)
    table = _tie_table(words, numel, rows)
    rule = StartRule(StartKind.GAUSSIAN, sigma=0.25, table=table)
    images = _grid_images(16, shape, gen, device)
    slot = _ints(gen, 4, rows).to(device)
    want = TORCH.start_rows(images, slot, words.to(device), rule)
    assert_same_bits(triton_kernels.start_rows(images, slot, words.to(device), rule), want)
    j = sound_steps_words(words, shape, table, torch.device("cpu")).reshape(rows, -1)
    u = [word_field(refined_words(words, level) if level else words, numel, torch.device("cpu")) for level in (0, 1, 2)]
    for r in range(rows):
        for e in (0, 3, numel // 2, numel - 1):
            full = (int(u[0][r, e]) << 64) | (int(u[1][r, e]) << 32) | int(u[2][r, e])
            assert int(j[r, e]) == bisect.bisect_right(table.thresholds, full) - table.k


def test_a_rule_refuses_a_table_of_another_sigma():
    with pytest.raises(ConfigError, match="table of sigma"):
        StartRule(StartKind.DENSEPURE, sigma=0.25, table=sound_table(16, 0.5))
    with pytest.raises(ConfigError, match="table of sigma"):
        StartRule(StartKind.DDS, alpha_bar=ABAR, table=sound_table(16, 0.25))
    with pytest.raises(ConfigError, match="SoundTable"):
        StartRule(StartKind.GAUSSIAN, sigma=0.25, table="table")
