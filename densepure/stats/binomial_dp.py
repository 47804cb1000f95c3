"""Exact probabilities for a binomial count examined at fixed looks: a dynamic program on S_n.

A sequential test that decides only at looks ``n_1 < ... < n_m`` (fixed before sampling) from the
count ``S_n`` of hits among the first n i.i.d. Bernoulli(q) draws is fully described by two integer
boundaries per look: stop CERTIFIED when ``S_{n_i} >= certify_at[i]``, stop NOT_CERTIFIED when
``S_{n_i} <= futile_at[i]`` (and at the last look). Whatever produced the boundaries (Clopper-Pearson
levels, a betting e-process, alpha spending), every probability about the test is a sum over the
distribution of ``S`` restricted to the paths still running, which this module propagates look by
look: ``w_i = (w_{i-1} * Binomial(n_i - n_{i-1}, q))`` (a convolution), then the mass beyond a
boundary is removed. This is the classical exact computation for group-sequential binomial designs
(Jennison & Turnbull, "Group Sequential Methods with Applications to Clinical Trials", 2000,
Ch. 12; Schultz et al., Biometrics 29, 1973).

Rounding: states are float64 probabilities. Mass that the program drops on purpose (Binomial
increments beyond 12 standard deviations + 40, states below ``1e-30``) is never assumed harmless:
:func:`crossing_bound` counts it as if it had crossed, so the value returned is an upper bound on
the true crossing probability up to float64 summation error (relative ~1e-15), which callers cover
with a relative margin (see :data:`SAFETY`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import signal, stats

SAFETY = 1e-9
"""Relative margin designs keep below their level: a design at level a spends at most a*(1-SAFETY)."""

_NEGLIGIBLE = 1e-30  # state mass dropped (and accounted for) at either end of the support
_DIRECT_MAX = 60_000  # np.convolve below this many multiply-adds, FFT above


def _increment(d: int, q: float) -> tuple[int, np.ndarray, float]:
    """Binomial(d, q) probabilities on a window ``[klo, klo + len)`` and the mass outside it."""
    sd = math.sqrt(d * q * (1.0 - q))
    klo = max(0, math.floor(d * q - 12.0 * sd) - 40)
    khi = min(d, math.ceil(d * q + 12.0 * sd) + 40)
    pmf = stats.binom.pmf(np.arange(klo, khi + 1), d, q)
    return klo, pmf, max(0.0, 1.0 - math.fsum(pmf))


def _convolve(w: np.ndarray, pmf: np.ndarray) -> np.ndarray:
    if w.size * pmf.size <= _DIRECT_MAX:
        return np.convolve(w, pmf)
    out = signal.fftconvolve(w, pmf)  # absolute error ~1e-17: far below SAFETY * alpha
    return np.maximum(out, 0.0, out=out)


class _Walk:
    """The distribution of S over the paths still running: ``w[j] = P(S = lo + j, running)``."""

    def __init__(self, q: float):
        self.q, self.lo, self.n = q, 0, 0
        self.w = np.ones(1)
        self.lost = 0.0  # mass dropped by the window and the trimming (never assumed harmless)

    def advance(self, n: int) -> None:
        klo, pmf, outside = _increment(n - self.n, self.q)
        self.lost += outside * float(self.w.sum())
        self.w = _convolve(self.w, pmf)
        self.lo += klo
        self.n = n

    def cut_above(self, c: int) -> float:
        """Remove and return the mass at ``S >= c``."""
        j = min(max(c - self.lo, 0), self.w.size)
        mass = float(self.w[j:].sum())
        self.w = self.w[:j]
        return mass

    def cut_below(self, f: int) -> float:
        """Remove and return the mass at ``S <= f``."""
        j = min(max(f - self.lo + 1, 0), self.w.size)
        mass = float(self.w[:j].sum())
        self.w, self.lo = self.w[j:], self.lo + j
        return mass

    def trim(self) -> None:
        head = np.cumsum(self.w)
        k = int(np.searchsorted(head, _NEGLIGIBLE, side="right"))
        tail = np.cumsum(self.w[::-1])
        k_end = int(np.searchsorted(tail, _NEGLIGIBLE, side="right"))
        if k + k_end >= self.w.size:
            self.lost += float(self.w.sum())
            self.w = self.w[:0]
            return
        self.lost += (float(head[k - 1]) if k else 0.0) + (float(tail[k_end - 1]) if k_end else 0.0)
        self.w, self.lo = self.w[k : self.w.size - k_end], self.lo + k

    @property
    def running(self) -> float:
        return float(self.w.sum())


def design_upper(looks: Sequence[int], q: float, cumulative: Sequence[float]) -> tuple[int, ...]:
    """Smallest boundaries ``c_i`` with ``P_q(S_{n_j} >= c_j for some j <= i) <= cumulative[i]``.

    Alpha spending with exact probabilities: at each look the boundary takes all the budget the
    earlier looks left, so no level is wasted on the correlation between looks. ``c_i = n_i + 1``
    (no certification possible at look i) when even ``S = n_i`` would overspend. Mass the program
    drops counts as spent, so the budgets hold for the true probabilities.
    """
    walk, spent, out = _Walk(q), 0.0, []
    for n, budget in zip(looks, cumulative, strict=True):
        walk.advance(int(n))
        allowed = budget - spent - walk.lost
        tails = np.cumsum(walk.w[::-1])[::-1]  # tails[j] = P(S >= lo + j, running)
        ok = np.flatnonzero(tails <= allowed)
        if allowed < 0 or walk.w.size == 0:
            c = int(n) + 1
        else:  # above the window only dropped (already counted) mass remains
            c = min(walk.lo + (int(ok[0]) if ok.size else walk.w.size), int(n) + 1)
        spent += walk.cut_above(c)
        walk.trim()
        out.append(c)
    return tuple(out)


def design_lower(looks: Sequence[int], q: float, cumulative: Sequence[float]) -> tuple[int, ...]:
    """Largest boundaries ``f_i`` with ``P_q(S_{n_j} <= f_j for some j <= i) <= cumulative[i]``.

    The mirror image of :func:`design_upper`; ``f_i = -1`` when no count may stop at look i.
    """
    walk, spent, out = _Walk(q), 0.0, []
    for n, budget in zip(looks, cumulative, strict=True):
        walk.advance(int(n))
        allowed = budget - spent - walk.lost
        heads = np.cumsum(walk.w)  # heads[j] = P(S <= lo + j, running)
        ok = np.flatnonzero(heads <= allowed)
        if allowed < 0 or walk.w.size == 0:
            f = -1
        else:  # below the window only dropped (already counted) mass remains
            f = max(min(walk.lo + (int(ok[-1]) if ok.size else -1), int(n)), -1)
        spent += walk.cut_below(f)
        walk.trim()
        out.append(f)
    return tuple(out)


def crossing_bound(looks: Sequence[int], certify_at: Sequence[int], q: float) -> float:
    """An upper bound on ``P_q(S_{n_i} >= certify_at[i] for some i)``, futility ignored.

    Ignoring the futility boundary can only enlarge the event (a path stopped for futility never
    certifies), so this bounds the certification probability of the test whatever its futility
    rule. Exact up to the dropped mass, which is added, and float64 rounding.
    """
    walk, spent = _Walk(q), 0.0
    for n, c in zip(looks, certify_at, strict=True):
        walk.advance(int(n))
        spent += walk.cut_above(int(c))
        walk.trim()
        if walk.w.size == 0:
            break
    return min(1.0, spent + walk.lost)


@dataclass(frozen=True)
class OperatingCharacteristics:
    """What a boundary test does when every draw is a hit with probability ``p``.

    certify: P(CERTIFIED). futile: P(NOT_CERTIFIED), the last look included. expected_draws: E[n
    at the stopping look]. unaccounted: mass the program dropped (a bound on the error of each value).
    """

    p: float
    certify: float
    futile: float
    expected_draws: float
    unaccounted: float


def operating_characteristics(
    looks: Sequence[int], certify_at: Sequence[int], futile_at: Sequence[int], p: float
) -> OperatingCharacteristics:
    """Exact P(certify), P(not certified) and expected draws of the test at true hit rate ``p``.

    Both boundaries bind, and the last look stops every path still running (NOT_CERTIFIED).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    walk = _Walk(p)
    certify = futile = expected = 0.0
    last = len(looks) - 1
    for i, (n, c, f) in enumerate(zip(looks, certify_at, futile_at, strict=True)):
        walk.advance(int(n))
        pc = walk.cut_above(int(c))
        pf = walk.cut_below(int(n) if i == last else int(f))
        certify, futile, expected = certify + pc, futile + pf, expected + int(n) * (pc + pf)
        walk.trim()
        if walk.w.size == 0:
            break
    return OperatingCharacteristics(p, certify, futile, expected, walk.lost + walk.running)
