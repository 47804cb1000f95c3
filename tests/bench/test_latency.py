"""``densepure bench latency``: one image at a time, and with ``--concurrency`` closed-loop clients of one engine
driven by its own thread (a server's engine loop without HTTP). Timings are measured, never asserted."""

from __future__ import annotations

import json

import pytest

from densepure.cli import main


def _read(out):
    report = json.loads((out / "report.json").read_text())
    return report, {k: m["value"] for k, m in report["metrics"].items()}


def test_concurrent_clients_share_one_engine(tmp_path):
    out = tmp_path / "r"
    assert main(["bench", "latency", "--max", "3", "--n0", "10", "--n", "20", "--K", "3", "--device", "cpu",
                 "--concurrency", "1", "2", "--requests", "2", "3", "--output", str(out)]) == 0
    report, m = _read(out)
    assert report["configuration"]["image_slots_resolved"] == 64
    for clients in (1, 2):
        assert m[f"c{clients}.errors"] == 0 and m[f"c{clients}.draws_per_request"] == 30  # CERTIFY: n0 + n each
        assert 0 < m[f"c{clients}.p50_s"] <= m[f"c{clients}.p95_s"] <= m[f"c{clients}.p99_s"]
        assert m[f"c{clients}.requests_per_s"] > 0
    sweep = report["series"]["concurrency"]["rows"]
    assert [(r[0], r[1], r[2]) for r in sweep] == [(1, 2, 0), (2, 3, 0)]
    assert sorted(r[0] for r in report["series"]["requests"]["rows"]) == [1, 1, 2, 2, 2]
    assert (out / "throughput_vs_concurrency.png").exists() and (out / "latency_cdf.png").exists()


def test_one_image_at_a_time_by_default(tmp_path):
    out = tmp_path / "r"
    assert main(["bench", "latency", "--max", "2", "--n0", "10", "--n", "20", "--K", "3", "--device", "cpu",
                 "--output", str(out)]) == 0
    report, m = _read(out)
    assert report["configuration"]["image_slots_resolved"] == 1 and m["images"] == 2
    assert m["draws.max_per_image"] == 30 and "c1.p50_s" not in m


@pytest.mark.parametrize("argv, message", [
    (["--concurrency", "1", "2", "--requests", "3"], "one --requests count per --concurrency level"),
    (["--concurrency", "0"], "concurrency must be an integer > 0"),
])
def test_bad_levels_are_one_line(argv, message, capsys):
    assert main(["bench", "latency", "--max", "1", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err
