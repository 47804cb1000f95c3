"""densepure bench sequential: its vectorized simulation makes the decisions of the real state machines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densepure.bench import sequential as bench_module
from densepure.cli import main
from densepure.stats.boundary import BoundaryPlan
from densepure.stats.sequential import SequentialPlan


@pytest.fixture(scope="module")
def bench():
    return bench_module


def _state_machine(bench, plan, p: float, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Drive plan.start() on the benchmark's own streams, one repetition at a time."""
    n_max = plan.looks[-1]
    blocks = []
    for block in bench.stream(p, reps, seed):
        blocks.append(block)
        if len(blocks) * bench.BLOCK >= n_max:
            break
    hits = np.cumsum(np.concatenate(blocks, axis=1)[:, :n_max], axis=1)
    draws, certified = np.zeros(reps, dtype=np.int64), np.zeros(reps, dtype=bool)
    for k in range(reps):
        test = plan.start(0)
        while (look := test.next_look) is not None:
            test.update(int(hits[k, look - 1]), look)
        draws[k], certified[k] = test.result.n_used, test.result.certified
    return draws, certified


@pytest.mark.parametrize("p", [0.80, 0.86, 0.97])
def test_simulation_equals_the_state_machines(bench, p):
    for plan in (BoundaryPlan.exact(0.25, 0.25, 0.01, 3000), SequentialPlan.geometric(0.25, 0.25, 0.01, n_max=3000),
                 BoundaryPlan.betting(0.25, 0.25, 0.01, 3000)):
        out = bench.run_plan(plan, p, 40, seed=7)
        draws, certified = _state_machine(bench, plan, p, 40, seed=7)
        assert np.array_equal(out.draws, draws) and np.array_equal(out.certified, certified)


def test_published_betting_sequences_stop_within_the_budget(bench):
    prpl = bench.run_prpl(0.99, 0.8413, 0.001, 5000, 30, seed=1)
    mix = bench.run_boundaries(0.99, 30, 1, np.arange(1, 5001), *bench.MixtureBoundaries().get(0.8413, 0.001, 5000))
    for out in (prpl, mix):
        assert out.certified.all() and (out.draws <= 5000).all() and out.draws.min() >= 40


def test_the_subcommand_reports_every_cell(tmp_path, capsys):
    code = main(["bench", "sequential", "--reps", "20", "--p", "0.8", "0.99", "--r", "1", "--n-max", "2000",
                 "--output", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["series"]) == {f"cells.{p}" for p in ("default", "geometric", "betting", "betting-cs",
                                                             "betting-cs-mix")}
    for series in report["series"].values():
        assert [c["name"] for c in series["columns"]] == ["n_max", "r_over_sigma", "p", "mean_draws", "median_draws",
                                                           "certified"]
        assert [row[2] for row in series["rows"]] == [0.8, 0.99]
    default = {row[2]: row for row in report["series"]["cells.default"]["rows"]}
    assert default[0.99][5] == 1.0 and default[0.8][5] == 0.0  # certifiable vs futile (p <= Phi(1) = 0.84)
    assert report["metrics"]["default.n2000.r1.p0.99.mean_draws"]["value"] == default[0.99][3]
    assert "cells.default" in capsys.readouterr().out
