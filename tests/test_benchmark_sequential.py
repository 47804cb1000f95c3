"""benchmarks/sequential.py: its vectorized simulation makes the decisions of the real state machines."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_benchmarks import run_script

from densepure.stats.boundary import BoundaryPlan
from densepure.stats.sequential import SequentialPlan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("benchmark_sequential", ROOT / "benchmarks" / "sequential.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


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


def test_the_script_prints_the_cells_as_json():
    stdout = run_script("sequential.py", "--reps", "20", "--p", "0.8", "0.99", "--r", "1", "--n-max", "2000")
    cells = json.loads(stdout.strip().splitlines()[-1])["cells"]
    assert {c["procedure"] for c in cells} == {"default", "geometric", "betting", "betting-cs", "betting-cs-mix"}
    assert len(cells) == 10 and all(set(c) == {"p", "r_over_sigma", "n_max", "procedure", "mean_draws",
                                               "median_draws", "certified"} for c in cells)
    by = {(c["p"], c["procedure"]): c for c in cells}
    assert by[(0.99, "default")]["certified"] == 1.0 and by[(0.8, "default")]["certified"] == 0.0
    assert "machine:" in stdout and "command:" in stdout
