"""Rows per model call fitted to the memory available, on the CPU as on CUDA."""

from __future__ import annotations

import pytest
import torch

from densepure.engine import memory


def allocating(mib_per_row: int):
    """A probe whose peak memory grows by ``mib_per_row`` MiB per row (touched, so resident)."""
    def probe(rows: int) -> None:
        block = torch.ones(rows * mib_per_row * (1 << 18))  # 4 bytes per value
        block.add_(1.0)
        del block
    return probe


@pytest.mark.skipif(memory._cpu_cost([lambda rows: None]) is None, reason="this kernel has no peak-memory counter")
def test_cpu_cost_per_row_is_measured_from_two_probe_sizes():
    cost = memory._cpu_cost([allocating(8)])
    assert 6 * (1 << 20) <= cost <= 10 * (1 << 20), cost / (1 << 20)


@pytest.mark.skipif(memory._cpu_available() is None, reason="no /proc/meminfo here")
def test_a_huge_batch_size_is_fitted_to_the_cpu_memory(monkeypatch):
    monkeypatch.setattr(memory, "_cpu_available", lambda: 1 << 30)  # 1 GiB free
    rows = memory.rows_that_fit([allocating(8)], torch.device("cpu"), cap=100_000_000)
    assert 8 <= rows <= int(0.6 * 1024 / 8) and rows % 8 == 0
    assert memory.rows_that_fit([allocating(8)], torch.device("cpu"), cap=16) == 16  # a small cap stands
    # the engine's pools count too: a large slot cost per row leaves fewer rows
    fewer = memory.rows_that_fit([allocating(8)], torch.device("cpu"), cap=100_000_000, slot_bytes_per_row=32 << 20)
    assert fewer < rows


def test_without_a_peak_counter_the_cap_is_kept(monkeypatch):
    monkeypatch.setattr(memory, "_peak_of", lambda probe, rows: None)
    assert memory.rows_that_fit([allocating(1)], torch.device("cpu"), cap=777) == 777
