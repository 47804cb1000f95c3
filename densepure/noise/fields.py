"""Noise fields from row words: standard normals and uniforms, bit-exact on every device.

A field of ``n`` values for one row is made from Philox blocks ``0 .. ceil(n/4) - 1`` of that row's
words (:func:`densepure.noise.keys.row_words`): block ``j`` is the counter ``(c0 | j, c1, c2, c3)``
under the key ``(k0, k1)``, and element ``i`` of the field uses word ``i % 4`` of block ``i // 4``.

Conversion: a uint32 ``x`` becomes ``u = (x + 0.5) / 2**32`` in float64, which lies in
``[2**-33, 1 - 2**-33]`` (never 0 or 1). Box-Muller in float64 on the word pairs (0, 1) and (2, 3),
``r = sqrt(-2 ln u_a)``, ``z = (r cos 2πu_b, r sin 2πu_b)``, so ``|z| <= sqrt(66 ln 2) ≈ 6.76``. The
float64 result is rounded once to float32; every other requested dtype is a cast of that float32 field.
The integer words are exact on every device; CPU and CUDA normals may differ by one float32 ulp where
their float64 log/sin/cos (libm vs libdevice) round differently (checked by the ``gpu`` test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from densepure.errors import InputError
from densepure.noise.keys import BLOCK_BITS, MAX_NUMEL, WORDS, NoiseKeys, row_words
from densepure.noise.philox import philox

__all__ = ["gaussian", "gaussian_words", "uniform", "uniform_words", "word_field"]

# Rows x blocks processed at once: bounds the int64 temporaries (~2 MiB each) without changing
# any value, since every value is a pure function of its key and index.
_CHUNK_BLOCKS = 1 << 18


def _bits(words: torch.Tensor, numel: int, emit) -> None:
    """Run Philox over blocks ``0..ceil(numel/4)-1`` of every row, chunked; ``emit`` gets
    ``(row_slice, block_slice, (w0, w1, w2, w3))`` with each word (rows, blocks) int64."""
    n_blocks = -(-numel // 4)
    if n_blocks == 0 or words.shape[0] == 0:
        return
    cols = [words[:, i:i + 1] for i in range(WORDS)]
    rows_per = max(1, _CHUNK_BLOCKS // n_blocks)
    blocks_per = min(n_blocks, _CHUNK_BLOCKS)
    for r0 in range(0, words.shape[0], rows_per):
        rows = slice(r0, min(r0 + rows_per, words.shape[0]))
        c0, c1, c2, c3, k0, k1 = (w[rows] for w in cols)
        for b0 in range(0, n_blocks, blocks_per):
            blocks = slice(b0, min(b0 + blocks_per, n_blocks))
            block = torch.arange(blocks.start, blocks.stop, dtype=torch.int64, device=words.device)
            emit(rows, blocks, philox(c0 | block, c1, c2, c3, k0, k1))


def _check_request(shape: Sequence[int], device: object, dtype) -> int:
    if not isinstance(device, torch.device):
        raise InputError(f"device must be a torch.device, got {type(device).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating torch.dtype, got {dtype}")
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError as err:
        raise InputError(f"shape must be a tuple of ints, got {shape!r}") from err
    if any(s < 0 for s in dims):
        raise InputError(f"shape must be non-negative, got {dims}")
    numel = math.prod(dims)
    if numel > MAX_NUMEL:
        raise InputError(f"at most {MAX_NUMEL} values per row (4 * 2**{BLOCK_BITS}), got {numel}")
    return numel


def _check_words(words: object, device: torch.device) -> torch.Tensor:
    if not isinstance(words, torch.Tensor) or words.dtype != torch.int64 or words.dim() != 2 \
            or words.shape[1] != WORDS:
        raise InputError(f"row words must be a (B, {WORDS}) int64 tensor, got "
                         f"{type(words).__name__} {getattr(words, 'dtype', '')} {tuple(getattr(words, 'shape', ()))}")
    return words.to(device)


def _words(keys: NoiseKeys, device: torch.device) -> torch.Tensor:
    if not isinstance(keys, NoiseKeys):
        raise InputError(f"keys must be NoiseKeys, got {type(keys).__name__}")
    return row_words(keys, device)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint32 words (int64) -> float64 uniforms (x + 0.5) / 2**32 in [2**-33, 1 - 2**-33]."""
    return x.to(torch.float64).add_(0.5).mul_(2.0**-32)


def gaussian_words(words: torch.Tensor, shape: tuple[int, ...], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal fields, one per row of ``words`` ``(B, 6)``: a ``(B, *shape)`` tensor of ``dtype``.

    Row ``r`` is a pure function of ``words[r]`` and the flat (C-order) element index: the same words
    give the same values in any batch, at any row position, and a field of ``n`` values is the prefix
    of any longer field of the same words. ``|z| <= 6.76``, never inf or NaN (module docstring).
    """
    numel = _check_request(shape, device, dtype)
    words = _check_words(words, device)
    n_blocks = -(-numel // 4)
    out = torch.empty((words.shape[0], n_blocks, 4), dtype=torch.float32, device=device)

    def emit(rows, blocks, w):
        dst = out[rows, blocks]
        for pair in (0, 1):
            radius = _to_unit(w[2 * pair]).log_().mul_(-2.0).sqrt_()
            angle = _to_unit(w[2 * pair + 1]).mul_(2.0 * math.pi)
            dst[..., 2 * pair].copy_(torch.cos(angle).mul_(radius))
            dst[..., 2 * pair + 1].copy_(angle.sin_().mul_(radius))

    _bits(words, numel, emit)
    field = out.reshape(words.shape[0], n_blocks * 4)[:, :numel].reshape(words.shape[0], *shape)
    return field if dtype == torch.float32 else field.to(dtype)


def gaussian(keys: NoiseKeys, shape: tuple[int, ...], device: torch.device,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`gaussian_words` of the keys' row words: one ``(B, *shape)`` standard normal field per key."""
    _check_request(shape, device, dtype)
    return gaussian_words(_words(keys, device), shape, device, dtype)


def word_field(words: torch.Tensor, numel: int, device: torch.device) -> torch.Tensor:
    """The raw Philox words of each row's field, ``(B, numel)`` int64 in ``[0, 2**32)``: element ``i``
    is word ``i % 4`` of block ``i // 4``, the word :func:`uniform_words` turns into its uniform."""
    _check_request((numel,), device, torch.float32)
    words = _check_words(words, device)
    n_blocks = -(-numel // 4)
    out = torch.empty((words.shape[0], n_blocks, 4), dtype=torch.int64, device=device)

    def emit(rows, blocks, w):
        dst = out[rows, blocks]  # a view: each lane is written in place, no stacked temporary
        for lane in range(4):
            dst[..., lane].copy_(w[lane])

    _bits(words, numel, emit)
    return out.reshape(words.shape[0], n_blocks * 4)[:, :numel]


def uniform_words(words: torch.Tensor, shape: tuple[int, ...], device: torch.device,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in the open interval (0, 1), one field per row of ``words``: ``(B, *shape)`` ``dtype``.

    Same counters as :func:`gaussian_words` (element i uses word i % 4 of block i // 4), so do not use
    both from one key and expect independence. Each word gives ``(x + 0.5) / 2**32`` in float64,
    rounded to ``dtype`` and clamped to [smallest normal, largest value below 1] of ``dtype``.
    """
    numel = _check_request(shape, device, dtype)
    words = _check_words(words, device)
    n_blocks = -(-numel // 4)
    out = torch.empty((words.shape[0], n_blocks, 4), dtype=torch.float64, device=device)

    def emit(rows, blocks, w):
        dst = out[rows, blocks]
        for lane in range(4):
            dst[..., lane].copy_(_to_unit(w[lane]))

    _bits(words, numel, emit)
    field = out.reshape(words.shape[0], n_blocks * 4)[:, :numel].reshape(words.shape[0], *shape)
    info = torch.finfo(dtype)
    return field.to(dtype).clamp_(min=info.tiny, max=1.0 - info.eps / 2)


def uniform(keys: NoiseKeys, shape: tuple[int, ...], device: torch.device,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`uniform_words` of the keys' row words."""
    _check_request(shape, device, dtype)
    return uniform_words(_words(keys, device), shape, device, dtype)
