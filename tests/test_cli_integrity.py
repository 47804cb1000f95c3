"""Results that cannot lie (issue 20), end to end through the CLI: non-finite models, content identity on
resume, plots that cannot overwrite results, one-line errors found before any model loads, provenance of
every resumed row."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hf_helpers import save_tiny_vit

from densepure.cli import main
from densepure.models.presets import digits_asset_path
from densepure.results.files import read_results, read_sidecar, sidecar_path

FAST = ["--max", "2", "--skip", "200", "--n0", "8", "--n", "24", "--K", "3", "--b", "2", "--seed", "5",
        "--device", "cpu"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, message):
    """Exit 2 with only one line on stderr: the error (refused before the run started)."""
    assert code == 2, err
    assert err.startswith("densepure: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


def ends_in_one_line(code, err, message):
    """Exit 2 during the run: after the banner and the progress bar, the error is one last line."""
    assert code == 2, err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("densepure: error: ") and "Traceback" not in err and message in last, err


def nan_checkpoint(tmp_path):
    state = torch.load(digits_asset_path("unet.pt"), map_location="cpu", weights_only=True)
    path = tmp_path / "nan_unet.pt"
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, path)
    return path


def test_a_nan_checkpoint_stops_the_run_before_any_certificate(capsys, tmp_path):
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, "certify", *FAST, "--checkpoint", str(nan_checkpoint(tmp_path)), "--output", str(out))
    ends_in_one_line(code, err, "diffusion model (torch backend) returned non-finite outputs")
    assert read_results(out) == [] if out.exists() else True


def test_replaced_data_or_checkpoint_refuses_the_resume(capsys, tmp_path):
    data = tmp_path / "digits.npz"
    shutil.copy(digits_asset_path("test_split.npz"), data)
    with np.load(data) as d:
        images, labels = d["pixels"].astype(np.float32) / 16, d["labels"]
    np.savez(data, images=images, labels=labels)
    out = tmp_path / "r.tsv"
    args = ["certify", *FAST, "--data", str(data), "--output", str(out)]
    assert run(capsys, *args)[0] == 0
    assert set(read_sidecar(out).header.config["content"]) == {"data", "checkpoint", "classifier"}
    images[0, 0, 0, 0] = 1.0 - images[0, 0, 0, 0]  # same path, other content
    np.savez(data, images=images, labels=labels)
    code, _, err = run(capsys, *args[:-4], "--max", "3", "--data", str(data), "--output", str(out))
    one_line(code, err, "content.data")
    ckpt = tmp_path / "unet.pt"
    shutil.copy(digits_asset_path("unet.pt"), ckpt)
    code, _, err = run(capsys, "certify", *FAST, "--checkpoint", str(ckpt), "--output", str(tmp_path / "c.tsv"))
    assert code == 0
    state = torch.load(ckpt, weights_only=True)
    next(iter(state.values())).add_(1e-3)
    torch.save(state, ckpt)
    code, _, err = run(capsys, "certify", *FAST, "--checkpoint", str(ckpt), "--output", str(tmp_path / "c.tsv"))
    one_line(code, err, "content.checkpoint")
    assert len(read_results(tmp_path / "c.tsv")) == 2  # untouched


@pytest.mark.parametrize("make_argv", [
    lambda t: ["--output", str(t / "out.tsv"), "--plot", str(t / "out.tsv")],
    lambda t: ["--output", str(t / "out.tsv"), "--plot", str(t / "out.tsv.jsonl")],
    lambda t: ["--output", str(t / "out.tsv"), "--plot", str(t / "keep.txt")],
])
def test_a_plot_path_can_never_be_a_result_file(capsys, tmp_path, make_argv):
    (tmp_path / "keep.txt").write_text("precious")
    code, _, err = run(capsys, "certify", *FAST, *make_argv(tmp_path))
    one_line(code, err, "plot")
    assert not (tmp_path / "out.tsv").exists()  # refused before anything was written
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_output_named_png_keeps_its_results_and_analyze_protects_its_inputs(capsys, tmp_path):
    out = tmp_path / "out.png"
    code, stdout, _ = run(capsys, "certify", *FAST, "--output", str(out))
    assert code == 0 and len(read_results(out)) == 2  # the plot went beside it, not over it
    assert (tmp_path / "out.png.png").read_bytes().startswith(b"\x89PNG")
    before = out.read_bytes()
    for plot in (str(out), str(out) + ".jsonl"):
        code, _, err = run(capsys, "analyze", str(out), "--plot", plot)
        one_line(code, err, "plot")
    assert out.read_bytes() == before and sidecar_path(out).is_file()


@pytest.mark.parametrize("argv,message", [
    (["--device", "meta"], "device must be auto, cpu, cuda or cuda:N"),
    (["--seed", "-3"], "seed must be an integer in [0, 2**64)"),
    (["--n", str(2**63)], "at most 2**40 - 1"),
    (["--n0", str(2**41)], "at most 2**40 - 1"),
    (["--max", "0"], "select no image"),
    (["--mode", "onestep", "--K", "4"], "apply to --mode densepure"),
])
def test_user_errors_are_found_before_any_model_loads(capsys, tmp_path, monkeypatch, argv, message):
    import densepure.certify.job as job

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the options were checked")

    monkeypatch.setattr(job, "build_engine", no_models)
    flags = dict(zip(FAST[::2], FAST[1::2], strict=True))
    flags.update(zip(argv[::2], argv[1::2], strict=True))
    if flags.get("--mode") == "onestep":
        del flags["--b"]
    code, _, err = run(capsys, "certify", *(x for kv in flags.items() for x in kv), "--output", str(tmp_path / "r.tsv"))
    one_line(code, err, message)
    assert not (tmp_path / "r.tsv").exists()


def test_an_unusable_output_is_found_before_any_model_loads(capsys, tmp_path, monkeypatch):
    import densepure.certify.job as job

    monkeypatch.setattr(job, "build_engine", lambda *a, **k: pytest.fail("models loaded first"))
    (tmp_path / "file").write_text("x")
    for output, message in ((tmp_path, "is a directory"), (tmp_path / "file" / "r.tsv", "not a writable directory")):
        code, _, err = run(capsys, "certify", *FAST, "--output", str(output))
        one_line(code, err, message)


def test_data_problems_are_named_in_one_line(capsys, tmp_path):
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((2, 3, 32, 32), np.float32), labels=np.array([0, 1]))
    code, _, err = run(capsys, "certify", *FAST, "--skip", "1", "--data", str(rgb), "--output", str(tmp_path / "a.tsv"))
    one_line(code, err, "images must be (N, 1, 8, 8) for preset digits, got (N, 3, 32, 32)")
    bad_label = tmp_path / "labels.npz"
    np.savez(bad_label, images=np.zeros((2, 1, 8, 8), np.float32), labels=np.array([3, 99]))
    code, _, err = run(capsys, "certify", *FAST, "--skip", "1", "--data", str(bad_label), "--output",
                       str(tmp_path / "b.tsv"))
    one_line(code, err, "the classifier has 10 classes but the data has 100")
    assert not (tmp_path / "b.tsv").exists()


@pytest.mark.parametrize("radii", ["a,b", "", "0,-1"])
def test_analyze_radii_errors_are_one_line(capsys, tmp_path, radii):
    out = tmp_path / "r.tsv"
    assert run(capsys, "certify", *FAST, "--output", str(out))[0] == 0
    code, _, err = run(capsys, "analyze", str(out), "--radii", radii)
    one_line(code, err, "radii")


def test_every_resumed_row_keeps_its_sidecar_record_also_k_included(capsys, tmp_path):
    out = tmp_path / "r.tsv"
    base = ["certify", "--skip", "100", "--n0", "8", "--n", "24", "--K", "3", "--b", "2", "--also-K", "1",
            "--seed", "5", "--device", "cpu", "--output", str(out)]
    assert run(capsys, *base, "--max", "2")[0] == 0
    assert run(capsys, *base, "--max", "4")[0] == 0  # resumed: two more images
    for path in (out, tmp_path / "r.K1.tsv"):
        rows = read_results(path)
        records = {r.row.idx: r for r in read_sidecar(path).records}
        assert len(rows) == 4 and sorted(records) == sorted(r.idx for r in rows)
        for row in rows:
            assert records[row.idx].row.to_line() == row.to_line() and sum(records[row.idx].estimation_counts) == 24
    header = json.loads(sidecar_path(out).read_text().splitlines()[0])
    # the device type the counts come from is recorded; the kernels are not (every choice gives the same counts)
    assert header["config"]["device"] == "cpu" and header["config"]["sequential"] == "exact"
    assert "kernels" not in header["config"]


def test_a_huge_batch_size_is_fitted_to_memory(capsys, tmp_path):
    """--batch-size 100000000 once asked for a 51 GB pool; now rows follow the memory and pools the work."""
    out = tmp_path / "r.tsv"
    code, _, err = run(capsys, "certify", *FAST, "--batch-size", "100000000", "--output", str(out))
    assert code == 0, err
    assert len(read_results(out)) == 2


def test_ctrl_c_while_the_models_load_is_one_line_and_leaves_no_result_file(capsys, tmp_path, monkeypatch):
    """Ctrl-C during start-up (models loading): "densepure: interrupted", exit 130, no traceback; a new output is
    never created, and a run being resumed keeps its files byte for byte."""
    import densepure.certify.job as job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    done = tmp_path / "done.tsv"
    assert run(capsys, "certify", *FAST, "--output", str(done))[0] == 0
    before = done.read_bytes(), sidecar_path(done).read_bytes()
    monkeypatch.setattr(job, "build_engine", interrupted)
    fresh = tmp_path / "r.tsv"
    for output, extra in ((fresh, []), (done, ["--max", "3"])):
        code, out, err = run(capsys, "certify", *FAST, *extra, "--output", str(output))
        assert code == 130 and err == "densepure: interrupted\n" and out == "", err
    assert not fresh.exists() and not sidecar_path(fresh).exists() and not (tmp_path / "r.png").exists()
    assert (done.read_bytes(), sidecar_path(done).read_bytes()) == before


def test_a_replaced_classifier_file_refuses_the_resume(capsys, tmp_path):
    """An hf: classifier directory whose weights change at the same path: the resume is refused in one line
    naming content.classifier, and the earlier results stay as they were."""
    directory = tmp_path / "vit-digits"
    model = save_tiny_vit(directory, image_size=8, patch_size=4, hidden_size=16, layers=1, channels=1)
    out = tmp_path / "r.tsv"
    args = ["certify", "--mode", "gaussian", "--max", "2", "--skip", "200", "--n0", "8", "--n", "24", "--seed", "5",
            "--device", "cpu", "--classifier", f"hf:{directory}", "--output", str(out)]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    content = read_sidecar(out).header.config["content"]
    assert set(content) == {"data", "classifier"}  # gaussian mode: no diffusion checkpoint
    assert all(len(v) == 64 and set(v) <= set("0123456789abcdef") for v in content.values()), content
    before = out.read_bytes(), sidecar_path(out).read_bytes()
    with torch.no_grad():
        model.classifier.bias.add_(1.0)  # other weights, same directory
    model.save_pretrained(directory)
    capsys.readouterr()  # transformers' own "Writing model shards" bar
    code, _, err = run(capsys, *args[:-2], "--max", "3", "--output", str(out))
    one_line(code, err, "content.classifier")
    assert (out.read_bytes(), sidecar_path(out).read_bytes()) == before


def raw_image_records(path):
    """Every image record of ``path``'s sidecar as written, duplicates kept (read_sidecar keeps one per idx)."""
    lines = sidecar_path(path).read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["record"] == "image"]


@pytest.mark.parametrize("command,argv", [
    ("predict", ["--n", "24"]),
    ("certify", ["--n0", "8", "--n", "200", "--radius", "0.1"]),
], ids=["predict", "sequential"])
def test_every_resumed_row_keeps_one_sidecar_record_predict_and_sequential(capsys, tmp_path, command, argv):
    """A single-process resume of a PREDICT run and of a sequential (--radius) run: every TSV row has exactly
    one image record in the sidecar, with the same line and the draws the row took."""
    out = tmp_path / "r.tsv"
    base = [command, "--mode", "gaussian", "--skip", "100", *argv, "--seed", "5", "--device", "cpu",
            "--output", str(out)]
    assert run(capsys, *base, "--max", "2")[0] == 0
    code, _, err = run(capsys, *base, "--max", "4")  # resumed: two more images
    assert code == 0, err
    rows = read_results(out)
    records = raw_image_records(out)
    assert len(rows) == 4 and sorted(r["idx"] for r in records) == sorted(row.idx for row in rows)
    sidecar = {r.row.idx: r for r in read_sidecar(out).records}
    for row in rows:
        record = sidecar[row.idx]
        assert record.row.to_line() == row.to_line() and sum(record.estimation_counts) == record.n
        if command == "predict":
            assert row.radius is None and record.n == 24
        else:
            assert 0 < record.n <= 200 and record.extra["sequential"] == "exact"
    assert len(read_sidecar(out).resumed_at) == 1


def test_lookahead_changes_no_certificate_and_a_run_resumes_across_it(capsys, tmp_path):
    """``--no-lookahead`` computes only the draws the sequential test reads: the same certificates and
    counts as the default, and a run started with it resumes without it (not part of the recorded setup)."""
    base = ["certify", "--mode", "gaussian", "--skip", "100", "--n0", "8", "--n", "200", "--radius", "0.1",
            "--seed", "5", "--device", "cpu"]
    one, mixed = tmp_path / "one.tsv", tmp_path / "mixed.tsv"
    assert run(capsys, *base, "--max", "4", "--output", str(one))[0] == 0
    assert run(capsys, *base, "--max", "2", "--no-lookahead", "--output", str(mixed))[0] == 0
    code, _, err = run(capsys, *base, "--max", "4", "--output", str(mixed))
    assert code == 0, err
    lines = [[row.to_line().split("\t")[:5] for row in read_results(path)] for path in (one, mixed)]
    assert lines[0] == lines[1] and len(lines[0]) == 4
    counts = [{r.row.idx: (r.selection_counts, r.estimation_counts) for r in read_sidecar(path).records}
              for path in (one, mixed)]
    assert counts[0] == counts[1]
