"""MLPerf LoadGen drives tiny scenarios to completion on the digits default, and its own verdict and checks
reach the report beside densepure's numbers."""

from __future__ import annotations

import json

import pytest

from densepure.bench.loadgen import parse_summary
from densepure.cli import main

SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : PySUT
Scenario : Server
Mode     : PerformanceOnly
Completed samples per second    : 18.58
Result is : INVALID
  Performance constraints satisfied : Yes
  Min duration satisfied : Yes
  Min queries satisfied : Yes
  Early stopping satisfied: NO
================================================
Additional Stats
================================================
Min latency (ns)                : 10402546
50.00 percentile latency (ns)   : 10566189
99.00 percentile latency (ns)   : 15792530
================================================
Test Parameters Used
================================================
target_latency (ns): 1000000000
min_query_count : 10
"""
TINY = ["--max", "2", "--n0", "10", "--n", "20", "--K", "3", "--device", "cpu", "--min-duration", "0.5",
        "--min-queries", "3"]


def test_the_summary_gives_the_verdict_the_checks_and_the_numbers():
    result, checks, metrics = parse_summary(SUMMARY)
    assert result == "INVALID"
    assert checks == {"performance_constraints": True, "min_duration": True, "min_queries": True,
                      "early_stopping": False}
    assert metrics == {"completed_samples_per_second": 18.58, "min_latency_s": 0.010402546,
                       "p50_latency_s": 0.010566189, "p99_latency_s": 0.01579253}  # not the settings echoed


@pytest.mark.parametrize("command, scenario", [("latency", "single-stream"), ("throughput", "offline")])
def test_a_tiny_scenario_runs_to_completion_on_the_digits_default(command, scenario, tmp_path):
    pytest.importorskip("mlperf_loadgen", reason="the bench extra (mlcommons-loadgen) is not installed")
    out = tmp_path / "r"
    assert main(["bench", command, *TINY, "--scenario", scenario, "--target-qps", "4", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["loadgen"]
    label = f"{scenario.replace('-', '_')}_4qps"
    assert run["scenario"] == scenario and run["directory"] == f"loadgen/{label}"
    assert run["result"] in ("VALID", "INVALID")  # LoadGen's own verdict, reported as it is
    assert {"min_duration", "min_queries", "answered_without_error"} <= set(run["checks"])
    assert run["checks"]["min_queries"] and run["checks"]["answered_without_error"]
    summary = (out / run["directory"] / "mlperf_log_summary.txt").read_text()
    assert f"Result is : {run['result']}" in summary
    metrics = report["metrics"]
    assert metrics[f"{label}.errors"]["value"] == 0 and metrics[f"{label}.answered"]["value"] >= 3
    assert metrics[f"{label}.draws_per_query"]["value"] == 30  # CERTIFY: n0 + n draws per query
    rows = report["series"]["queries"]["rows"]
    assert len(rows) == metrics[f"{label}.answered"]["value"] and all(r[1] > 0 and r[2] == 30 for r in rows)
    assert (out / "latency_cdf.png").exists()
