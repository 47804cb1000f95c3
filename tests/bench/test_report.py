"""The bench report: its versioned schema, the report directory's refusals (no overwrite without --overwrite, no
symbolic link followed), the markdown, the plots and ``densepure bench compare``."""

from __future__ import annotations

import json
import os

import pytest

from densepure.bench.output import ReportDirectory
from densepure.bench.render import compare, latency_curves, markdown
from densepure.bench.report import (
    SCHEMA,
    SCHEMA_VERSION,
    LoadGenRun,
    ReportBuilder,
    Unit,
    read_report,
    report_from_json,
)
from densepure.cli import main
from densepure.errors import ConfigError, InputError

ENVIRONMENT = {"device": {"type": "cpu", "name": "test cpu"},
               "cpu": {"model": "test cpu", "torch_threads": 1, "cores_available": 2, "load_average_1_5_15": [0, 0, 0]},
               "versions": {"torch": "x"}}


def _report(draws_per_s: float = 100.0, partial: bool = False):
    b = ReportBuilder("latency", ["densepure", "bench", "latency"], {"sigma": 0.25, "precision": "fp32"})
    b.environment = ENVIRONMENT
    b.metric("engine.draws_per_s", draws_per_s, Unit.DRAWS_PER_S, "draws per second")
    b.metric("official.draws_per_s", 25.0, "draws/s")
    b.ratio("ratio.draws_per_s", "engine.draws_per_s", "official.draws_per_s")
    b.add_series("images", [("index", Unit.COUNT), ("latency_s", Unit.SECONDS)], [(0, 0.5), (22, 0.75), (44, None)])
    b.loadgen.append(LoadGenRun("server", {"target_qps": 1.0}, "INVALID", {"min_duration": True,
                                                                           "early_stopping": False},
                                {"p99_latency_s": 0.7}, "loadgen/server_1qps"))
    b.note("a note")
    return b.report(partial)


def test_the_report_round_trips_through_its_json():
    report = _report()
    obj = json.loads(report.dumps())
    assert obj["schema"] == SCHEMA and obj["version"] == SCHEMA_VERSION == 1
    assert set(obj) == {"schema", "version", "subcommand", "partial", "started_at", "finished_at", "command",
                        "environment", "configuration", "metrics", "series", "loadgen", "notes"}
    assert obj["metrics"]["ratio.draws_per_s"] == {"value": 4.0, "unit": "x", "description":
                                                   "engine.draws_per_s / official.draws_per_s"}
    assert obj["series"]["images"]["rows"][2] == [44, None]
    again = report_from_json(obj)
    assert again.dumps() == report.dumps()


@pytest.mark.parametrize("change, message", [
    (lambda o: o.update(version=2), "version 2"),
    (lambda o: o.pop("schema"), "not a densepure bench report"),
    (lambda o: o["metrics"]["engine.draws_per_s"].update(unit="furlongs"), "unit must be one of"),
    (lambda o: o["metrics"]["engine.draws_per_s"].update(value="fast"), "finite number"),
    (lambda o: o["series"]["images"]["rows"].append([1]), "1 values for 2 columns"),
    (lambda o: o.update(partial="no"), "'partial' must be a JSON bool"),
    (lambda o: o["metrics"]["engine.draws_per_s"].pop("unit"), "malformed"),
])
def test_a_malformed_report_is_one_line_naming_the_problem(change, message):
    obj = json.loads(_report().dumps())
    change(obj)
    with pytest.raises(InputError, match=message):
        report_from_json(obj, "r.json")


def test_values_must_be_finite():
    b = ReportBuilder("throughput", [], {})
    with pytest.raises(InputError, match="finite"):
        b.metric("x", float("nan"), Unit.SECONDS)
    with pytest.raises(InputError, match="subcommand"):
        ReportBuilder("nonsense", [], {}).report()


def test_markdown_and_curves():
    text = markdown(_report(partial=True))
    assert text.startswith("# densepure bench latency (partial: interrupted)")
    assert "| engine.draws_per_s | 100 | draws/s | draws per second |" in text
    assert "**INVALID** (min_duration: yes, early_stopping: NO)" in text and "- a note" in text
    assert latency_curves(_report()) == {"images": [0.5, 0.75]}  # the missing latency is no sample


def test_compare_prints_both_and_the_ratio(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    ReportDirectory(a).write(_report(100.0))
    ReportDirectory(b).write(_report(150.0))
    text = compare(read_report(a / "report.json"), read_report(b))
    assert "| engine.draws_per_s | 100 | 150 | 1.5x | draws/s |" in text
    assert main(["bench", "compare", str(a / "report.json"), str(b)]) == 0
    assert "| engine.draws_per_s | 100 | 150 | 1.5x | draws/s |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["bench", "compare", str(a), str(tmp_path / "bad.json")]) == 2
    assert "not a densepure bench report" in capsys.readouterr().err


def test_the_directory_gets_the_report_the_markdown_and_the_plot(tmp_path):
    out = ReportDirectory(tmp_path / "r")
    out.prepare()
    written = out.write(_report())
    assert sorted(p.name for p in written) == ["latency_cdf.png", "report.json", "report.md"]
    assert (tmp_path / "r" / "latency_cdf.png").read_bytes().startswith(b"\x89PNG")
    assert read_report(tmp_path / "r").metrics["engine.draws_per_s"].value == 100.0
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_existing_report_needs_overwrite(tmp_path):
    ReportDirectory(tmp_path).write(_report())
    with pytest.raises(ConfigError, match="already holds a report .*--overwrite"):
        ReportDirectory(tmp_path).check()
    before = (tmp_path / "report.json").read_bytes()
    with pytest.raises(ConfigError, match="appeared while the benchmark ran"):
        ReportDirectory(tmp_path).write(_report(7.0))  # the move refuses what check() would have
    assert (tmp_path / "report.json").read_bytes() == before
    replaced = ReportDirectory(tmp_path, overwrite=True)
    replaced.check()
    report = _report(7.0)
    object.__setattr__(report, "series", {})  # no latency samples: the old plot must go
    replaced.write(report)
    assert read_report(tmp_path).metrics["engine.draws_per_s"].value == 7.0
    assert not (tmp_path / "latency_cdf.png").exists()


def test_no_symbolic_link_is_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / "link")
    with pytest.raises(ConfigError, match="symbolic link"):
        ReportDirectory(tmp_path / "link", overwrite=True).check()
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "report.json")
    with pytest.raises(ConfigError, match="symbolic link"):
        ReportDirectory(out, overwrite=True).check()
    with pytest.raises(ConfigError, match="symbolic link"):
        ReportDirectory(out, overwrite=True).write(_report())
    assert victim.read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        ReportDirectory(tmp_path / "file").check()


def test_a_refused_output_costs_no_measurement(tmp_path, capsys):
    ReportDirectory(tmp_path).write(_report())
    code = main(["bench", "latency", "--max", "1", "--n0", "10", "--n", "20", "--output", str(tmp_path)])
    assert code == 2 and "already holds a report" in capsys.readouterr().err


def test_the_listener_hears_every_figure_as_it_is_measured():
    """Merged in order, what the listener hears is the report's metrics and notes (what a harness keeps of a
    killed run: ``--progress-json`` prints each as a {"partial": ...} line)."""
    from densepure.bench.report import progress_line

    heard: list[dict] = []
    b = ReportBuilder("latency", ["densepure"], {}, listener=heard.append)
    b.metric("a", 1.0, Unit.SECONDS)
    b.note("first")
    b.metric("a", 2.0, Unit.SECONDS)  # a later repeat's median replaces it
    b.metric("b", 3, Unit.COUNT)
    b.note("first")  # a repeated note is not news
    b.note("second")
    assert heard == [{"a": 1.0}, {"notes": ["first"]}, {"a": 2.0}, {"b": 3}, {"notes": ["first", "second"]}]
    merged: dict = {}
    for figures in heard:
        merged.update(json.loads(progress_line(figures))["partial"])
    report = b.report()
    assert merged == {**{k: m.value for k, m in report.metrics.items()}, "notes": list(report.notes)}


def test_a_failure_keeps_what_was_measured_as_a_partial_report(tmp_path, monkeypatch, capsys):
    """A measurement that fails after measuring something writes it (partial, the failure its last note), prints
    each figure with --progress-json, and then fails with its one-line error."""
    import densepure.bench.sequential as sequential

    def measure(run, builder, out):
        builder.metric("cells", 3, Unit.COUNT, "done before the failure")
        raise ConfigError("the oracle broke")

    monkeypatch.setattr(sequential, "measure", measure)
    assert main(["bench", "sequential", "--reps", "2", "--output", str(tmp_path / "r"), "--progress-json"]) == 2
    captured = capsys.readouterr()
    assert '{"partial": {"cells": 3}}' in captured.out.splitlines()
    assert "the oracle broke" in captured.err
    report = read_report(tmp_path / "r")
    assert report.partial and report.metrics["cells"].value == 3 and "the oracle broke" in report.notes[-1]


def test_a_failure_before_any_figure_writes_no_report(tmp_path, monkeypatch):
    import densepure.bench.sequential as sequential

    def measure(run, builder, out):
        raise ConfigError("refused before measuring")

    monkeypatch.setattr(sequential, "measure", measure)
    assert main(["bench", "sequential", "--output", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r" / "report.json").exists()
