"""Threshold tables of the sound noise: the discretized Gaussian of a pixel grid, as exact integers.

An image on the grid ``q = 1/levels`` (8-bit images: ``levels = 255``; scikit-learn's digits: 16) plus
continuous Gaussian noise ``delta ~ N(0, sigma^2)``, rounded back to the grid, moves each value by
``j`` grid steps, where ``P(j) = Phi((j + 1/2) q / sigma) - Phi((j - 1/2) q / sigma)`` (the
discretized Gaussian; ``Phi`` the standard normal CDF). :mod:`densepure.noise.sound` samples ``j``
from a uniform ``BITS``-bit integer ``U`` against the integer thresholds of this module::

    T_i = round(2^BITS * Phi((i + 1/2) q / sigma)),   i = -k .. k-1,
    j   = #{i : T_i <= U} - k                          (so j is in [-k, k]).

The sampled law is ``Q(j) = (T_j - T_{j-1}) / 2^BITS`` with ``T_{-k-1} = 0`` and ``T_k = 2^BITS``: the
exact ``P`` up to the rounding of each threshold (at most ``2^-(BITS+1)``) and the tails beyond
``+-k``, which ``k`` makes smaller than one rounding unit (every threshold left out would round to 0
or ``2^BITS``). :attr:`SoundTable.tv_per_value` bounds the total-variation distance between ``Q`` and
``P`` (tails included); :func:`added_failure` turns it into the failure probability a certificate adds
(docs/guarantees.md: the coupling argument).

The thresholds are computed once per ``(levels, sigma)`` in ``PRECISION``-bit arithmetic (mpmath),
only on the lower half (``Phi < 1/2``, where ``Phi`` is computed with full relative accuracy), the
upper half by the symmetry ``T_{-1-i} = 2^BITS - T_i`` (exact: ``Phi(-x) = 1 - Phi(x)`` and no value
lies on a rounding tie, which is checked). ``sigma`` is the float64 value itself, read exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from itertools import pairwise

import torch

from densepure.errors import ConfigError

__all__ = ["BITS", "CROWDED", "GUIDE_BITS", "MAX_LEVELS", "SoundTable", "SoundTensors", "added_failure",
           "sound_table"]

BITS = 96  # U: one 32-bit Philox word per value, two more only where the first ties with a threshold
WORD_BITS = 32
GUIDE_BITS = 16  # the guide table of the fast path: one entry per value of U's top 16 bits
PRECISION = 256  # bits of mpmath arithmetic: a threshold is off by < 2^(BITS + 8 - PRECISION) before rounding
MAX_LEVELS = 1 << 16
_TIE_MARGIN = 2.0**-64  # a value this close to a rounding tie would be refused (never seen: checked at build)
FIRST_BITS = 20  # the guide packs a bucket's first threshold index in 20 bits ...
CROWDED = (1 << FIRST_BITS) - 1  # ... and marks a crowded bucket with this index (2k is always below it)


@dataclass(frozen=True)
class SoundTensors:
    """A table's thresholds on one device, as the samplers read them (all int64).

    ``high``, ``mid``, ``low``: ``(P + 1,)`` the 32-bit words of ``T_i`` (bits 64..95, 32..63, 0..31),
    padded from ``2k`` to ``P + 1`` entries (``P`` the next power of two >= ``2k``) with
    ``high = 2^32``, larger than any word, so a binary search of ``log2(P)`` steps never counts the
    padding. ``guide``: ``(2^GUIDE_BITS,)`` per bucket ``h`` (the values whose high 16 bits are ``h``),
    ``(c << FIRST_BITS) | f``: ``f`` the number of thresholds whose high word lies below the bucket and
    ``c`` the lowest high word at or above the bucket's start (``2^32`` if none), so a value ``u0`` of a
    bucket holding at most one high word has ``#{high < u0} = f + (c < u0)``; a crowded bucket (two or
    more high words) has ``f = CROWDED`` and ``c = 2^33``, which the fast path sends to the exact search.
    """

    high: torch.Tensor
    mid: torch.Tensor
    low: torch.Tensor
    guide: torch.Tensor
    search_steps: int


@dataclass(frozen=True, eq=False)
class SoundTable:
    """The thresholds of the discretized Gaussian for one ``(levels, sigma)`` (module docstring).

    ``thresholds``: the ``2k`` integers ``T_{-k} .. T_{k-1}`` in ``[0, 2^BITS)``, non-decreasing.
    ``tv_per_value``: an upper bound on the total-variation distance between one sampled value's law
    and the exact discretized Gaussian (rounding and tails). Build with :func:`sound_table`.
    """

    levels: int
    sigma: float
    k: int
    thresholds: tuple[int, ...]
    tv_per_value: float
    _tensors: dict = field(default_factory=dict, repr=False, compare=False)

    def probabilities(self) -> list[tuple[int, int]]:
        """``(j, 2^BITS * Q(j))`` for ``j = -k .. k``: the sampled law, exactly (integers)."""
        bounds = (0, *self.thresholds, 1 << BITS)
        return [(j - self.k, bounds[j + 1] - bounds[j]) for j in range(2 * self.k + 1)]

    def tensors(self, device: torch.device) -> SoundTensors:
        """The device copy of the table (built once per device)."""
        key = str(torch.device(device))
        if key not in self._tensors:
            self._tensors[key] = _device_tensors(self.thresholds, torch.device(device))
        return self._tensors[key]


def _device_tensors(thresholds: tuple[int, ...], device: torch.device) -> SoundTensors:
    n = len(thresholds)
    steps = max(1, (n - 1).bit_length())
    padded = 1 << steps
    high = [t >> 64 for t in thresholds] + [1 << WORD_BITS] * (padded + 1 - n)
    mid = [(t >> 32) & 0xFFFFFFFF for t in thresholds] + [0] * (padded + 1 - n)
    low = [t & 0xFFFFFFFF for t in thresholds] + [0] * (padded + 1 - n)
    shift = WORD_BITS - GUIDE_BITS
    high_words = torch.tensor(high[:n], dtype=torch.int64)
    buckets = torch.arange(1 << GUIDE_BITS, dtype=torch.int64)
    first = torch.searchsorted(high_words, buckets << shift)
    crowded = torch.searchsorted(high_words, (buckets + 1) << shift) - first >= 2
    lowest = torch.tensor(high, dtype=torch.int64)[first]
    guide = torch.where(crowded, ((1 << (WORD_BITS + 1)) << FIRST_BITS) | CROWDED, (lowest << FIRST_BITS) | first)
    as_tensor = functools.partial(torch.tensor, dtype=torch.int64, device=device)
    return SoundTensors(as_tensor(high), as_tensor(mid), as_tensor(low), guide.to(device), steps)


def _check_request(levels: object, sigma: object) -> tuple[int, float]:
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise ConfigError(f"levels (the grid is k / levels) must be an integer in [1, {MAX_LEVELS}], got {levels!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0.0 < float(sigma) < math.inf:
        raise ConfigError(f"sigma must be a finite number > 0, got {sigma!r}")
    return levels, float(sigma)


def _scaled_cdf(mp, i: int, levels: int, sigma: float):
    """``2^BITS * Phi((i + 1/2) / (levels * sigma))`` in mpmath at the working precision."""
    return mp.ldexp(mp.ncdf(mp.mpf(2 * i + 1) / (2 * levels * mp.mpf(sigma))), BITS)


def _tail_index(mp, levels: int, sigma: float) -> int:
    """The smallest ``k >= 1`` with ``2^BITS Phi(-(k + 1/2) q / sigma) < 1/2``: every threshold beyond
    ``+-k`` would round to 0 or 2^BITS."""
    k = max(1, int(12.0 * levels * sigma))  # Phi(-12) 2^96 ~ 1.4e-4: a bound just above the answer
    while _scaled_cdf(mp, -k - 1, levels, sigma) >= 0.5:
        k *= 2
    lo, hi = 0, k  # invariant: hi satisfies, lo does not (or is 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _scaled_cdf(mp, -mid - 1, levels, sigma) < 0.5 else (mid, hi)
    return hi


def _round_checked(mp, value) -> int:
    """``round(value)`` for a non-negative mpf, refusing a value within ``_TIE_MARGIN`` of a tie."""
    floor = int(mp.floor(value))
    frac = float(value - floor)
    if abs(frac - 0.5) < _TIE_MARGIN:
        raise ArithmeticError(f"a sound-noise threshold lies within 2^-64 of a rounding tie ({value}): "
                              "raise PRECISION")
    return floor + (frac > 0.5)


def _tv_bound(mp, table_lower: list[int], cdf_lower: list, k: int) -> float:
    """An upper bound on TV(Q, P) (module docstring), from the lower half by symmetry.

    ``cdf_lower[m]`` is ``2^BITS Phi((i + 1/2) q / sigma)`` for ``i = -k-1 .. -1`` (m = i + k + 1),
    ``table_lower`` the rounded ``T_i`` for ``i = -k .. -1``. The laws are symmetric about 0, so
    ``sum_j |Q - P| = 2 sum_{j < 0} |Q - P| + |Q(0) - P(0)|`` and ``|Q(0) - P(0)| = 2 |T_{-1} - cdf_{-1}|``.
    """
    one = mp.ldexp(1, BITS)
    missing = cdf_lower[0]  # P(j < -k): the tail the table leaves out (mass moved into j = -k)
    side = missing + abs(table_lower[0] - (cdf_lower[1] - cdf_lower[0]))  # j = -k: Q = T_{-k} / 2^BITS
    for m in range(1, k):
        q = table_lower[m] - table_lower[m - 1]
        p = cdf_lower[m + 1] - cdf_lower[m]
        side += abs(q - p)
    centre = 2 * abs(table_lower[-1] - cdf_lower[-1])
    total = (2 * side + centre) / (2 * one)
    return math.nextafter(float(total * (1 + mp.ldexp(1, -40))), math.inf)


@functools.lru_cache(maxsize=64)
def sound_table(levels: int, sigma: float) -> SoundTable:
    """The checked threshold table of ``(levels, sigma)`` (built once per process; milliseconds for the
    digits, about a second for 8-bit images at sigma = 1)."""
    import mpmath

    levels, sigma = _check_request(levels, sigma)
    mp = mpmath.mp
    with mpmath.workprec(PRECISION):
        k = _tail_index(mp, levels, sigma)
        cdf_lower = [_scaled_cdf(mp, i, levels, sigma) for i in range(-k - 1, 0)]
        lower = [_round_checked(mp, v) for v in cdf_lower[1:]]
        tv = _tv_bound(mp, lower, cdf_lower, k)
    upper = [(1 << BITS) - t for t in reversed(lower)]  # T_i for i = 0 .. k-1: T_{-1-i} = 2^BITS - T_i
    thresholds = tuple(lower + upper)
    _check_table(thresholds, k)
    return SoundTable(levels, sigma, k, thresholds, tv)


def _check_table(thresholds: tuple[int, ...], k: int) -> None:
    """Non-decreasing, inside ``[0, 2^BITS)``, symmetric, and the centre cell carries mass."""
    if len(thresholds) != 2 * k or thresholds[0] < 0 or thresholds[-1] >= 1 << BITS or 2 * k >= CROWDED:
        raise ArithmeticError(f"sound-noise table out of range: {len(thresholds)} thresholds for k={k}")
    if any(b < a for a, b in pairwise(thresholds)):
        raise ArithmeticError("sound-noise thresholds are not monotone")
    if any(thresholds[i] + thresholds[2 * k - 1 - i] != 1 << BITS for i in range(k)):
        raise ArithmeticError("sound-noise thresholds are not symmetric")


def added_failure(table: SoundTable, values_per_draw: int, draws: int) -> float:
    """The failure probability the sound noise adds to a certificate of ``draws`` draws of
    ``values_per_draw`` values each: ``draws * values_per_draw * tv_per_value``, rounded up.

    Coupling: the sampled values can be coupled with exact discretized-Gaussian values so that each
    differs with probability ``tv_per_value``; by the union bound all of one image's values agree
    except with at most this probability, and where they agree the certificate is the one the exact
    noise gives (docs/guarantees.md).
    """
    if values_per_draw < 1 or draws < 0:
        raise ConfigError(f"values_per_draw must be >= 1 and draws >= 0, got {values_per_draw}, {draws}")
    return math.nextafter(float(draws) * float(values_per_draw) * table.tv_per_value, math.inf)
