"""Sound noise: integer grid steps drawn exactly from the discretized Gaussian, keyed like every noise value.

For an image on the grid ``k / levels``, the sound modes replace the float noise ``sigma z`` by ``j``
grid steps, ``j`` drawn from the discretized Gaussian of :mod:`densepure.noise.sound_table`; the model
input is then computed from the integer grid index ``x_int + j`` alone (:mod:`densepure.kernels.rows`).

The draw. Value ``i`` of a row reads a uniform ``BITS = 96``-bit integer ``U = (u0, u1, u2)`` (32-bit
words, ``u0`` the highest) and returns ``j = #{thresholds T <= U} - k``. The words are Philox words of
the row's own identity, exactly like every other noise value (:mod:`densepure.noise.keys`):

* ``u0``: word ``i % 4`` of block ``i // 4`` of the row words: the very word the float noise of the
  same identity would turn into a uniform (:func:`~densepure.noise.fields.word_field`);
* ``u1``, ``u2``: the same, for the row's identity with its ``step`` field set to 1 and 2 (the sound
  rows are DELTA or FORWARD rows, whose step is 0 by convention: :class:`~densepure.noise.NoiseKey`).
  They are read only where ``u0`` equals the high word of a threshold (about ``2k / 2^32`` of the
  values), because elsewhere ``u0`` alone decides every comparison ``T <= U``.

So distinct values use distinct Philox words, and under the usual assumption that Philox words are
independent uniform bits, every ``j`` is an independent exact draw from the table's law ``Q``.

Fast path (torch): ``u0``'s top ``GUIDE_BITS`` bits index a guide table (Chen and Asau's method) that
holds, packed in one int64, the number of thresholds below the bucket and the bucket's lowest high word;
a bucket holds at most one threshold's high word for all but the far tails, so one gather and one
comparison finish the count. The words are consumed lane by lane as Philox produces them (no field of
words is kept). Values in crowded buckets (two or more high words), and values that tie with a high
word, take the exact path: a binary search of the high words, then a comparison of all 96 bits with
Python integers for the ties. The exact path reads the device's values on the host (one
synchronization on CUDA, where the Triton kernel is the fast one).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch

from densepure.errors import InputError
from densepure.noise.fields import _bits, _check_request, _check_words
from densepure.noise.keys import STEP_BITS, NoiseKeys, row_words
from densepure.noise.philox import philox
from densepure.noise.sound_table import CROWDED, FIRST_BITS, GUIDE_BITS, WORD_BITS, SoundTable

__all__ = ["GRID_TOLERANCE", "REFINE_LEVELS", "grid_indices", "refined_words", "sound_steps", "sound_steps_words",
           "steps_from_words"]

REFINE_LEVELS = (1, 2)  # the step-field values whose words are u1 and u2
GRID_TOLERANCE = 2.0**-23  # |x - k / levels| allowed: the float32 storage of k / levels, with room to spare
_STEP_MASK = (1 << STEP_BITS) - 1

Refine = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def refined_words(words: torch.Tensor, level: int) -> torch.Tensor:
    """Row words ``(B, 6)`` with the step field of ``c1`` replaced by ``level``: where ``u1`` (level 1)
    and ``u2`` (level 2) of a sound row come from."""
    out = words.clone()
    out[:, 1] = (out[:, 1] & ~_STEP_MASK) | level
    return out


def _philox_refine(words: torch.Tensor) -> Refine:
    """``refine(rows, elements, level)``: the level's word of value ``elements[s]`` of row ``rows[s]``."""
    def refine(rows: torch.Tensor, elements: torch.Tensor, level: int) -> torch.Tensor:
        w = refined_words(words[rows], level)
        block, lane = elements // 4, elements % 4
        out = torch.stack(philox(w[:, 0] | block, w[:, 1], w[:, 2], w[:, 3], w[:, 4], w[:, 5]), dim=1)
        return out.gather(1, lane.unsqueeze(1)).squeeze(1)
    return refine


def _exact_counts(u0: torch.Tensor, rows: torch.Tensor, elements: torch.Tensor, table: SoundTable,
                  refine: Refine) -> torch.Tensor:
    """``#{T <= U}`` for a few values: a binary search of the high words, then all 96 bits where ``u0``
    ties with a high word (exact Python integers)."""
    high = table.tensors(u0.device).high[: 2 * table.k]
    below = torch.searchsorted(high, u0, right=False)
    tied = torch.nonzero(torch.searchsorted(high, u0, right=True) != below).flatten()
    if tied.numel():
        u1 = refine(rows[tied], elements[tied], 1).tolist()
        u2 = refine(rows[tied], elements[tied], 2).tolist()
        full = [(a << 64) | (b << 32) | c for a, b, c in zip(u0[tied].tolist(), u1, u2, strict=True)]
        below[tied] = torch.tensor([bisect.bisect_right(table.thresholds, u) for u in full],
                                   dtype=torch.int64, device=u0.device)
    return below


def _lane_counts(u0: torch.Tensor, tensors) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast path on flat first words ``u0`` (int64): ``(#{high < u0}, slow)``, exact where ``slow`` is
    False (``slow``: a crowded bucket, or ``u0`` equal to a high word)."""
    packed = tensors.guide.index_select(0, u0 >> (WORD_BITS - GUIDE_BITS))  # index_select: the fastest gather
    below = (packed >> FIRST_BITS).sub_(u0)  # the bucket's lowest high word minus u0
    count = packed.bitwise_and_(CROWDED).sub_(below >> 63)  # + 1 where that high word is below u0
    return count, (count >= CROWDED).logical_or_(below == 0)


def steps_from_words(u0: torch.Tensor, table: SoundTable, refine: Refine) -> torch.Tensor:
    """Grid steps ``j`` ``(B, n)`` int64 in ``[-k, k]`` from the first words ``u0`` (``(B, n)`` int64 in
    ``[0, 2^32)``); ``refine(rows, elements, level)`` gives the words ``u1``, ``u2`` of the values it is
    asked for (module docstring). Exactly ``#{T <= (u0, u1, u2)} - k`` for every value."""
    flat = u0.reshape(-1)
    count, slow = _lane_counts(flat, table.tensors(u0.device))
    slow = torch.nonzero(slow).flatten()
    if slow.numel():
        rows, elements = slow // u0.shape[1], slow % u0.shape[1]
        count[slow] = _exact_counts(flat[slow], rows, elements, table, refine)
    return count.reshape(u0.shape) - table.k


def sound_steps_words(words: torch.Tensor, shape: Sequence[int], table: SoundTable,
                      device: torch.device) -> torch.Tensor:
    """Sound grid steps ``(B, *shape)`` int64, one field per row of ``words`` ``(B, 6)`` (DELTA or FORWARD
    rows, step 0). Row ``r`` is a pure function of ``words[r]`` and the flat element index, like the
    float fields, and a shorter field is a prefix of a longer one."""
    if not isinstance(table, SoundTable):
        raise InputError(f"table must be a SoundTable, got {type(table).__name__}")
    numel = _check_request(shape, device, torch.float32)
    words = _check_words(words, device)
    tensors, n_blocks = table.tensors(device), -(-numel // 4)
    out = torch.empty((words.shape[0], n_blocks, 4), dtype=torch.int64, device=device)
    slow_parts = []

    def emit(rows, blocks, w):  # the fast path lane by lane, as the words come: no field of words is kept
        dst = out[rows, blocks]
        for lane in range(4):
            count, slow = _lane_counts(w[lane].reshape(-1), tensors)
            dst[..., lane].copy_(count.view(w[lane].shape))
            if bool(slow.any()):
                at = torch.nonzero(slow.view(w[lane].shape))
                slow_parts.append((at[:, 0] + rows.start, (at[:, 1] + blocks.start) * 4 + lane,
                                   w[lane][at[:, 0], at[:, 1]]))

    _bits(words, numel, emit)
    field = out.reshape(words.shape[0], n_blocks * 4)
    for rows, elements, u0 in slow_parts:
        field[rows, elements] = _exact_counts(u0, rows, elements, table, _philox_refine(words))
    return (field[:, :numel] - table.k).reshape(words.shape[0], *shape)


def sound_steps(keys: NoiseKeys, shape: Sequence[int], table: SoundTable, device: torch.device) -> torch.Tensor:
    """:func:`sound_steps_words` of the keys' row words."""
    if not isinstance(keys, NoiseKeys):
        raise InputError(f"keys must be NoiseKeys, got {type(keys).__name__}")
    _check_request(shape, device, torch.float32)
    return sound_steps_words(row_words(keys, device), shape, table, device)


def grid_indices(x: torch.Tensor, levels: int, name: str = "image") -> torch.Tensor:
    """The integer grid indices ``k`` of an image on the grid ``k / levels`` (same shape, float32).

    Every value must lie within ``GRID_TOLERANCE`` (``2^-23``, four float32 units at 1.0) of a level
    ``k / levels`` with ``0 <= k <= levels``: the float32 storage of the level, never a real
    perturbation (a grid step is at least ``2^-16``). Otherwise :class:`InputError` names the grid and
    the first value off it. The certificate is then the grid point's (docs/guarantees.md).
    """
    wide = x.detach().to(torch.float64)
    k = torch.round(wide * levels)
    off = (wide - k / levels).abs()
    worst = int(off.flatten().argmax()) if off.numel() else 0
    if off.numel() and (float(off.flatten()[worst]) > GRID_TOLERANCE or float(k.min()) < 0 or float(k.max()) > levels):
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), x.shape))
        value = float(wide.flatten()[worst])
        raise InputError(f"{name} is not on the grid k/{levels} (--levels {levels}): value {value:.6g} at {where} is "
                         f"{abs(value * levels - round(value * levels)):.3g} grid steps from the nearest level; give "
                         "the quantized image, or --noise float")
    return k.to(torch.float32)


def expected_ties(table: SoundTable) -> float:
    """The probability that a value's ``u0`` ties with a threshold's high word (reads ``u1``, ``u2``)."""
    return len({t >> 64 for t in table.thresholds}) / math.ldexp(1.0, WORD_BITS)
