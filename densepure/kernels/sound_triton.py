"""The sound start in one Triton launch: keyed Philox words, the exact threshold search, the grid value.

:func:`densepure.kernels.rows.start_rows` with a sound rule (``rule.table``), fused: program ``(r, c)``
computes elements ``c*BLOCK ..`` of row ``r``. The grid step of each value is
:func:`densepure.noise.sound_steps_words`'s, re-derived in registers:

* ``u0``: word ``i % 4`` of Philox block ``i // 4`` of the row words (the words the float noise reads);
* ``count = #{i : high_i < u0}`` by a branchless binary search of the padded high words (``log2 P``
  loads; the padding, ``2^32``, is never counted);
* where ``u0`` equals a high word (about ``2k / 2^32`` of the values), the block also draws ``u1`` and
  ``u2`` (the row's identity with step 1 and 2) and counts ``T_i <= (u0, u1, u2)`` over all 96 bits;
* ``j = count - k``; ``y = scale * (2 ((x_int + j) * step) - 1)`` in float32, each product rounded
  (no FMA contraction on CUDA: ``enable_fp_fusion=False``).

All of it is integer arithmetic up to the last three float32 operations, which are the reference's in
the reference's order, so the kernel is bit-identical to the torch reference on every device
(tests/kernels/test_sound_rows.py, in Triton's interpreter on the CPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from densepure.kernels.rows import StartRule, check_start
from densepure.kernels.rows_triton import _dest_row, _launch_config, _philox

__all__ = ["sound_start_rows"]


@triton.jit
def _level_words(words_ptr, chunk, LEVEL: tl.constexpr, BLOCK: tl.constexpr):
    """Elements ``chunk*BLOCK ..`` of the row's word field with its step field set to ``LEVEL``
    (0: the row's own words): ``(BLOCK,)`` int64 in [0, 2^32)."""
    block = (chunk * (BLOCK // 4) + tl.arange(0, BLOCK // 4)).to(tl.uint32)
    zero = tl.zeros([BLOCK // 4], dtype=tl.uint32)
    c0 = tl.load(words_ptr + 0).to(tl.uint32) | block
    c1 = tl.load(words_ptr + 1).to(tl.uint32)
    if LEVEL > 0:
        c1 = ((c1 >> 16) << 16) | LEVEL
    c1 = c1 + zero
    c2 = tl.load(words_ptr + 2).to(tl.uint32) + zero
    c3 = tl.load(words_ptr + 3).to(tl.uint32) + zero
    k0 = tl.load(words_ptr + 4).to(tl.uint32)
    k1 = tl.load(words_ptr + 5).to(tl.uint32)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    # element 4*b + 2*p + q is word 2p+q of block b
    return tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK]).to(tl.int64)


@triton.jit
def _count_below(high_ptr, u0, STEPS: tl.constexpr):
    """``#{i : high_i < u0}`` over the padded high words (``2^STEPS + 1`` entries)."""
    pos = tl.zeros(u0.shape, dtype=tl.int64)
    for s in tl.static_range(STEPS):
        half = 1 << (STEPS - 1 - s)
        probe = tl.load(high_ptr + pos + (half - 1))
        pos = tl.where(probe < u0, pos + half, pos)
    return pos


@triton.jit
def _count_at_or_below(high_ptr, mid_ptr, low_ptr, u0, u1, u2, STEPS: tl.constexpr):
    """``#{i : T_i <= (u0, u1, u2)}``: the same search comparing all three words."""
    pos = tl.zeros(u0.shape, dtype=tl.int64)
    for s in tl.static_range(STEPS):
        half = 1 << (STEPS - 1 - s)
        at = pos + (half - 1)
        h = tl.load(high_ptr + at)
        m = tl.load(mid_ptr + at)
        lo = tl.load(low_ptr + at)
        below = (h < u0) | ((h == u0) & ((m < u1) | ((m == u1) & (lo <= u2))))
        pos = tl.where(below, pos + half, pos)
    return pos


@triton.jit
def _sound_start_kernel(img_ptr, img_stride, slot_ptr, words_ptr, out_ptr, out_stride, out_rows_ptr, numel,
                        high_ptr, mid_ptr, low_ptr, k, scale, step, HAS_OUT_ROWS: tl.constexpr,
                        BLOCK: tl.constexpr, STEPS: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    x = tl.load(img_ptr + tl.load(slot_ptr + r) * img_stride + offs, mask=inside)
    row_words = words_ptr + r * 6
    u0 = _level_words(row_words, chunk, 0, BLOCK)
    count = _count_below(high_ptr, u0, STEPS)
    tied = (tl.load(high_ptr + count) == u0) & inside
    if tl.max(tied.to(tl.int32), axis=0) > 0:  # rare: about 2k / 2^32 of the values
        u1 = _level_words(row_words, chunk, 1, BLOCK)
        u2 = _level_words(row_words, chunk, 2, BLOCK)
        count = tl.where(tied, _count_at_or_below(high_ptr, mid_ptr, low_ptr, u0, u1, u2, STEPS), count)
    j = (count - k).to(tl.float32)
    y = scale * (2.0 * ((x + j) * step) - 1.0)
    tl.store(out_ptr + _dest_row(out_rows_ptr, r, HAS_OUT_ROWS) * out_stride + offs, y, mask=inside)


def sound_start_rows(images: torch.Tensor, image_slot: torch.Tensor, words: torch.Tensor, rule: StartRule,
                     out: torch.Tensor | None = None, out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`densepure.kernels.rows.start_rows` of a sound rule in one launch (same arguments and result)."""
    images, image_slot, words, out, out_rows = check_start(images, image_slot, words, rule, out, out_rows)
    rows, numel = image_slot.shape[0], images[0].numel()
    result = out if out is not None else torch.empty((rows, *images.shape[1:]), device=images.device)
    if rows and numel:
        block, chunks, options = _launch_config(images.device, numel)
        options.pop("LIBDEVICE")  # no transcendental function here
        t = rule.table.tensors(images.device)
        scale, step = rule.grid_constants()
        _sound_start_kernel[(rows, chunks)](images, images.stride(0), image_slot, words, result, result.stride(0),
                                            out_rows if out_rows is not None else image_slot, numel,
                                            t.high, t.mid, t.low, rule.table.k, scale, step,
                                            HAS_OUT_ROWS=out_rows is not None, BLOCK=block, STEPS=t.search_steps,
                                            **options)
    return result
