"""User errors end with one line on stderr and exit status 2, never a traceback or a partial line."""

import numpy as np
import pytest

from densepure.artifacts import manifest_path_for
from densepure.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,message", [
    (["--sigma", "0"], "sigma must be a finite number > 0"),
    (["--sigma", "-0.25"], "sigma must be a finite number > 0"),
    (["--sigma", "nan"], "sigma must be a finite number > 0, got nan"),  # issue 25, item 6
    (["--sigma", "inf"], "sigma must be a finite number > 0, got inf"),
    (["--radius", "inf"], "radius must be a finite number >= 0, got inf"),
    (["--preset", "nosuch"], "unknown preset 'nosuch'; available: cifar10, digits, imagenet256"),
    (["--alpha", "0.7"], "alpha must be in (0, 0.5)"),
    (["--alpha", "0"], "alpha must be in (0, 0.5)"),
    (["--n0", "0"], "n0"),
    (["--n", "0"], "n "),
    (["--K", "0"], "num_chains"),
    (["--data", "/nonexistent/data.npz"], "does not exist"),
    (["--classifier", "sklearn:foo"], "unknown classifier"),
    (["--preset", "cifar10", "--data", "/nonexistent"], ""),
    (["--device", "cuda:0"], "CUDA is not available"),
])
def test_user_errors_are_one_line(capsys, tmp_path, argv, message):
    import torch

    if "cuda:0" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, out, err = run_cli(capsys, "certify", *argv, "--output", str(tmp_path / "r.tsv"))
    assert code == 2
    assert err.startswith("densepure: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_bad_images_stop_before_any_line(capsys, tmp_path, improved_tiny):
    from densepure.models import DiffusionPreset, register_preset, save_state_dict
    from densepure.models.presets import Dataset

    unet, data = improved_tiny
    ckpt = tmp_path / "tiny.pt"
    save_state_dict(ckpt, unet.state_dict())
    import json

    register_preset(DiffusionPreset("tiny-test", json.loads(str(data["config"])), Dataset.CIFAR10, str(ckpt)))
    images = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    images[1, 0, 0, 0] = np.nan
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=np.array([0, 1]))
    out_file = tmp_path / "r.tsv"
    code, out, err = run_cli(capsys, "certify", "--preset", "tiny-test", "--checkpoint", str(ckpt), "--data", str(path),
                             "--mode", "onestep", "--classifier", "digits", "--output", str(out_file))
    # the digits classifier expects 1x8x8 images, but the NaN must be reported first or the shape error; both are
    # user errors that end in one line with no result line written
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not out_file.exists() or out_file.read_text().count("\n") <= 1


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--help"])
    out = capsys.readouterr().out
    for flag in ("--preset", "--checkpoint", "--classifier", "--data", "--sigma", "--n0", "--n ", "--alpha", "--K",
                 "--b", "--mode", "--batch-size", "--device", "--precision", "--seed", "--output", "--skip", "--max",
                 "--radius", "--t-star", "--overwrite"):
        assert flag in out


@pytest.mark.slow  # the session's digits export (tests/conftest.py): ~30 s of CPU
def test_export_writes_checked_onnx_for_digits(digits_export):
    """`densepure export` with no model flags: the shipped digits models, fp32 and fp16, each checked."""
    assert digits_export.code == 0, digits_export.stderr
    lines = digits_export.stdout.splitlines()
    assert len(lines) == 4, digits_export.stdout
    for kind in ("unet", "classifier"):
        for precision in ("fp32", "fp16"):
            path = digits_export.graph(kind, precision)
            assert path.is_file() and manifest_path_for(path).is_file(), path
            line = next(line for line in lines if f"  {path}  " in line)
            assert line.split()[:2] == [kind, precision] and "  exported in " in line, line
            assert "onnxruntime vs torch" in line and "max rel err" in line, line  # checked against torch


@pytest.mark.parametrize("argv,message", [
    (["--opset", "99"], "opset must be in 21.."),
    (["--opset", "20"], "opset must be in 21.."),
    (["--out", "FILE"], "is a regular file: expected a directory"),
    (["--out", "FILE/sub"], "cannot create the export directory"),
])
def test_export_errors_are_one_line_and_write_nothing(capsys, tmp_path, argv, message):
    (tmp_path / "FILE").write_text("not a directory")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "art")]
    code, _, err = run_cli(capsys, "export", "--precision", "fp32", *argv, *out)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "art").exists() and (tmp_path / "FILE").read_text() == "not a directory"


def test_build_without_tensorrt_is_one_line(capsys, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    code, out, err = run_cli(capsys, "build", "--onnx-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_analyze_paired(capsys, tmp_path):
    from densepure.results.records import TSV_HEADER

    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    first.write_text(TSV_HEADER + "\n0\t1\t1\t0.5000\t1\t1.0\n1\t2\t2\t0.2000\t1\t1.0\n2\t3\t-1\t0.0000\t0\t1.0\n")
    second.write_text(TSV_HEADER + "\n0\t1\t1\t0.7000\t1\t1.0\n1\t2\t2\t0.2000\t1\t1.0\n2\t3\t3\t0.3000\t1\t1.0\n")
    code, out, err = run_cli(capsys, "analyze", str(first), str(second), "--paired")
    assert code == 0 and err == ""
    assert "| a.tsv | 66.7 |" in out and "ACR minus a.tsv's" in out
    # per-image differences .2 0 .3: mean 1/6, sample sd sqrt(7/300), half-width 1.96 sd / sqrt(3)
    half = 1.959963984540054 * np.sqrt(7 / 300) / np.sqrt(3)
    assert f"- b.tsv: +0.167 ± {half:.3f} (3 images)" in out
    code, out, err = run_cli(capsys, "analyze", str(first), "--paired")
    assert code == 2 and err.count("\n") == 1 and "at least two" in err


def test_doctor_reports_devices_kernels_and_batches(capsys):
    code, out, err = run_cli(capsys, "doctor")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "--kernels auto uses" in lines["kernels"] and "triton" in lines["kernels"]
    assert "rows per model call" in lines["batches"]
    for name in ("torch", "onnxruntime", "tensorrt", "fastapi", "ray"):
        assert name in lines, name
