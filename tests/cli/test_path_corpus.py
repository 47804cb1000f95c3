"""Issue 25, item 6: every path a subcommand takes, given as something unusable (missing, unreadable, a
directory where a file belongs or a regular file where a directory belongs, a FIFO), is one line on stderr
and exit status 2: no traceback, no hang (a FIFO opened for reading blocks until a writer comes), nothing
written. Inputs must exist; for outputs "missing" is a path whose parent is a regular file (a missing output
itself is simply created)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from densepure.cli import main

ROOT = os.geteuid() == 0
# chmod 000 stops nobody with CAP_DAC_OVERRIDE: as root (CI) the file stays readable and the case proves nothing
UNREADABLE_AS_ROOT = "running as root: chmod 000 does not stop root from reading (CAP_DAC_OVERRIDE), so the case is void"
HANG_S = 60  # a FIFO that is opened would block forever; the alarm turns that into a failure

GAUSSIAN = ["--mode", "gaussian", "--n", "20", "--n0", "5", "--max", "1"]
ONNX = ["--backend", "onnxruntime", "--mode", "gaussian"]
# (name, argv template with {p} for the bad path, role): role "file"/"dir"/"any" inputs, "out" file outputs
# ("png": a plot, named *.png), "outdir" directory outputs
CASES = [
    ("certify --data", ["certify", *GAUSSIAN, "--data", "{p}", "--output", "{o}"], "any"),
    ("certify --checkpoint", ["certify", "--n", "20", "--n0", "5", "--max", "1", "--checkpoint", "{p}", "--output",
                              "{o}"], "file"),
    ("certify --ray --checkpoint", ["certify", "--n", "20", "--n0", "5", "--max", "1", "--ray", "local",
                                    "--checkpoint", "{p}", "--output", "{o}"], "file"),  # before Ray starts
    ("certify --classifier hf:", ["certify", *GAUSSIAN, "--preset", "digits", "--classifier", "hf:{p}", "--output",
                                  "{o}"], "dir"),
    ("certify --artifacts", ["certify", *ONNX, "--artifacts", "{p}", "--output", "{o}"], "dir"),
    ("certify --output", ["certify", *GAUSSIAN, "--output", "{p}"], "out"),
    ("certify --plot", ["certify", *GAUSSIAN, "--output", "{o}", "--plot", "{p}"], "png"),
    ("predict --data", ["predict", "--mode", "gaussian", "--n", "20", "--max", "1", "--data", "{p}", "--output", "{o}"],
     "any"),
    ("predict --checkpoint", ["predict", "--n", "20", "--max", "1", "--checkpoint", "{p}", "--output", "{o}"], "file"),
    ("predict --output", ["predict", "--mode", "gaussian", "--n", "20", "--max", "1", "--output", "{p}"], "out"),
    ("analyze FILE", ["analyze", "{p}"], "file"),
    ("analyze --plot", ["analyze", "{r}", "--plot", "{p}"], "png"),
    ("export --out", ["export", "--no-unet", "--precision", "fp32", "--out", "{p}"], "outdir"),
    ("export --checkpoint", ["export", "--no-classifier", "--checkpoint", "{p}", "--out", "{o}.d"], "file"),
    ("build --onnx-dir", ["build", "--onnx-dir", "{p}"], "dir"),
    ("build --cache-dir", ["build", "--onnx-dir", "{e}", "--cache-dir", "{p}"], "outdir"),
    ("serve --checkpoint", ["serve", "--checkpoint", "{p}", "--port", "1"], "file"),
    ("serve --artifacts", ["serve", *ONNX, "--artifacts", "{p}", "--port", "1"], "dir"),
    ("verify FILE", ["verify", "{p}"], "file"),
]
KINDS = ("missing", "unreadable", "wrong type", "fifo")


def _make(tmp_path: Path, role: str, kind: str) -> Path:
    """The bad path of ``kind`` for an argument of ``role``."""
    bad = tmp_path / ("bad.png" if role == "png" else "bad")
    if kind == "missing":
        if role in ("out", "png", "outdir"):
            (tmp_path / "a_file").write_text("x")
            return tmp_path / "a_file" / bad.name
        return bad
    if kind == "fifo":
        os.mkfifo(bad)
        return bad
    if kind == "wrong type":  # a directory where a file belongs, a file where a directory belongs
        if role in ("dir", "outdir"):
            bad.write_text("not a directory\n")
        else:
            bad.mkdir()
        return bad
    if role in ("dir", "outdir"):
        bad.mkdir()
    else:
        bad.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    bad.chmod(0)
    return bad


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.lstat().st_size if not p.is_dir() else -1) for p in root.rglob("*")}


def _on_alarm(signum, frame):
    raise TimeoutError(f"the command was still running after {HANG_S} s: something opened the FIFO")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,argv,role", CASES, ids=[c[0] for c in CASES])
def test_a_bad_path_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, name, argv, role, kind):
    if kind == "unreadable" and ROOT:
        pytest.skip(UNREADABLE_AS_ROOT)
    if kind == "wrong type" and role == "any":
        pytest.skip("--data takes a file or a directory: both are the right type (an empty directory is in "
                    "tests/test_cli_integrity.py)")
    if name.startswith("serve"):
        pytest.importorskip("fastapi", reason="serve needs the serve extra")
    work = tmp_path / "work"
    work.mkdir()
    results = work / "r.tsv"
    results.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5000\t1\t1.0\n")
    (work / "empty").mkdir()
    bad = _make(work, role, kind)
    before = _snapshot(work)
    args = [a.format(p=bad, o=work / "out.tsv", r=results, e=work / "empty") for a in argv]
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(HANG_S)
    try:
        code = main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    if kind == "unreadable":
        bad.chmod(0o700)
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line]
    assert code == 2, f"{name} {kind}: exit {code}\n{err}"
    assert len(lines) == 1 and lines[0].startswith("densepure: error: "), err
    assert "Traceback" not in err
    assert _snapshot(work) == before, f"{name} {kind} wrote or removed something"
