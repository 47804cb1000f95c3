"""Light commands stay light (issue 26): ``densepure --version`` and ``densepure presets`` import neither torch
nor scipy (each costs seconds to import); a subcommand's module is imported only when it runs. A misspelled
flag or command is one line naming the nearest one, exit 2, for every subcommand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from densepure.cli import main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "scipy")

PROBE = """
import sys
from densepure.cli import main
try:
    code = main(sys.argv[1:])
finally:  # argparse's errors exit from inside main
    print("heavy:", ",".join(m for m in {heavy!r} if m in sys.modules))
sys.exit(code)
"""


def run_probe(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("argv", [["--version"], ["presets"]])
def test_version_and_presets_import_neither_torch_nor_scipy(argv):
    done = run_probe(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("heavy:"), done.stdout
    assert ("densepure 0." in done.stdout) if argv == ["--version"] else ("digits" in done.stdout), done.stdout


@pytest.mark.slow  # a second interpreter importing torch
def test_the_probe_sees_torch_when_a_command_needs_it():
    """The check above can fail: building certify's parser imports the option records, and torch with them."""
    done = run_probe("certify", "--n0", "x")
    assert done.returncode == 2 and "heavy: torch" in done.stdout, (done.stdout, done.stderr)


@pytest.mark.parametrize(("argv", "expected"), [
    (["certify", "--sigam", "0.3"], "unknown flag --sigam for `densepure certify`: did you mean --sigma?"),
    (["predict", "--alpah=0.01"], "unknown flag --alpah for `densepure predict`: did you mean --alpha?"),
    (["analyze", "a.tsv", "--plto", "x.png"], "unknown flag --plto for `densepure analyze`: did you mean --plot?"),
    (["export", "--presett", "digits"], "unknown flag --presett for `densepure export`: did you mean --preset?"),
    (["build", "--onnx-dir", "x", "--bukets", "1"], "unknown flag --bukets for `densepure build`: did you mean --buckets?"),
    (["serve", "--prot", "80"], "unknown flag --prot for `densepure serve`: did you mean --port?"),
    (["bench", "throughput", "--threds", "2"],
     "unknown flag --threds for `densepure bench throughput`: did you mean --threads?"),
    (["presets", "--verbose"], "unknown flag --verbose for `densepure presets` (`densepure presets --help`"),
    (["--verison"], "unknown flag --verison for `densepure`: did you mean --version?"),
    (["certfy"], "unknown command 'certfy': did you mean certify?"),
    (["certify", "--N0", "100"], "did you mean --n0? (--N0 is Cohen et al.'s spelling;"),
    (["certify", "--N", "100000"], "did you mean --n? (--N is Cohen et al.'s spelling;"),
    (["certify", "--chains", "3"], "unknown flag --chains for `densepure certify` (`densepure certify --help`"),
])
def test_a_misspelled_flag_names_the_nearest_in_one_line(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as info:
        main(["certify", "--sigma"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("densepure certify: error: argument --sigma: expected one argument"), err
