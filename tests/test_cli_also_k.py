"""certify --also-K: the k-chain results of a K-chain run equal separate --K k runs with the same seed."""

import pytest

from densepure.cli import main
from densepure.results.files import read_results, read_sidecar

COMMON = ["--max", "3", "--skip", "150", "--n0", "10", "--n", "40", "--sigma", "0.5", "--b", "2", "--seed", "11"]


def certify(capsys, out, *argv):
    code = main(["certify", *COMMON, *argv, "--output", str(out)])
    stdout, err = capsys.readouterr()
    return code, stdout, err


def rows(path):
    return [(r.idx, r.label, r.predict, r.radius) for r in read_results(path)]


@pytest.mark.slow
def test_also_k_equals_separate_runs(capsys, tmp_path):
    code, stdout, _ = certify(capsys, tmp_path / "k5.tsv", "--K", "5", "--also-K", "1,3")
    assert code == 0 and "k5.K1.tsv" in stdout and "k5.K3.tsv" in stdout
    for k in (1, 3):
        assert certify(capsys, tmp_path / f"sep{k}.tsv", "--K", str(k))[0] == 0
        assert rows(tmp_path / f"k5.K{k}.tsv") == rows(tmp_path / f"sep{k}.tsv")
        same = [(r.selection_counts, r.estimation_counts) for r in read_sidecar(tmp_path / f"sep{k}.tsv").records]
        got = [(r.selection_counts, r.estimation_counts) for r in read_sidecar(tmp_path / f"k5.K{k}.tsv").records]
        assert sorted(got) == sorted(same)
        header = read_sidecar(tmp_path / f"k5.K{k}.tsv").header.config
        assert header["num_chains"] == k and header["computed_as"] == f"first {k} of 5 chains"
    radii = [r.radius for r in read_results(tmp_path / "k5.K1.tsv")]
    assert any(radius > 0 for radius in radii)
    code, _, err = certify(capsys, tmp_path / "k5.tsv", "--K", "5", "--also-K", "1,3")  # all finished: resumes
    assert code == 0 and len(rows(tmp_path / "k5.K3.tsv")) == 3


@pytest.mark.parametrize("argv,message", [
    (["--mode", "onestep", "--also-K", "1"], "--mode densepure"),
    (["--K", "5", "--also-K", "1", "--radius", "0.25"], "--also-K needs --mode densepure"),
    (["--K", "5", "--also-K", "4"], "chain prefixes [4] out of range"),
])
def test_also_k_user_errors_are_one_line(capsys, tmp_path, argv, message):
    code, _, err = certify(capsys, tmp_path / "r.tsv", *argv)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "r.tsv").exists()
