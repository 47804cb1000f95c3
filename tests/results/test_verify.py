"""Issue 25, item 3: hand edits are not believed. Every certificate is recomputed from its recorded counts,
the sidecar's hash chain names an edit anywhere but the last line, every TSV row is compared with its record;
resume, ``analyze`` and ``densepure verify`` all refuse an edited file, naming the line. Files written before
the chain (format 1) stay readable, resumable and verifiable."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from densepure.certify.policies import AnytimeResult
from densepure.certify.tasks import AnytimeTask, CertifyTask, PredictTask, SequentialTask
from densepure.cli import main
from densepure.errors import InputError
from densepure.noise import NoisePhase
from densepure.results.analyze import load_run
from densepure.results.files import read_results, sidecar_path
from densepure.results.records import IfExists, TsvKind
from densepure.results.verify import Status, verify_file
from densepure.results.writer import open_results
from densepure.stats.confseq import AnytimeRadius, anytime_looks
from densepure.stats.sequential import run_sequential

REPO = Path(__file__).parents[2]
OLD = REPO / "tests" / "assets" / "results_v1"
SIGMA, ALPHA = 0.25, 0.001
CONFIG = {"mode": "gaussian", "sigma": SIGMA, "alpha": ALPHA, "n0": 10, "n": 100, "predict": False, "radius": None,
          "seed": 3}
SEL, EST, PRED = NoisePhase.SELECTION, NoisePhase.ESTIMATION, NoisePhase.PREDICT


def certify_records(count: int = 5):
    """Real CERTIFY certificates of made-up counts (some abstain): what a run with CONFIG writes."""
    task, rng = CertifyTask(10, 100, ALPHA), np.random.default_rng(0)
    out = []
    for idx in range(count):
        hits = int(rng.integers(40, 101))
        counts = {SEL: np.array([1, 9, 0]), EST: np.array([100 - hits, hits, 0])}
        out.append(task.record(idx * 10, 1, 0.5 + idx, counts, SIGMA))
    return out


def write_run(path: Path, records, config=CONFIG, kind=TsvKind.CERTIFY) -> Path:
    with open_results(path, config, config["seed"], IfExists.OVERWRITE, kind) as writer:
        for record in records:
            writer.write(record)
    return path


@pytest.fixture()
def run(tmp_path) -> Path:
    return write_run(tmp_path / "r.tsv", certify_records())


def set_radius(text: str):
    """A change of a TSV line: its radius column set to ``text``."""
    def change(line):
        fields = line.split("\t")
        fields[3] = text
        return "\t".join(fields)
    return change


def edit_line(path: Path, number: int, change) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = change(lines[number - 1])
    path.write_text("".join(lines))


def edit_record(path: Path, number: int, **fields) -> None:
    """Change fields of sidecar line ``number`` (the chain fields untouched: a hand edit)."""
    def change(line):
        record = json.loads(line)
        record.update(fields)
        return json.dumps(record, sort_keys=True) + "\n"
    edit_line(sidecar_path(path), number, change)


def failed(path: Path, where: str, message: str) -> None:
    verdict = verify_file(path)
    assert verdict.status is Status.FAILED, verdict.line()
    assert any(p.where == where and re.search(message, p.message) for p in verdict.problems), \
        "\n".join(map(str, verdict.problems))


def test_a_run_as_written_verifies(run):
    verdict = verify_file(run)
    assert verdict.status is Status.OK and not verdict.problems, verdict.line()
    assert "5 certificates recomputed" in verdict.detail and "hash chain holds" in verdict.detail
    assert verify_file(sidecar_path(run)).status is Status.OK  # named by its sidecar too


def test_predict_and_sequential_runs_verify(tmp_path):
    predict = PredictTask(50, ALPHA).record(0, 2, 1.0, {PRED: np.array([3, 0, 47])}, SIGMA)
    config = {**CONFIG, "predict": True, "n0": None, "n": 50}
    assert verify_file(write_run(tmp_path / "p.tsv", [predict], config, TsvKind.PREDICT)).status is Status.OK
    task = SequentialTask(10, 0.2, ALPHA, n_max=400)
    result = run_sequential(lambda k: k, task.plan(SIGMA), 1)  # every draw a hit: certified at the first look it can
    record = task.record(0, 1, 1.0, {SEL: np.array([0, 10]), EST: np.array([0, result.n_used])}, SIGMA, result)
    config = {**CONFIG, "radius": 0.2, "n": 400, "sequential": "exact"}
    path = write_run(tmp_path / "s.tsv", [record], config)
    assert verify_file(path).status is Status.OK
    edit_record(path, 2, n=result.n_used + 1, estimation_counts=[0, result.n_used + 1], n_used=result.n_used + 1)
    failed(path, "s.tsv.jsonl line 2", "not a look of its plan")


def test_anytime_runs_verify_by_replaying_the_confidence_sequence(tmp_path):
    """--budget records the hits at each look: the verifier replays the betting sequence over them, so an
    edited radius, hits that end elsewhere than the counts, or hits that no sequence of draws gives are named."""
    looks = anytime_looks(200)
    hits = [look - look // 20 for look in looks]  # 95% hits, cumulative
    radius = AnytimeRadius(SIGMA, ALPHA, 1)
    for h, look in zip(hits, looks, strict=True):
        radius.update(h, look)
    task = AnytimeTask(10, 200, ALPHA)
    record = task.record(0, 1, 1.0, {SEL: np.array([0, 10]), EST: np.array([200 - hits[-1], hits[-1]])}, SIGMA,
                         AnytimeResult(radius.certificate, tuple(hits)))
    assert record.row.radius > 0 and record.extra["look_hits"] == hits
    config = {**CONFIG, "n": 200, "budget": 200}
    path = write_run(tmp_path / "a.tsv", [record], config)
    assert verify_file(path).status is Status.OK
    edit_record(path, 2, look_hits=[*hits[:-1], hits[-1] - 1])
    failed(path, "a.tsv.jsonl line 2", "look_hits end at")
    edit_record(path, 2, look_hits=[hits[0] + 5, *hits[1:]])  # more hits at the first look than draws
    failed(path, "a.tsv.jsonl line 2", "not the hits of a sequence of draws")
    edit_record(path, 2, look_hits=hits, p_a_lower=0.999)  # the hits as written, a better bound claimed
    failed(path, "a.tsv.jsonl line 2", "p_a_lower=0.999, but its counts give")


def test_a_tsv_radius_beyond_what_n_can_certify_is_named(run):
    """The issue's edit: 9.9999 in the TSV survived a resume and made analyze report a 5x larger ACR."""
    edit_line(run, 3, set_radius("9.9999"))
    failed(run, "r.tsv line 3", r"reads .*9\.9999.* but its record \(r.tsv.jsonl line 3\) gives")
    with pytest.raises(InputError, match=r"r.tsv line 3: reads"):
        load_run(run)
    with pytest.raises(InputError, match=r"cannot resume .*r.tsv line 3: reads"):
        open_results(run, CONFIG, 3)


def test_edited_counts_beside_an_unchanged_row_are_named(run):
    edit_record(run, 6, estimation_counts=[0, 100, 0])  # the last record: no successor, recomputation finds it
    failed(run, "r.tsv.jsonl line 6", r"image idx 40: (predict|radius)=.* but its counts (give|certify)")
    edit_record(run, 3, estimation_counts=[50, 50, 0])
    failed(run, "r.tsv.jsonl line 4", "vouches for another line before it: line 3")  # the chain, at the next line


def test_a_consistent_edit_is_still_named_by_the_chain(run):
    """Counts, radius and row edited together, as a careful forger would (without rewriting the chain)."""
    original = certify_records()[1]
    better = CertifyTask(10, 100, ALPHA).record(10, 1, original.row.time, {SEL: np.array([1, 9, 0]),
                                                                            EST: np.array([0, 100, 0])}, SIGMA)
    assert better.row.radius > original.row.radius
    edit_record(run, 3, **{k: v for k, v in better.to_json().items() if k != "time"})
    edit_line(run, 3, lambda line: better.row.to_line())
    verdict = verify_file(run)
    assert [str(p) for p in verdict.problems] == [
        "r.tsv.jsonl line 4: vouches for another line before it: line 3 was edited, or lines were inserted, "
        "removed or reordered there"]


@pytest.mark.parametrize("field,value", [("sigma", 0.5), ("seed", 4)])
def test_an_edited_header_is_named(run, field, value):
    header = json.loads(sidecar_path(run).read_text().splitlines()[0])
    if field == "seed":
        edit_record(run, 1, seed=value, config={**header["config"], "seed": value})
    else:
        edit_record(run, 1, config={**header["config"], field: value})
    failed(run, "r.tsv.jsonl line 2", "vouches for another header: line 1")
    with pytest.raises(InputError, match="vouches for another header"):  # before any configuration comparison
        open_results(run, {**CONFIG, field: value}, value if field == "seed" else 3)


def test_removed_and_added_lines_are_named(run):
    lines = sidecar_path(run).read_text().splitlines(keepends=True)
    sidecar_path(run).write_text("".join(lines[:2] + lines[3:]))
    failed(run, "r.tsv.jsonl line 3", "vouches for another line before it")


def test_rows_removed_or_added_by_hand_are_named(run, tmp_path):
    edit_line(run, 3, lambda line: "")
    failed(run, "r.tsv.jsonl line 3", r"image idx 10 has a record but no row in r.tsv")
    other = write_run(tmp_path / "o.tsv", certify_records())
    with other.open("a") as handle:
        handle.write("99\t1\t1\t0.9000\t1\t1.0000\n")
    failed(other, "o.tsv line 7", "image idx 99 has no record")
    with pytest.raises(InputError, match="o.tsv line 7: image idx 99 has no record"):
        load_run(other)


def test_an_interrupted_write_is_not_a_problem(run):
    edit_line(run, 6, lambda line: "")  # the last image's record was written, its row was not
    assert verify_file(run).status is Status.OK


def test_an_edited_file_is_refused_by_a_resume_and_left_as_it_is(run):
    pristine = sidecar_path(run).read_bytes()
    edit_record(run, 4, radius=0.9)
    before = (run.read_bytes(), sidecar_path(run).read_bytes())
    with pytest.raises(InputError, match=r"cannot resume .*r.tsv.jsonl line 5: vouches for another line before it: "
                                         r"line 4 was edited"):
        open_results(run, CONFIG, 3)
    assert (run.read_bytes(), sidecar_path(run).read_bytes()) == before
    sidecar_path(run).write_bytes(pristine)
    edit_record(run, 6, radius=0.9)  # the last record: no successor, so its recomputation is what refuses it
    with pytest.raises(InputError, match=r"cannot resume .*r.tsv.jsonl line 6: image idx 40: radius=0.9"):
        open_results(run, CONFIG, 3)


def test_format_1_files_verify_and_say_what_could_not_be_checked(tmp_path):
    for tsv in sorted(OLD.glob("*.tsv")):
        verdict = verify_file(tsv)
        assert verdict.status is Status.OK and "format 1" in verdict.detail, verdict.line()
    for path in OLD.glob("*"):
        shutil.copy(path, tmp_path / path.name)
    s = tmp_path / "s.tsv"  # sequential, format 1: no chain, but every decision follows from the counts
    edit_record(s, 2, decision="not_certified")
    failed(s, "s.tsv.jsonl line 2", "decision='not_certified', but its counts give 'certified'")
    p = tmp_path / "p.tsv"  # PREDICT: the binomial test
    edit_record(p, 2, estimation_counts=[0, 11, 9, 0, 0, 0, 0, 0, 0, 0])
    failed(p, "p.tsv.jsonl line 2", "predict=1, but its counts give -1")


def test_committed_results_verify():
    """Every result file under benchmarks/results, as committed."""
    files = sorted((REPO / "benchmarks" / "results").rglob("*.tsv"))
    assert files
    for tsv in files:
        verdict = verify_file(tsv)
        assert verdict.status is Status.OK, verdict.line()


def test_a_cohen_file_is_read_but_unchecked(tmp_path):
    cohen = tmp_path / "cohen.tsv"
    cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.512\t1\t0:00:01.250000\n")
    verdict = verify_file(cohen)
    assert verdict.status is Status.UNCHECKED and "nothing could be checked beyond the format" in verdict.detail
    assert verify_file(cohen, require_sidecar=True).status is Status.FAILED


def test_the_verify_command(run, tmp_path, capsys):
    cohen = tmp_path / "cohen.tsv"
    cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.512\t1\t1.0\n")
    assert main(["verify", str(run), str(cohen)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{run}: ok: 5 certificates") and out[1].startswith(f"{cohen}: unchecked: ")
    edit_record(run, 3, radius=0.9)
    assert main(["verify", str(run), str(cohen)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{run}: FAILED: r.tsv.jsonl line 4: vouches for another line before it: line 3 was edited, "
                      "or lines were inserted, removed or reordered there (and 2 more)")  # the chain's, first
    assert out[1].startswith("    r.tsv.jsonl line 3: image idx 10: radius=0.9, but its counts certify")
    assert out[2].startswith("    r.tsv line 3: reads ") and out[3].startswith(f"{cohen}: unchecked")
    assert main(["verify", str(run), str(tmp_path / "missing.tsv")]) == 2  # a path that cannot be read at all
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["verify", "--require-sidecar", str(cohen)]) == 1


def test_analyze_refuses_an_edited_file_and_reads_an_intact_one(run, capsys):
    assert main(["analyze", str(run)]) == 0
    assert "sigma 0.25, n 100, alpha 0.001" in capsys.readouterr().out
    edit_line(run, 2, set_radius("0.9999"))
    assert main(["analyze", str(run)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("densepure: error: r.tsv line 2: reads") and err.count("\n") == 1
    assert read_results(run)  # the TSV itself still parses: it is the check that refuses it
