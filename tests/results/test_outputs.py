"""Issue 25, items 1 and 2: densepure writes only its own files. A fresh run does not destroy what is at
``<output>.jsonl`` (an unrelated file, a link's target); no open for writing follows a link; ``--overwrite``
writes a new file beside the path and renames it over it, so a hard link's other name keeps its content, and
the new file is locked before it appears (one writer still)."""

from __future__ import annotations

import os
import signal

import pytest

from densepure.cli import main
from densepure.errors import ConfigError, InputError
from densepure.results.analyze import check_plot_path
from densepure.results.files import read_results, sidecar_path
from densepure.results.records import TSV_HEADER, IfExists, ImageRecord, ResultRow
from densepure.results.writer import check_results, open_results

CONFIG = {"mode": "gaussian", "sigma": 0.25}
VICTIM = "notes: not densepure's\n"


def record(idx: int) -> ImageRecord:
    return ImageRecord(ResultRow(idx, 3, 3, 0.5, True, 1.0), n0=10, n=20, selection_counts=(7, 3),
                       estimation_counts=(15, 5))


def write(path, idxs, if_exists=IfExists.RESUME):
    with open_results(path, CONFIG, 0, if_exists) as writer:
        for idx in idxs:
            writer.write(record(idx))


@pytest.fixture()
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM)
    return path


def test_the_issue_s_reproduction_is_refused_and_the_victim_kept(tmp_path, victim, capsys, monkeypatch):
    """``ln -s victim.txt out.tsv.jsonl; densepure certify ... --output out.tsv`` destroyed victim.txt (exit 0)."""
    monkeypatch.chdir(tmp_path)
    os.symlink("victim.txt", "out.tsv.jsonl")
    code = main(["certify", "--mode", "gaussian", "--seed", "9", "--skip", "7", "--max", "6", "--n", "200", "--n0",
                 "20", "--output", "out.tsv"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err, err
    assert victim.read_text() == VICTIM and os.readlink("out.tsv.jsonl") == "victim.txt"
    assert not (tmp_path / "out.tsv").exists() and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("if_exists", [IfExists.RESUME, IfExists.FAIL])
def test_an_unrelated_file_at_the_sidecar_path_is_not_destroyed(tmp_path, if_exists):
    path = tmp_path / "out.tsv"
    sidecar_path(path).write_text(VICTIM)
    for call in (check_results, open_results):
        with pytest.raises(InputError, match="not the sidecar of an unfinished densepure run.*--overwrite"):
            call(path, CONFIG, 0, if_exists)
    assert sidecar_path(path).read_text() == VICTIM and not path.exists()


def test_a_sidecar_holding_images_without_its_tsv_is_not_destroyed(tmp_path):
    path = tmp_path / "out.tsv"
    write(path, [0, 1])
    path.unlink()  # someone's results, whose TSV is gone: not a spare sidecar
    kept = sidecar_path(path).read_bytes()
    with pytest.raises(InputError, match="not the sidecar of an unfinished"):
        open_results(path, CONFIG, 0)
    assert sidecar_path(path).read_bytes() == kept


def test_overwrite_replaces_an_unrelated_sidecar_when_asked(tmp_path):
    path = tmp_path / "out.tsv"
    sidecar_path(path).write_text(VICTIM)
    write(path, [0], IfExists.OVERWRITE)
    assert [r.idx for r in read_results(path)] == [0]


@pytest.mark.parametrize("which", ["tsv", "sidecar"])
@pytest.mark.parametrize("if_exists", list(IfExists))
def test_no_link_is_ever_written_through(tmp_path, victim, which, if_exists):
    path = tmp_path / "out.tsv"
    write(path, [0])  # a real run, so that every mode gets as far as it can
    link = path if which == "tsv" else sidecar_path(path)
    link.unlink()
    link.symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link: densepure never writes through a link"):
        open_results(path, CONFIG, 0, if_exists)
    assert victim.read_text() == VICTIM and link.is_symlink()


def test_a_dangling_link_is_not_followed_to_create_its_target(tmp_path):
    path = tmp_path / "out.tsv"
    path.symlink_to(tmp_path / "elsewhere.tsv")
    with pytest.raises(InputError, match="symbolic link"):
        open_results(path, CONFIG, 0, IfExists.OVERWRITE)
    assert not (tmp_path / "elsewhere.tsv").exists()


def test_overwrite_replaces_a_hard_link_instead_of_writing_through_it(tmp_path):
    path = tmp_path / "out.tsv"
    write(path, [0, 1])
    other = tmp_path / "someone_elses.tsv"
    os.link(path, other)  # the same file under another name
    before = other.read_bytes()
    write(path, [5], IfExists.OVERWRITE)
    assert other.read_bytes() == before  # the other name kept the old content
    assert [r.idx for r in read_results(path)] == [5] and not os.path.samefile(path, other)


def test_the_new_file_of_an_overwrite_is_locked_before_anyone_can_open_it(tmp_path):
    path = tmp_path / "out.tsv"
    write(path, [0])
    with open_results(path, CONFIG, 0, IfExists.OVERWRITE) as first:
        first.write(record(1))
        for if_exists in IfExists:
            with pytest.raises(InputError, match="another densepure process"):
                open_results(path, CONFIG, 0, if_exists)
        first.write(record(2))
    assert [r.idx for r in read_results(path)] == [1, 2]


def test_a_fifo_at_either_path_is_refused_without_blocking(tmp_path):
    path = tmp_path / "out.tsv"
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("blocked on the FIFO")))
    signal.alarm(30)
    try:
        for fifo in (sidecar_path(path), path):
            os.mkfifo(fifo)
            for if_exists in IfExists:
                with pytest.raises(InputError, match="is a FIFO"):
                    open_results(path, CONFIG, 0, if_exists)
            fifo.unlink()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_plot_is_never_written_through_a_link(tmp_path, victim):
    plot = tmp_path / "plot.png"
    plot.symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        check_plot_path(plot)
    assert victim.read_text() == VICTIM


def test_a_plot_replaces_a_png_by_renaming(tmp_path):
    from densepure.results.analyze import Run, plot_certified_accuracy

    plot = tmp_path / "plot.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n old")
    other = tmp_path / "other.png"
    os.link(plot, other)
    plot_certified_accuracy([Run("r", (ResultRow(0, 1, 1, 0.5, True, 1.0),))], plot)
    assert other.read_bytes() == b"\x89PNG\r\n\x1a\n old" and plot.read_bytes() != other.read_bytes()
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(ConfigError, match="not a PNG"):
        check_plot_path(text)


def test_a_fresh_run_restarts_its_own_empty_files(tmp_path):
    """What may be replaced without --overwrite: a densepure sidecar with no image (a run stopped early)."""
    path = tmp_path / "out.tsv"
    write(path, [])
    assert path.read_text() == TSV_HEADER + "\n"
    path.unlink()
    write(path, [3])  # the sidecar holds only a header: it is this kind of run's, started again
    assert [r.idx for r in read_results(path)] == [3]
