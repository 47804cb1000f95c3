"""Result files: exact TSV format, JSONL sidecar, resume, and reading the older formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from densepure.errors import ConfigError, InputError
from densepure.results.files import (
    config_differences,
    parse_seconds,
    read_results,
    read_sidecar,
    sidecar_path,
)
from densepure.results.records import TSV_HEADER, CorrectColumn, IfExists, ImageRecord, ResultRow, format_radius
from densepure.results.writer import open_results

# no alpha: these made-up records (radius 0.49999 from counts 15 of 20) name no procedure they could be
# recomputed by, so the writer takes the configuration as its caller's; tests/results/test_verify.py checks
# recomputation with real certificates
CONFIG = {"sigma": 0.25, "n0": 100, "n": 100000, "model": {"name": "cifar10-vit", "steps": [2, 3]}}


def record(idx: int, label: int, predict: int, radius: float, time: float, **extra) -> ImageRecord:
    row = ResultRow(idx, label, predict, radius, predict == label, time)
    return ImageRecord(row, n0=10, n=20, selection_counts=(7, 3), estimation_counts=(15, 5),
                       extra=extra)


def write_run(path: Path, records: list[ImageRecord], config: dict = CONFIG, seed: int = 0,
              if_exists: IfExists = IfExists.RESUME) -> frozenset[int]:
    with open_results(path, config, seed, if_exists) as writer:
        finished = writer.finished
        for item in records:
            writer.write(item)
    return finished


def test_tsv_format_exactly(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    write_run(path, [record(0, 3, 3, 0.49999, 1.23456), record(20, 5, -1, 0.0, 0.5),
                     record(40, 1, 2, 1.5, 12.0)])
    assert path.read_text() == (
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t3\t3\t0.4999\t1\t1.2346\n"
        "20\t5\t-1\t0.0000\t0\t0.5000\n"
        "40\t1\t2\t1.5000\t0\t12.0000\n"
    )
    assert TSV_HEADER == "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def test_sidecar_header_and_records(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    write_run(path, [record(0, 3, 3, 0.75, 2.0, p_a=0.99)], seed=7)
    text = sidecar_path(path).read_text().splitlines()
    header, image = (json.loads(line) for line in text)
    assert header["record"] == "header" and header["config"] == CONFIG and header["seed"] == 7
    assert header["format_version"] == 2
    assert set(header["versions"]) == {"python", "torch", "numpy", "densepure", "platform"}
    digest = hashlib.sha256(text[0].encode()).hexdigest()  # the chain: the header is also the line before
    assert image == {"record": "image", "idx": 0, "label": 3, "predict": 3, "radius": 0.75,
                     "correct": 1, "time": 2.0, "n0": 10, "n": 20, "selection_counts": [7, 3],
                     "estimation_counts": [15, 5], "p_a": 0.99, "prev_sha256": digest, "header_sha256": digest}
    sidecar = read_sidecar(sidecar_path(path))
    assert read_sidecar(path) == sidecar  # the result file's path finds its sidecar
    assert sidecar.header.seed == 7 and sidecar.records[0].extra == {"p_a": 0.99}
    assert sidecar.records[0].row == read_results(path)[0]


def test_resume_skips_finished_and_drops_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    write_run(path, [record(0, 3, 3, 0.5, 1.0), record(20, 5, 5, 0.25, 1.0)])
    with path.open("a") as handle:  # a crash in the middle of the third image
        handle.write("40\t1\t1\t0.3")
    with sidecar_path(path).open("a") as handle:
        handle.write('{"record": "image", "idx": 40, "lab')
    finished = write_run(path, [record(40, 1, 1, 0.125, 3.0)])
    assert finished == {0, 20}
    assert path.read_text().splitlines()[-2:] == ["20\t5\t5\t0.2500\t1\t1.0000",
                                                  "40\t1\t1\t0.1250\t1\t3.0000"]
    assert [row.idx for row in read_results(path)] == [0, 20, 40]
    sidecar = read_sidecar(sidecar_path(path))
    assert [r.row.idx for r in sidecar.records] == [0, 20, 40] and len(sidecar.resumed_at) == 1


def test_resume_drops_a_last_line_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    write_run(path, [record(0, 3, 3, 0.5, 1.0)])
    with path.open("a") as handle:
        handle.write("20\t5\t5\n")
    with open_results(path, CONFIG, 0) as writer:
        assert writer.finished == {0}
    assert path.read_text().endswith("0\t3\t3\t0.5000\t1\t1.0000\n")


def test_resume_refuses_a_different_configuration(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    write_run(path, [record(0, 3, 3, 0.5, 1.0)])
    changed = {**CONFIG, "sigma": 0.5, "model": {"name": "other", "steps": [2, 3]}}
    with pytest.raises(ConfigError, match=r"\['model.name', 'sigma'\].*0.25 -> 0.5"):
        open_results(path, changed, 0)
    with pytest.raises(ConfigError, match=r"\['seed'\]"):
        open_results(path, CONFIG, 1)
    assert [row.idx for row in read_results(path)] == [0]  # untouched by the refusals


def test_if_exists_modes_and_misuse(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    write_run(path, [record(0, 3, 3, 0.5, 1.0)])
    with pytest.raises(InputError, match="already exists"):
        open_results(path, CONFIG, 0, IfExists.FAIL)
    assert write_run(path, [], if_exists=IfExists.OVERWRITE) == frozenset()
    assert path.read_text() == TSV_HEADER + "\n"
    with open_results(path, CONFIG, 0) as writer:
        writer.write(record(0, 3, 3, 0.5, 1.0))
        with pytest.raises(InputError, match="already in"):
            writer.write(record(0, 3, 3, 0.5, 1.0))
    sidecar_path(path).unlink()
    with pytest.raises(InputError, match="sidecar .* is missing"):
        open_results(path, CONFIG, 0)
    with pytest.raises(ConfigError, match="JSON-serializable"):
        open_results(tmp_path / "new.tsv", {"device": object()}, 0)


def test_row_and_record_validation() -> None:
    with pytest.raises(InputError, match="radius must be a finite number >= 0, got -0.5"):
        ResultRow(0, 1, 1, -0.5, True, 1.0)
    with pytest.raises(InputError, match="correct must be 0/1"):
        ResultRow(0, 1, 1, 0.5, 2, 1.0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="reserved"):
        record(0, 1, 1, 0.5, 1.0, n0=3)
    with pytest.raises(InputError, match="selection_counts"):
        ImageRecord(ResultRow(0, 1, 1, 0.5, True, 1.0), 10, 20, selection_counts=(-1, 11))


def test_read_cohen_format(tmp_path: Path) -> None:
    path = tmp_path / "cohen.tsv"
    path.write_text(TSV_HEADER + "\n"
                    "0\t3\t3\t0.523\t1\t0:00:12.345678\n"
                    "20\t8\t-1\t0.0\t0\t1 day, 1:00:01\n"
                    "40\t2\t2\t1.23e-05\t1\t0:00:03\n"
                    "60\t2\t2\t0.7")  # an interrupted last line
    rows = read_results(path)
    assert [row.idx for row in rows] == [0, 20, 40]
    assert rows[0] == ResultRow(0, 3, 3, 0.523, True, 12.345678)
    assert rows[1].time == pytest.approx(86400 + 3601) and rows[1].predict == -1
    assert parse_seconds("2:03:04.5") == pytest.approx(7384.5)
    with pytest.raises(InputError, match="H:MM:SS"):
        parse_seconds("yesterday")


def test_read_dds_running_total(tmp_path: Path) -> None:
    path = tmp_path / "dds.tsv"
    body = "".join(f"{i}\t1\t{p}\t0.5\t{c}\t1.5\n"
                   for i, (p, c) in enumerate([(1, 1), (0, 1), (1, 2), (1, 3), (2, 3)]))
    path.write_text(TSV_HEADER + "\n" + body)
    assert [row.correct for row in read_results(path)] == [True, False, True, True, False]
    with pytest.raises(InputError, match=r"0/1 per row \(per_row\), got \[2, 3\]"):
        read_results(path, CorrectColumn.PER_ROW)
    small = tmp_path / "small.tsv"  # a running total that never exceeds 1: must be named
    small.write_text(TSV_HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n1\t1\t1\t0.5\t1\t1.0\n")
    assert [r.correct for r in read_results(small)] == [True, True]
    with pytest.raises(InputError, match="idx 1: correct=0 but predict=1 and label=1"):
        read_results(small, CorrectColumn.RUNNING_TOTAL)  # the wrong reading contradicts predict == label


def test_a_correct_column_that_contradicts_the_labels_is_refused(tmp_path: Path) -> None:
    """analyze must never count a wrong prediction as certified because a file says correct=1."""
    path = tmp_path / "lie.tsv"
    path.write_text(TSV_HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n1\t2\t5\t0.9\t1\t1.0\n")
    with pytest.raises(InputError, match="idx 1: correct=1 but predict=5 and label=2"):
        read_results(path)
    path.write_text(TSV_HEADER + "\n0\t-1\t-1\t0.0\t1\t1.0\n")  # unknown label and abstention: not correct
    with pytest.raises(InputError, match="correct=1"):
        read_results(path)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_results(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n")
    with pytest.raises(InputError, match="expected the header"):
        read_results(bad)
    bad.write_text(TSV_HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n0\t1\t1\t0.5\t1\t1.0\n")
    with pytest.raises(InputError, match="idx 0 appears twice"):
        read_results(bad)
    bad.write_text(TSV_HEADER + "\n0\t1\t1\t0.5\n1\t1\t1\t0.5\t1\t1.0\n")
    with pytest.raises(InputError, match="line 2: expected 6 tab-separated fields, got 4"):
        read_results(bad)


def test_config_differences_are_dotted() -> None:
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0}) == \
        ("b.c", "d")
    assert config_differences(CONFIG, dict(CONFIG)) == ()


@given(st.floats(min_value=0.0, max_value=100.0, allow_nan=False))
def test_format_radius_never_overstates(radius: float) -> None:
    text = format_radius(radius)
    assert len(text.split(".")[1]) == 4
    assert float(text) <= radius + 1e-12 and radius - float(text) < 1e-4 + 1e-12
