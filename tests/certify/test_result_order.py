"""Issue 18, item 7: result files as the ecosystem writes them. A completed run's TSV is in image order
(Cohen's files are; images finish out of order); PREDICT results are in Cohen's predict.py format
(``idx label predict correct time``: no meaningless radius 0) and every reader takes both formats;
onestep and Gaussian runs record no K or b.
"""

from __future__ import annotations

import json
import os

import pytest

from densepure.certify import job as job_module
from densepure.cli import main
from densepure.errors import InputError
from densepure.results.analyze import Run, load_run, summarize_predictions
from densepure.results.files import read_results, read_sidecar, sidecar_path
from densepure.results.records import PREDICT_HEADER, TSV_HEADER, IfExists, ImageRecord, ResultRow, TsvKind
from densepure.results.writer import check_results, open_results

CONFIG = {"mode": "densepure", "sigma": 0.25}


def certified(idx: int, radius: float = 0.5) -> ImageRecord:
    return ImageRecord(ResultRow(idx, 3, 3, radius, True, 1.0 + idx), n0=10, n=20, selection_counts=(7, 3),
                       estimation_counts=(15, 5))


def predicted(idx: int, predict: int = 3) -> ImageRecord:
    return ImageRecord(ResultRow(idx, 3, predict, None, predict == 3, 2.0), n0=0, n=20, estimation_counts=(15, 5))


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------------ order


def test_sort_rows_puts_a_completed_file_in_image_order_in_place(tmp_path):
    path = tmp_path / "r.tsv"
    with open_results(path, CONFIG, 0) as writer:
        for idx in (40, 0, 60, 20):
            writer.write(certified(idx))
        before = path.read_bytes()
        inode = os.stat(path).st_ino
        sidecar = sidecar_path(path).read_bytes()
        writer.sort_rows()
        writer.write(certified(80))  # the writer goes on writing the same file
    lines = path.read_text().splitlines()
    assert lines[0] == TSV_HEADER and [int(line.split("\t")[0]) for line in lines[1:]] == [0, 20, 40, 60, 80]
    assert sorted(path.read_bytes().splitlines()[:5]) == sorted(before.splitlines())  # the same lines, permuted
    assert os.stat(path).st_ino == inode  # in place: the lock and the writer's identity check still hold
    assert sidecar_path(path).read_bytes().startswith(sidecar)  # the sidecar keeps completion order
    assert [r.row.idx for r in read_sidecar(path).records] == [40, 0, 60, 20, 80]
    assert [r.idx for r in read_results(path)] == [0, 20, 40, 60, 80]


def test_a_resumed_run_is_sorted_with_its_earlier_rows(tmp_path):
    path = tmp_path / "r.tsv"
    with open_results(path, CONFIG, 0) as writer:
        writer.write(certified(30))
        writer.write(certified(10))  # interrupted here: the file stays in completion order
    assert [r.idx for r in read_results(path)] == [30, 10]
    with open_results(path, CONFIG, 0) as writer:
        assert writer.finished == {10, 30}
        writer.write(certified(0))
        writer.write(certified(20))
        writer.sort_rows()
    assert [r.idx for r in read_results(path)] == [0, 10, 20, 30]
    with open_results(path, CONFIG, 0) as writer:  # an already ordered file is left alone
        mtime = os.stat(path).st_mtime_ns
        writer.sort_rows()
        assert os.stat(path).st_mtime_ns == mtime


def test_a_replaced_file_is_never_sorted(tmp_path):
    path = tmp_path / "r.tsv"
    with open_results(path, CONFIG, 0) as writer:
        writer.write(certified(1))
        writer.write(certified(0))
        os.replace(tmp_path / "r.tsv", tmp_path / "moved.tsv")
        path.write_text(TSV_HEADER + "\n")
        with pytest.raises(InputError, match="removed or replaced"):
            writer.sort_rows()
    assert path.read_text() == TSV_HEADER + "\n"


def test_a_completed_cli_run_is_in_image_order(capsys, tmp_path, monkeypatch):
    """The engine decides images in any order; this run writes them in reverse, and the file ends in order."""
    real = job_module.run_dataset

    def reversed_writes(engine, dataset, indices, task, seed, writer, progress=None, extra=None):
        records = real(engine, dataset, indices, task, seed, _Reversing(writer), progress, extra)
        writer.flush_reversed()
        return records

    class _Reversing:
        def __init__(self, writer):
            self.writer, self.finished, self.held = writer, writer.finished, []
            writer.flush_reversed = self.flush

        def write(self, record):
            self.held.append(record)

        def flush(self):
            for record in reversed(self.held):
                self.writer.write(record)

    monkeypatch.setattr(job_module, "run_dataset", reversed_writes)
    out = tmp_path / "r.tsv"
    code, _, err = run_cli(capsys, "certify", "--mode", "gaussian", "--max", "3", "--n0", "5", "--n", "10",
                           "--seed", "1", "--device", "cpu", "--output", str(out))
    assert code == 0, err
    assert [r.row.idx for r in read_sidecar(out).records] == [44, 22, 0]  # written in reverse
    assert [r.idx for r in read_results(out)] == [0, 22, 44]


# ------------------------------------------------------------------------------------------------------ PREDICT


def test_predict_files_are_in_cohens_predict_format(tmp_path):
    path = tmp_path / "p.tsv"
    with open_results(path, {"predict": True}, 0, kind=TsvKind.PREDICT) as writer:
        writer.write(predicted(5))
        writer.write(predicted(0, predict=-1))
        with pytest.raises(InputError, match="is a certify row, .* is a predict file"):
            writer.write(certified(7))
        writer.sort_rows()
    assert path.read_text() == f"{PREDICT_HEADER}\n0\t3\t-1\t0\t2.0000\n5\t3\t3\t1\t2.0000\n"
    assert PREDICT_HEADER == "idx\tlabel\tpredict\tcorrect\ttime"
    rows = read_results(path)
    assert [(r.idx, r.predict, r.radius, r.correct) for r in rows] == [(0, -1, None, False), (5, 3, None, True)]
    record = json.loads(sidecar_path(path).read_text().splitlines()[1])
    assert record["radius"] is None and read_sidecar(path).records[0].row.radius is None
    with open_results(path, {"predict": True}, 0, kind=TsvKind.PREDICT) as writer:  # resumes in its format
        assert writer.finished == {0, 5}
    with pytest.raises(InputError, match="holds predict results .* this run writes certify results"):
        check_results(path, {"predict": True}, 0, IfExists.RESUME, TsvKind.CERTIFY)
    with pytest.raises(InputError, match="is a predict row"):
        with open_results(tmp_path / "c.tsv", CONFIG, 0) as writer:
            writer.write(predicted(1))


def test_readers_take_cohens_predict_files(tmp_path):
    """predict.py's own output (``str(timedelta)`` times), read and summarized without radii."""
    path = tmp_path / "cohen_predict.tsv"
    path.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t3\t3\t1\t0:00:01.250000\n20\t8\t-1\t0\t0:00:01.1\n"
                    "40\t8\t1\t0\t0:00:00.9\n60\t0\t0\t1\t0:00:01\n")
    run = load_run(path)
    assert run.kind is TsvKind.PREDICT and run.rows[0].time == 1.25
    summary = summarize_predictions(run)
    assert (summary.count, summary.accuracy, summary.abstention_rate) == (4, 0.5, 0.25)
    with pytest.raises(InputError, match="PREDICT results: no certified radius"):
        run.radius  # noqa: B018
    with pytest.raises(InputError, match="mix rows"):
        Run("mixed", (certified(0).row, predicted(1).row))


def test_analyze_a_predict_file(capsys, tmp_path):
    predict = tmp_path / "p.tsv"
    predict.write_text(f"{PREDICT_HEADER}\n0\t1\t1\t1\t1.0\n1\t2\t-1\t0\t1.0\n")
    certify = tmp_path / "c.tsv"
    certify.write_text(f"{TSV_HEADER}\n0\t1\t1\t0.5000\t1\t1.0\n1\t2\t2\t0.2000\t1\t1.0\n")
    code, out, err = run_cli(capsys, "analyze", str(predict), str(certify))
    assert code == 0, err
    assert "p.tsv: PREDICT results (Cohen's predict.py format): labels with abstention, no certified radius" in out
    assert "| p.tsv | 50.0 | 50.0 | 2 |" in out and "| c.tsv | 100.0 |" in out and "| p.tsv | 50.0 | 0.0" not in out
    for flags in (("--paired",), ("--plot", str(tmp_path / "a.png"))):
        code, _, err = run_cli(capsys, "analyze", str(certify), str(predict), *flags)
        assert code == 2 and err.count("\n") == 1 and "p.tsv holds PREDICT results (no radius)" in err


def test_cli_predict_writes_the_predict_format_in_image_order(capsys, tmp_path):
    out = tmp_path / "p.tsv"
    code, stdout, err = run_cli(capsys, "predict", "--mode", "gaussian", "--max", "3", "--n", "20", "--seed", "2",
                                "--device", "cpu", "--output", str(out))
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert lines[0] == PREDICT_HEADER and [line.split("\t")[0] for line in lines[1:]] == ["0", "22", "44"]
    assert all(len(line.split("\t")) == 5 for line in lines)
    assert "| p.tsv |" in stdout and "accuracy" in stdout and f"results: {out}" in stdout


# ------------------------------------------------------------------------------------------------------ K and b


@pytest.mark.parametrize("mode", ["onestep", "gaussian"])
def test_onestep_and_gaussian_record_no_chains_or_steps(capsys, tmp_path, mode):
    out = tmp_path / f"{mode}.tsv"
    code, _, err = run_cli(capsys, "certify", "--mode", mode, "--max", "1", "--n0", "5", "--n", "10", "--seed", "3",
                           "--device", "cpu", "--output", str(out))
    assert code == 0, err
    assert "K=" not in err and " b=" not in err and f"mode={mode}" in err
    config = read_sidecar(out).header.config
    assert config["num_chains"] is None and config["steps"] is None and config["mode"] == mode
    code, _, err = run_cli(capsys, "certify", "--mode", mode, "--K", "10", "--output", str(out))
    assert code == 2 and "--K and --b apply to --mode densepure" in err


def test_a_changed_configuration_names_overwrite(capsys, tmp_path):
    """Item 8: resuming with another configuration names the flag that starts the file again."""
    out = tmp_path / "r.tsv"
    base = ("certify", "--mode", "gaussian", "--max", "1", "--n0", "5", "--n", "10", "--seed", "3", "--device", "cpu",
            "--output", str(out))
    assert run_cli(capsys, *base)[0] == 0
    code, _, err = run_cli(capsys, *base, "--sigma", "0.5")
    assert code == 2 and err.count("\n") == 1 and "sigma: 0.25 -> 0.5" in err
    assert "start this one again with --overwrite" in err
    assert err.index("--output") < err.index("--overwrite") < err.index("sigma: 0.25")  # the fix before the hashes
    assert run_cli(capsys, *base, "--sigma", "0.5", "--overwrite")[0] == 0
