"""Result files under hostile conditions: parsing partial lines, two writers, a full disk, files
replaced under a run, rows that lost their sidecar records (issue 20, classes 2, 5, 6 and 11)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from densepure.errors import ConfigError, InputError
from densepure.results.files import read_results, read_sidecar, sidecar_path
from densepure.results.records import IfExists, ImageRecord, ResultRow
from densepure.results.writer import check_results, open_results

CONFIG = {"mode": "densepure", "sigma": 0.25}


def record(idx: int) -> ImageRecord:
    row = ResultRow(idx, 3, 3, 0.5, True, 1.0)
    return ImageRecord(row, n0=10, n=20, selection_counts=(7, 3), estimation_counts=(15, 5))


def write(path: Path, idxs, if_exists: IfExists = IfExists.RESUME) -> frozenset[int]:
    with open_results(path, CONFIG, 0, if_exists) as writer:
        for idx in idxs:
            writer.write(record(idx))
        return writer.finished


def test_a_partial_last_line_that_still_parses_is_dropped(tmp_path):
    """Cut inside the last column ('1.0000' -> '1.0'): it parses, but it lacks its newline."""
    path = tmp_path / "out.tsv"
    write(path, [0, 1])
    text = path.read_text()
    path.write_text(text[: text.rindex("1.0000") + 3])
    assert [r.idx for r in read_results(path)] == [0]  # readers never take it as a record
    assert write(path, [1, 2]) == {0}
    assert [r.idx for r in read_results(path)] == [0, 1, 2]
    assert path.read_text().endswith("2\t3\t3\t0.5000\t1\t1.0000\n")
    sidecar = read_sidecar(path)
    assert sorted(r.row.idx for r in sidecar.records) == [0, 1, 2]


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tmp_path):
    path = tmp_path / "out.tsv"
    with open_results(path, CONFIG, 0) as first:
        first.write(record(0))
        for if_exists in IfExists:
            with pytest.raises(InputError, match="another densepure process"):
                open_results(path, CONFIG, 0, if_exists)
            with pytest.raises(InputError, match="another densepure process"):
                check_results(path, CONFIG, 0, if_exists)
        first.write(record(1))
    assert [r.idx for r in read_results(path)] == [0, 1]
    write(path, [2])  # released on close


@pytest.mark.slow  # a second interpreter
def test_the_lock_holds_across_processes(tmp_path):
    path = tmp_path / "out.tsv"
    script = ("import sys; from densepure.results.writer import open_results\n"
              "try:\n    open_results(sys.argv[1], {'mode': 'densepure', 'sigma': 0.25}, 0)\n"
              "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n")
    with open_results(path, CONFIG, 0) as writer:
        writer.write(record(0))
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "another densepure process" in done.stdout
    assert [r.idx for r in read_results(path)] == [0]


def test_a_full_disk_is_one_clear_error_and_close_does_not_mask_it(tmp_path, monkeypatch):
    path = tmp_path / "out.tsv"
    writer = open_results(path, CONFIG, 0)
    writer.write(record(0))
    real_write = os.write

    def full(fd, data):
        if fd in writer._fds:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(InputError, match="No space left on device.*resumes"):
        writer.write(record(1))
    with pytest.raises(InputError, match="No space left"):
        writer.write(record(2))  # a broken writer stays broken
    writer.close()  # nothing buffered: closing cannot raise a second error
    monkeypatch.undo()
    assert write(path, [1]) == {0}


def test_a_file_replaced_under_a_run_stops_the_run(tmp_path):
    """What lost the Table 1 sidecar records: the path was replaced while the writer held the old file."""
    path = tmp_path / "out.tsv"
    with open_results(path, CONFIG, 0) as writer:
        writer.write(record(0))
        side = sidecar_path(path)
        replacement = tmp_path / "copy.jsonl"
        replacement.write_bytes(side.read_bytes())
        os.replace(replacement, side)  # e.g. a checkout or a sync tool rewriting the file
        with pytest.raises(InputError, match="removed or replaced"):
            writer.write(record(1))
    assert [r.idx for r in read_results(path)] == [0]


def test_resume_redoes_rows_whose_records_were_lost(tmp_path):
    """The sidecar lost its last records (restored from an older copy, say): the chain before them holds, and
    the rows nothing vouches for any more are computed again."""
    path = tmp_path / "out.tsv"
    write(path, [0, 1, 2, 3])
    lines = sidecar_path(path).read_text().splitlines(keepends=True)
    sidecar_path(path).write_text("".join(line for line in lines if '"idx": 2,' not in line
                                          and '"idx": 3,' not in line))
    assert write(path, [2, 3]) == {0, 1}
    rows = read_results(path)
    assert sorted(r.idx for r in rows) == [0, 1, 2, 3]
    records = read_sidecar(path).records
    assert sorted(r.row.idx for r in records) == [0, 1, 2, 3]  # one record per row again
    resume = [json.loads(line) for line in sidecar_path(path).read_text().splitlines()
              if '"resume"' in line]
    assert resume[-1]["redone_without_records"] == [2, 3]


def test_a_record_removed_from_the_middle_refuses_the_resume(tmp_path):
    """Issue 25, item 3: the chain names the place of an edit; nothing is redone or appended."""
    path = tmp_path / "out.tsv"
    write(path, [0, 1, 2, 3])
    lines = sidecar_path(path).read_text().splitlines(keepends=True)
    sidecar_path(path).write_text("".join(line for line in lines if '"idx": 1,' not in line))
    before = (path.read_bytes(), sidecar_path(path).read_bytes())
    with pytest.raises(InputError, match=r"out.tsv.jsonl line 3: vouches for another line before it: line 2"):
        write(path, [1])
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before


def test_check_results_finds_problems_without_touching_anything(tmp_path):
    path = tmp_path / "out.tsv"
    write(path, [0])
    before = (path.read_bytes(), sidecar_path(path).read_bytes())
    with pytest.raises(ConfigError, match="differs"):
        check_results(path, {**CONFIG, "sigma": 0.5}, 0)
    with pytest.raises(InputError, match="already exists"):
        check_results(path, CONFIG, 0, IfExists.FAIL)
    with pytest.raises(InputError, match="is a directory"):
        check_results(tmp_path, CONFIG, 0)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="not a writable directory"):
        check_results(tmp_path / "a_file" / "out.tsv", CONFIG, 0)
    check_results(path, CONFIG, 0)
    check_results(tmp_path / "new" / "deeper" / "out.tsv", CONFIG, 0)
    assert not (tmp_path / "new").exists()
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a mode-0500 directory: the read-only mount "
                    "test below is the one that holds for root")
def test_an_unwritable_location_is_refused(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not a writable directory"):
            check_results(locked / "out.tsv", CONFIG, 0)
    finally:
        locked.chmod(0o700)


# Run in a private mount namespace: mount a read-only tmpfs on argv[1], then ask check_results and
# open_results for files in it. A read-only file system refuses root as well (EROFS), so this runs in CI.
_READ_ONLY_MOUNT = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY = 1
if libc.mount(b"none", sys.argv[1].encode(), b"tmpfs", MS_RDONLY, b"size=64k") != 0:
    print("mount failed:", os.strerror(ctypes.get_errno())); sys.exit(77)
from densepure.errors import InputError
from densepure.results.writer import check_results, open_results
config = {"mode": "densepure", "sigma": 0.25}
for name in ("out.tsv", "new/deeper/out.tsv"):
    for call in (check_results, open_results):
        try:
            call(os.path.join(sys.argv[1], name), config, 0)
            print("accepted", call.__name__, name)
        except InputError as exc:
            print("refused", call.__name__, name, "|", exc)
print("entries", sorted(os.listdir(sys.argv[1])))
"""


def test_a_read_only_file_system_is_refused_even_for_root(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux's unshare to make a private read-only mount")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    user_ns = [] if os.geteuid() == 0 else ["--map-root-user"]
    done = subprocess.run([unshare, *user_ns, "--mount", "--propagation", "private", sys.executable, "-c",
                           _READ_ONLY_MOUNT, str(mount_point)], capture_output=True, text=True, timeout=120)
    if (done.returncode != 0 and "unshare failed" in done.stderr) or done.returncode == 77:
        pytest.skip(f"no private mount namespace here: {(done.stderr or done.stdout).strip()}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "entries []"  # nothing was created
    refusals = [line for line in lines if line.startswith("refused")]
    assert len(refusals) == 4 and len(lines) == 5, lines
    assert all("not a writable directory" in line for line in refusals), refusals
    assert not any(mount_point.iterdir())  # the mount lived only in the child's namespace
