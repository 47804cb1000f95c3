"""``densepure bench sequential``: draws per decision of the sequential tests on a Bernoulli oracle (issue 19).

Every procedure sees the same seeded Bernoulli(p) streams (common random numbers: draw j of repetition k
is ``U_kj < p`` with U from a generator keyed by (seed, p, block), whatever the radius, n_max or
procedure), and answers "is p > Phi(r / sigma)?" at alpha; a stream is drawn until the procedure stops.
No model is involved: this measures the statistics only, and the counts do not depend on the machine.

Procedures:
  default         what ``--radius`` uses: BoundaryPlan.exact (exact alpha spending at fixed looks)
  geometric       SequentialPlan.geometric, the plan before issue 19 (Clopper-Pearson, union bound)
  betting         BoundaryPlan.betting (Ville's inequality on a mixture betting wealth, same looks)
  betting-cs      the published betting confidence sequence (Waudby-Smith & Ramdas 2024, hedged
                  capital, predictable plug-in bets truncated at c = 3/4, theta = 1/2), looking after
                  every draw: certified when the CS excludes t from below, futile when from above
  betting-cs-mix  the same hedged capital with mixture bets (uniform over the bet fraction: the
                  continuous limit of their diversified Kelly bets), after every draw

The report has a series per procedure (``cells.default``, ...) with a row per (n_max, r, p) cell: mean
and median draws and the fraction certified; its metrics are the default test's mean draws per cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import special

from densepure.bench.common import progress_bar
from densepure.bench.options import BenchRun
from densepure.bench.report import ReportBuilder, Unit
from densepure.stats.boundary import DEFAULT_METHOD, BoundaryPlan, build_plan
from densepure.stats.confseq import certify_counts, futile_counts
from densepure.stats.sequential import SequentialPlan

BLOCK = 2048  # draws per stream block: the unit of common random numbers


def stream(p: float, reps: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks (reps, BLOCK) of Bernoulli(p) draws as uint8; the same for every procedure."""
    key = round(p * 1_000_000)
    for block in range(1 << 30):
        yield (np.random.default_rng([seed, key, block]).random((reps, BLOCK)) < p).astype(np.uint8)


@dataclass(frozen=True)
class Outcome:
    """Per repetition: draws used (int64, (reps,)) and whether it certified (bool, (reps,))."""

    draws: np.ndarray
    certified: np.ndarray


def run_boundaries(p: float, reps: int, seed: int, looks: np.ndarray, certify_at: np.ndarray,
                   futile_at: np.ndarray) -> Outcome:
    """Simulate a test that looks at ``looks`` (cumulative draws) with count boundaries; the last look stops."""
    n_max = int(looks[-1])
    draws, certified = np.full(reps, n_max), np.zeros(reps, dtype=bool)
    running, hits, start = np.ones(reps, dtype=bool), np.zeros(reps, dtype=np.int64), 0
    futile_at = np.asarray(futile_at).copy()
    futile_at[-1] = np.iinfo(np.int64).max  # the last look stops every run still going
    for block in stream(p, reps, seed):
        stop = min(start + BLOCK, n_max)
        inside = (looks > start) & (looks <= stop)
        cum = hits[:, None] + np.cumsum(block[:, : stop - start], axis=1, dtype=np.int64)
        if inside.any():
            s = cum[:, looks[inside] - start - 1]
            up, down = s >= certify_at[inside], s <= futile_at[inside]
            decided = (up | down) & running[:, None]
            rows = np.flatnonzero(decided.any(axis=1))
            first = decided[rows].argmax(axis=1)
            draws[rows], certified[rows] = looks[inside][first], up[rows, first]
            running[rows] = False
        hits, start = cum[:, -1], stop
        if start >= n_max or not running.any():
            return Outcome(draws, certified)
    raise AssertionError("unreachable")


def run_plan(plan, p: float, reps: int, seed: int) -> Outcome:
    """Any plan with looks and count boundaries (BoundaryPlan, or SequentialPlan via count_boundaries)."""
    if isinstance(plan, SequentialPlan):
        certify_at, futile_at = plan.count_boundaries()
    else:
        certify_at, futile_at = plan.certify_at, plan.futile_at
    return run_boundaries(p, reps, seed, np.asarray(plan.looks), np.asarray(certify_at), np.asarray(futile_at))


class MixtureBoundaries:
    """Hedged mixture betting CS at every draw: certify when K_above(t) >= 2/alpha, futile when
    K_below(t) >= 2/alpha. Boundaries depend on n only (time-uniform): computed once per (t, alpha)."""

    def __init__(self):
        self._cache: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, t: float, alpha: float, n_max: int) -> tuple[np.ndarray, np.ndarray]:
        have = self._cache.get((t, alpha))
        if have is None or have[0].size < n_max:
            n = np.arange(1, n_max + 1)
            up = certify_counts(n, t, math.log(2.0 / alpha))
            have = (up, np.minimum(futile_counts(n, t, math.log(2.0 / alpha)), up - 1))
            self._cache[(t, alpha)] = have
        return have[0][:n_max], have[1][:n_max]


def run_prpl(p: float, t: float, alpha: float, n_max: int, reps: int, seed: int, c: float = 0.75) -> Outcome:
    """Hedged capital with predictable plug-in bets (Waudby-Smith & Ramdas 2024, Sec. 4, eqs. for
    PrPl-H): lambda_i = sqrt(2 log(2/alpha) / (var_{i-1} i log(1 + i))), truncated at c/t (bets on
    hits) and c/(1-t) (bets on misses); mu_i = (1/2 + sum x) / (i + 1), var_i = (1/4 + sum (x - mu)^2) / (i + 1)."""
    draws, certified = np.full(reps, n_max), np.zeros(reps, dtype=bool)
    running = np.ones(reps, dtype=bool)
    total, squares, log_up, log_down = np.zeros(reps), np.full(reps, 0.25), np.zeros(reps), np.zeros(reps)
    threshold, start = math.log(2.0 / alpha), 0
    for block in stream(p, reps, seed):
        stop = min(start + BLOCK, n_max)
        x = block[:, : stop - start].astype(np.float64)
        i = np.arange(start + 1, stop + 1, dtype=np.float64)
        csum = total[:, None] + np.cumsum(x, axis=1)
        sq = squares[:, None] + np.cumsum((x - (0.5 + csum) / (i + 1)) ** 2, axis=1)
        var_prev = np.concatenate([(squares / (start + 1))[:, None], sq[:, :-1] / i[:-1]], axis=1)
        lam = np.sqrt(2.0 * threshold / (var_prev * i * np.log1p(i)))
        up = log_up[:, None] + np.cumsum(np.log1p(np.minimum(lam, c / t) * (x - t)), axis=1)
        down = log_down[:, None] + np.cumsum(np.log1p(-np.minimum(lam, c / (1 - t)) * (x - t)), axis=1)
        decided = ((up >= threshold) | (down >= threshold)) & running[:, None]
        rows = np.flatnonzero(decided.any(axis=1))
        first = decided[rows].argmax(axis=1)
        draws[rows], certified[rows] = start + first + 1, up[rows, first] >= threshold
        running[rows] = False
        total, squares, log_up, log_down, start = csum[:, -1], sq[:, -1], up[:, -1], down[:, -1], stop
        if start >= n_max or not running.any():
            return Outcome(draws, certified)
    raise AssertionError("unreachable")


def run_cell(procedure: str, p: float, r_over_sigma: float, n_max: int, sigma: float, alpha: float, reps: int,
             seed: int, mixtures: MixtureBoundaries) -> Outcome:
    """One cell: ``reps`` streams of Bernoulli(``p``) through ``procedure`` at radius ``r_over_sigma * sigma``."""
    radius, t = r_over_sigma * sigma, float(special.ndtr(r_over_sigma))
    if procedure == "default":
        return run_plan(build_plan(DEFAULT_METHOD, radius, sigma, alpha, n_max), p, reps, seed)
    if procedure == "geometric":
        return run_plan(SequentialPlan.geometric(radius, sigma, alpha, n_max=n_max), p, reps, seed)
    if procedure == "betting":
        return run_plan(BoundaryPlan.betting(radius, sigma, alpha, n_max), p, reps, seed)
    if procedure == "betting-cs":
        return run_prpl(p, t, alpha, n_max, reps, seed)
    up, down = mixtures.get(t, alpha, n_max)
    return run_boundaries(p, reps, seed, np.arange(1, n_max + 1), up, down)


COLUMNS = (("n_max", Unit.DRAWS), ("r_over_sigma", Unit.COUNT), ("p", Unit.FRACTION), ("mean_draws", Unit.DRAWS),
           ("median_draws", Unit.DRAWS), ("certified", Unit.FRACTION))


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    """Every cell of the grid: one series per procedure (``cells.default``, ...), a row per cell."""
    sim, sigma, alpha = run.simulation, run.job.smoothing.sigma, run.job.sampling.alpha
    seed = run.job.sampling.seed if run.job.sampling.seed is not None else 0
    builder.configuration["seed"] = seed
    cells: dict[str, list] = {name: [] for name in sim.procedures}
    mixtures = MixtureBoundaries()
    grid = [(n, r, p, proc) for n in sim.n_max for r in sim.radii for p in sim.p_values for proc in sim.procedures]
    bar = progress_bar(len(grid), "cells", unit="cell")
    try:
        for n_max, r, p, procedure in grid:
            result = run_cell(procedure, p, r, n_max, sigma, alpha, sim.reps, seed, mixtures)
            row = (n_max, r, p, float(result.draws.mean()), float(np.median(result.draws)),
                   float(result.certified.mean()))
            cells[procedure].append(row)
            if procedure == "default":
                builder.metric(f"default.n{n_max}.r{r:g}.p{p:g}.mean_draws", row[3], Unit.DRAWS,
                               f"mean draws of the default test, p={p:g}, r={r:g} sigma, n_max={n_max}")
            bar.update(1)
    finally:
        bar.close()
        for procedure, rows in cells.items():
            builder.add_series(f"cells.{procedure}", COLUMNS, rows)
    builder.note(f"alpha={alpha}, sigma={sigma}, {sim.reps} repetitions per cell, seed {seed}; common random "
                 "numbers across procedures; counts only (no timing): the numbers do not depend on the machine")
