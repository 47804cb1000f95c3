"""Issue 24, item 2: the sidecar format stays readable by old runs. Result files written at 980d33d, before
``JobOptions`` was split into records (tests/assets/results_v1), lose their last image and are resumed by
today's code with the command that made them: the resume is accepted and redoes exactly that image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from densepure.cli import main

OLD = Path(__file__).parents[1] / "assets" / "results_v1"
# the commands of tests/assets/results_v1/README.md, without --output; --noise float: the digits' default noise
# became the sound one after these files were written (a float run records no noise)
RUNS = {
    "g.tsv": ["certify", "--noise", "float", "--mode", "gaussian", "--seed", "5", "--skip", "30", "--max", "3", "--n", "100", "--n0", "10"],
    "d.tsv": ["certify", "--noise", "float", "--seed", "6", "--skip", "50", "--max", "2", "--n", "20", "--n0", "5", "--K", "3",
              "--also-K", "1"],
    "p.tsv": ["predict", "--noise", "float", "--mode", "onestep", "--seed", "7", "--skip", "60", "--max", "2", "--n", "20"],
    "s.tsv": ["certify", "--noise", "float", "--mode", "onestep", "--radius", "0.1", "--seed", "8", "--skip", "60", "--max", "2",
              "--n", "200", "--n0", "10"],
}


def _drop_last_image(tsv: Path) -> str:
    """Remove the last row and its sidecar record; return the removed row without its time."""
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text("".join(lines[:-1]))
    sidecar = Path(f"{tsv}.jsonl")
    records = sidecar.read_text().splitlines(keepends=True)
    idx = int(lines[-1].split("\t")[0])
    kept = [r for r in records if json.loads(r).get("idx") != idx]
    assert len(kept) == len(records) - 1
    sidecar.write_text("".join(kept))
    return lines[-1].rsplit("\t", 1)[0]


def _rows(tsv: Path) -> list[str]:
    return [line.rsplit("\t", 1)[0] for line in tsv.read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_file_written_before_the_split_resumes(tmp_path, name, capsys):
    for path in OLD.glob(f"{Path(name).stem}.*"):
        shutil.copy(path, tmp_path / path.name)
    out = tmp_path / name
    originals = {p.name: _rows(p) for p in tmp_path.glob("*.tsv")}
    for tsv in tmp_path.glob("*.tsv"):
        _drop_last_image(tsv)
    plot = [] if RUNS[name][0] == "predict" else ["--plot", str(tmp_path / "plot.png")]
    code = main([*RUNS[name], "--output", str(out), *plot])
    err = capsys.readouterr().err
    assert code == 0, err
    for tsv in tmp_path.glob("*.tsv"):
        assert _rows(tsv) == originals[tsv.name], f"{tsv.name} resumed differently"
    header = json.loads(Path(f"{out}.jsonl").read_text().splitlines()[0])
    assert header["record"] == "header" and header["config"]["seed"] == int(RUNS[name][RUNS[name].index("--seed") + 1])


def test_a_format_1_file_resumes_as_format_1_under_other_execution_settings(tmp_path, capsys):
    """Issue 25, items 3-4: g.tsv recorded ``kernels: torch, device: auto``; it resumes with ``--device cpu
    --kernels auto --batch-size 7`` (none changes a count), and goes on without a chain: chaining records that
    were written unprotected would vouch for them."""
    from densepure.results.verify import Status, verify_file

    for path in OLD.glob("g.*"):
        shutil.copy(path, tmp_path / path.name)
    out = tmp_path / "g.tsv"
    original = _rows(out)
    _drop_last_image(out)
    code = main([*RUNS["g.tsv"], "--device", "cpu", "--kernels", "auto", "--batch-size", "7", "--output", str(out),
                 "--plot", str(tmp_path / "plot.png")])
    assert code == 0, capsys.readouterr().err
    assert _rows(out) == original
    records = [json.loads(line) for line in Path(f"{out}.jsonl").read_text().splitlines()]
    assert records[0]["format_version"] == 1 and records[0]["config"]["kernels"] == "torch"
    assert [r["record"] for r in records[-2:]] == ["resume", "image"]
    assert not any("prev_sha256" in r for r in records)
    verdict = verify_file(out)
    assert verdict.status is Status.OK and "format 1" in verdict.detail, verdict.line()


def test_without_noise_float_the_resume_says_to_add_it(tmp_path, capsys):
    """The digits now default to the sound noise: the command that made an old file is refused, and the one
    line says how to resume it."""
    out = tmp_path / "d.tsv"
    for src in OLD.glob("d.tsv*"):
        shutil.copy(src, tmp_path / src.name)
    argv = [word for word in RUNS["d.tsv"] if word not in ("--noise", "float")]
    assert main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "add --noise float to resume it" in err
