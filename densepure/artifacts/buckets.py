"""Batch-size buckets: the fixed batch sizes a captured CUDA graph or a TensorRT profile runs at.

One rule for every backend: a call of ``B`` rows is cut into chunks of the largest bucket, and the
remainder runs in the smallest bucket that holds it; padding rows are copies of the chunk's first row.
Rows are independent in these models (GroupNorm and attention act within a sample), so padding never
reaches a real row, and copies of a real row keep the padding inside the inputs' domain (no degenerate
all-zero rows through a preprocessing that divides by a statistic).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from densepure.artifacts.manifest import BatchProfile
from densepure.errors import BackendError, ConfigError

DEFAULT_ENGINE_BUCKETS = (1, 8, 32, 128)


def normalize_buckets(buckets: Iterable[object]) -> tuple[int, ...]:
    """Sorted, distinct, positive batch buckets, or :class:`ConfigError` saying what was wrong."""
    try:
        values = tuple(sorted({int(b) for b in buckets}))
    except (TypeError, ValueError):
        raise ConfigError(f"batch buckets must be integers, got {buckets!r}") from None
    if not values or values[0] < 1:
        raise ConfigError(f"batch buckets must be >= 1 and at least one is needed, got {tuple(buckets)}")
    return values


def bucket_sizes(max_rows: int, smallest: int = 8) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_rows``, then ``max_rows`` itself (ascending)."""
    if max_rows < 1 or smallest < 1:
        raise ConfigError(f"bucket sizes need max_rows >= 1 and smallest >= 1, got {max_rows}, {smallest}")
    out, size = [], smallest
    while size < max_rows:
        out.append(size)
        size *= 2
    return (*out, max_rows)


def bucket_profiles(buckets: Iterable[object]) -> tuple[BatchProfile, ...]:
    """One TensorRT profile per bucket: ``min`` = previous bucket + 1, ``opt`` = ``max`` = bucket."""
    values = normalize_buckets(buckets)
    return tuple(BatchProfile(prev + 1, b, b) for prev, b in zip((0, *values), values, strict=False))


def pick_bucket(buckets: Sequence[int], rows: int) -> int:
    """The smallest bucket holding ``rows`` rows (``buckets`` ascending)."""
    if rows < 1:
        raise BackendError(f"a batch needs at least one row, got {rows}")
    for size in buckets:
        if size >= rows:
            return size
    raise BackendError(f"a batch of {rows} rows exceeds the largest bucket ({buckets[-1]}): split the batch, or "
                       "raise the buckets (`densepure build --buckets ...` for TensorRT engines)")


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of a call, run in bucket ``bucket`` (>= ``stop - start``)."""

    start: int
    stop: int
    bucket: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(rows: int, buckets: Sequence[int]) -> tuple[Chunk, ...]:
    """Cover ``rows`` with full chunks of the largest bucket, then one chunk in the smallest bucket that
    holds the remainder. Padding per call is less than the gap between two buckets."""
    if rows < 1:
        raise BackendError(f"a batch needs at least one row, got {rows}")
    largest, chunks, start = buckets[-1], [], 0
    while rows - start > largest:
        chunks.append(Chunk(start, start + largest, largest))
        start += largest
    chunks.append(Chunk(start, rows, pick_bucket(buckets, rows - start)))
    return tuple(chunks)


def pad_into(buffer: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Copy ``x`` into the first rows of ``buffer`` and fill the rest with copies of ``x[0]``."""
    rows = x.shape[0]
    if rows > buffer.shape[0]:
        raise BackendError(f"{rows} rows do not fit bucket {buffer.shape[0]}")
    buffer[:rows].copy_(x)
    if rows < buffer.shape[0]:
        buffer[rows:].copy_(buffer[:1].expand(buffer.shape[0] - rows, *buffer.shape[1:]))
    return buffer
