"""Issue 18, items 3, 4 and 8: deploying exported models with ``--artifacts`` alone, the papers' resize, and
the newcomer's mistakes (a classifier with more classes than the data, a checkpoint of another preset).

The fast tests read stand-in export directories (real manifests beside placeholder graphs: resolving a
job's models reads manifests only). The slow one exports a CIFAR-10-shaped pair for real (the golden tiny
improved-diffusion UNet, a tiny HF ViT with a bilinear processor) and deploys it on a CIFAR-10 archive.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tarfile

import numpy as np
import pytest
from export_helpers import stand_in_artifacts
from hf_helpers import save_tiny_vit

from densepure.certify.options import JobOptions
from densepure.cli import main
from densepure.engine.backends.select import BackendKind
from densepure.errors import ArtifactError, ConfigError
from densepure.models.classifiers import InputRange, Preprocess, ResizeChoice, ResizeMode, hf_preprocess
from densepure.models.sources import ClassifierSpec, default_resize, load_classifier, papers_preprocess


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> bool:
    return code == 2 and err.startswith("densepure: error: ") and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------------------------
# --artifacts alone: the manifests name the preset, the classifier and the resize


def test_artifacts_alone_name_the_models(tmp_path):
    art = stand_in_artifacts(tmp_path / "cifar10")
    options = JobOptions.build(backend=BackendKind.ONNXRUNTIME, artifacts=str(art))
    assert (options.models.preset, options.models.classifier, options.models.resize) == ("cifar10", "hf:/workstation/models/vit",
                                                                   ResizeChoice.BICUBIC)
    assert (options.sampling.n0, options.sampling.n, options.smoothing.num_chains, options.smoothing.steps) == (100, 100_000, 10, 2)  # the papers' protocol
    record = options.record()
    assert (record["preset"], record["classifier"], record["resize"]) == ("cifar10", "hf:/workstation/models/vit",
                                                                         "bicubic")
    # explicit flags that agree are fine; the classifier's directory may differ between machines
    agreed = JobOptions.build(preset="cifar10", classifier="hf:/jetson/vit", resize="bicubic", backend="onnxruntime",
                        artifacts=str(art))
    assert agreed.models.classifier == "hf:/jetson/vit" and agreed.models.resize is ResizeChoice.BICUBIC


@pytest.mark.parametrize("flags, message", [
    ({"preset": "digits"}, "--preset digits was given, but the graphs in {art} were exported for preset 'cifar10': "
                           "drop --preset"),
    ({"classifier": "digits"}, "--classifier digits was given, but the classifier graph in {art} was exported from "
                               "'hf:/workstation/models/vit': drop --classifier"),
    ({"classifier": "hf:/models/deit"}, "or export it there: `densepure export --preset cifar10 --classifier "
                                        "hf:/models/deit --out {art}`"),
    ({"resize": "bilinear"}, "was exported with --resize bicubic: drop --resize (it is inside the graph), or export "
                             "again with --resize bilinear"),
], ids=["preset", "classifier", "classifier-fix", "resize"])
def test_explicit_flags_are_checked_against_the_manifests(tmp_path, flags, message):
    art = stand_in_artifacts(tmp_path / "cifar10")
    with pytest.raises(ConfigError) as info:
        JobOptions.build(backend=BackendKind.ONNXRUNTIME, artifacts=str(art), **flags)
    assert message.format(art=art) in str(info.value)


def test_artifact_directories_that_cannot_name_their_models(tmp_path):
    mixed = stand_in_artifacts(tmp_path / "mixed", unet_preset="imagenet256")
    with pytest.raises(ArtifactError, match=r"disagree: .*unet-fp32.onnx \(unet\) was exported for preset "
                                            r"'imagenet256'.*export them again together"):
        JobOptions.build(backend="onnxruntime", artifacts=str(mixed))
    fp16 = stand_in_artifacts(tmp_path / "fp16", precisions=("fp16",))
    with pytest.raises(ArtifactError, match="no fp32 classifier ONNX graph .*run those with --precision fp16"):
        JobOptions.build(backend="onnxruntime", artifacts=str(fp16))
    assert JobOptions.build(backend="onnxruntime", artifacts=str(fp16), precision="fp16").models.preset == "cifar10"
    old = stand_in_artifacts(tmp_path / "old", resize=None)  # exported before --resize existed
    assert JobOptions.build(backend="onnxruntime", artifacts=str(old)).models.resize is None
    with pytest.raises(ConfigError, match="does not record its resize"):
        JobOptions.build(backend="onnxruntime", artifacts=str(old), resize="bicubic")
    unnamed = stand_in_artifacts(tmp_path / "unnamed", preset=None)
    with pytest.raises(ConfigError, match="do not record their preset: add --preset"):
        JobOptions.build(backend="onnxruntime", artifacts=str(unnamed))


def test_deploy_errors_are_one_line_before_any_result(capsys, tmp_path):
    art = stand_in_artifacts(tmp_path / "cifar10")
    output = tmp_path / "r.tsv"
    base = ("certify", "--backend", "onnxruntime", "--artifacts", str(art), "--output", str(output))
    code, _, err = run_cli(capsys, *base)
    assert one_line_error(code, err) and "preset 'cifar10' needs --data" in err
    code, _, err = run_cli(capsys, *base, "--preset", "digits")
    assert one_line_error(code, err) and "drop --preset" in err
    assert not output.exists()


# ------------------------------------------------------------------------------------------------------
# defaults without artifacts; --resize


def test_digits_records_are_unchanged():
    """The sidecar configuration of a default run is what it was before --resize (no ``resize`` key): earlier
    digits runs still resume."""
    record = json.loads(json.dumps(JobOptions.build(seed=1).record()))  # as the sidecar holds it
    assert record == {
        "alpha": 0.001, "also_chains": [], "artifacts": None, "backend": "torch", "checkpoint": None,
        "classifier": "digits", "compile": None, "data": None, "device": "auto", "mode": "densepure", "n": 1000,
        "n0": 50, "num_chains": 10, "precision": "fp32", "predict": False, "preset": "digits", "radius": None,
        "seed": 1, "sequential": "exact", "sigma": 0.25, "steps": 2, "t_star_rule": "auto"}


def test_resize_defaults_and_digits_refusal():
    assert JobOptions.build(preset="cifar10", classifier="hf:aaraki/vit").models.resize is ResizeChoice.BICUBIC
    assert JobOptions.build(preset="imagenet256", classifier="timm:beit_large_patch16_512").models.resize is ResizeChoice.BICUBIC
    # a preset other than the papers' (an unknown name is refused when the options are built: issue 25, item 6)
    assert JobOptions.build(preset="digits", classifier="hf:vit").models.resize is ResizeChoice.PROCESSOR
    assert JobOptions.build(preset="cifar10", classifier="hf:vit", resize="bilinear").record()["resize"] == "bilinear"
    assert default_resize("cifar10", ClassifierSpec.parse("digits")) is None
    with pytest.raises(ConfigError, match="does not apply to the digits classifier.*no resize"):
        JobOptions.build(resize="bicubic")
    with pytest.raises(ConfigError, match="preset 'cifar10' needs --classifier .*hf:aaraki/vit-base-patch16-224"):
        JobOptions.build(preset="cifar10")


def test_cli_resize_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "certify", "--resize", "bicubic", "--output", str(tmp_path / "r.tsv"))
    assert one_line_error(code, err) and "digits classifier" in err
    with pytest.raises(SystemExit) as info:
        main(["certify", "--resize", "area"])
    assert info.value.code == 2 and "invalid choice: 'area'" in capsys.readouterr().err


def test_bicubic_on_the_papers_vit_processor_is_the_papers_preprocessing(tmp_path):
    """aaraki/vit-base-patch16-224-in21k-finetuned-cifar10 saves a bilinear 224 processor with mean = std = 0.5;
    --resize bicubic (the cifar10 default) makes it exactly ALGORITHM §8's input, processor keeps bilinear."""
    config = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
              "image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 2,
              "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}}
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(config))
    saved = hf_preprocess(path)
    assert saved == Preprocess(InputRange.ZERO_ONE, 224, ResizeMode.BILINEAR, True, (0.5,) * 3, (0.5,) * 3)
    assert ResizeChoice.BICUBIC.apply(saved) == papers_preprocess("cifar10")
    assert ResizeChoice.PROCESSOR.apply(saved) == saved
    assert ResizeChoice.BILINEAR.apply(papers_preprocess("cifar10")).mode is ResizeMode.BILINEAR


# ------------------------------------------------------------------------------------------------------
# stand-ins in the official formats


def cifar_batch(n: int = 20, seed: int = 0) -> dict:
    """A CIFAR-10 python batch as the official pickles hold it (bytes keys, uint8 (N, 3072) rows R, G, B)."""
    rng = np.random.default_rng(seed)
    low = rng.random((n, 3, 4, 4))
    smooth = np.kron(low, np.ones((8, 8)))  # 32x32 images that denoise like natural ones, not white noise
    data = (smooth * 191 + 32).astype(np.uint8).reshape(n, 3072)
    return {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar_archive(directory, n: int = 20):
    """``cifar-10-batches-py/test_batch`` and ``cifar-10-python.tar.gz`` holding it (protocol 2, as published)."""
    batches = directory / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    with open(batches / "test_batch", "wb") as f:
        pickle.dump(cifar_batch(n), f, protocol=2)
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    archive = directory / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    return batches, archive


def test_a_classifier_with_more_classes_than_the_data_is_a_warning(capsys, tmp_path):
    """The digits CNN (10 classes) on an .npz that declares 5 classes: it runs, with one warning line."""
    images = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    data = tmp_path / "five.npz"
    np.savez(data, images=images, labels=np.array([0, 4]), num_classes=np.array(5))
    output = tmp_path / "r.tsv"
    code, _, err = run_cli(capsys, "certify", "--mode", "gaussian", "--data", str(data), "--n0", "5", "--n", "10",
                           "--seed", "1", "--device", "cpu", "--output", str(output))
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("densepure: warning: ")]
    assert warnings == ["densepure: warning: the classifier has 10 classes but the data (five) has 5: its predictions "
                        "5..9 can never be correct; is it the classifier trained on this data?"]
    inferred = tmp_path / "inferred.npz"  # a count read off the labels is a lower bound: no warning
    np.savez(inferred, images=images, labels=np.array([0, 4]))
    code, _, err = run_cli(capsys, "certify", "--mode", "gaussian", "--data", str(inferred), "--n0", "5", "--n", "10",
                           "--seed", "1", "--device", "cpu", "--output", str(tmp_path / "i.tsv"))
    assert code == 0 and "warning" not in err


# ------------------------------------------------------------------------------------------------------
# the whole path, for real: export a CIFAR-10-shaped pair, deploy it with --artifacts alone


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A tiny HF ViT on 40x40 inputs (10 labels) saved with a bilinear processor, like the papers' ViT's."""
    directory = tmp_path_factory.mktemp("models") / "vit-tiny-cifar10"
    save_tiny_vit(directory, image_size=40, patch_size=8, hidden_size=32, layers=2, processor={"resample": 2})
    return directory


def test_resize_replaces_the_processors_interpolation(tiny_vit):
    import torch

    spec = ClassifierSpec.parse(f"hf:{tiny_vit}")
    own = load_classifier(spec, torch.device("cpu"))
    bicubic = load_classifier(spec, torch.device("cpu"), resize="bicubic")
    assert own.preprocess.mode is ResizeMode.BILINEAR and bicubic.preprocess.mode is ResizeMode.BICUBIC
    assert bicubic.preprocess == ResizeChoice.BICUBIC.apply(own.preprocess)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(own(x), bicubic(x))  # 32 -> 40: the interpolation matters
    with pytest.raises(ConfigError, match="digits classifier"):
        load_classifier(ClassifierSpec.parse("digits"), torch.device("cpu"), resize="bilinear")


def rows(path):
    return [line.split("\t")[:5] for line in path.read_text().splitlines()]


@pytest.mark.slow  # two traces (a UNet and a ViT) and three certifications: ~1-2 min of CPU
def test_export_then_deploy_with_artifacts_alone(capsys, tmp_path, tiny_vit, improved_tiny):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")
    from densepure.models import DiffusionPreset, register_preset, save_state_dict
    from densepure.models.presets import PRESETS, Dataset

    unet, data = improved_tiny
    ckpt = tmp_path / "tiny-cifar10.pt"
    save_state_dict(ckpt, unet.state_dict())
    register_preset(DiffusionPreset("tiny-cifar10", json.loads(str(data["config"])), Dataset.CIFAR10, str(ckpt)))
    try:
        _, archive = write_cifar_archive(tmp_path / "data")
        art = tmp_path / "artifacts"
        models = ("--preset", "tiny-cifar10", "--checkpoint", str(ckpt), "--classifier", f"hf:{tiny_vit}",
                  "--resize", "bicubic")
        code, out, err = run_cli(capsys, "export", *models, "--precision", "fp32", "--out", str(art))
        assert code == 0, err
        steps = [line.split(":")[0] for line in err.splitlines()]
        assert steps == ["[1/2] unet fp32"] * 2 + ["[2/2] classifier fp32"] * 2
        assert "resize bicubic" in out
        job = ("--data", str(archive), "--mode", "onestep", "--skip", "7", "--n0", "10", "--n", "40", "--seed", "7",
               "--device", "cpu")
        code, _, err = run_cli(capsys, "certify", *models, *job, "--output", str(tmp_path / "torch.tsv"))
        assert code == 0, err
        assert "Loading weights" not in err  # transformers' own bar: noise beside the job's progress

        deployed = tmp_path / "models-elsewhere"  # the deploy machine has the graphs, not the models
        shutil.move(tiny_vit, deployed)
        try:
            code, _, err = run_cli(capsys, "certify", "--backend", "onnxruntime", "--artifacts", str(art), *job,
                                   "--output", str(tmp_path / "ort.tsv"))
        finally:
            shutil.move(deployed, tiny_vit)
        assert code == 0, err
        assert f"preset=tiny-cifar10 classifier=hf:{tiny_vit} resize=bicubic" in err
        assert rows(tmp_path / "ort.tsv") == rows(tmp_path / "torch.tsv") and len(rows(tmp_path / "ort.tsv")) == 4
        header = json.loads((tmp_path / "ort.tsv.jsonl").read_text().splitlines()[0])["config"]
        assert (header["preset"], header["classifier"], header["resize"]) == ("tiny-cifar10", f"hf:{tiny_vit}",
                                                                             "bicubic")

        code, _, err = run_cli(capsys, "certify", "--backend", "onnxruntime", "--artifacts", str(art), *job,
                               "--checkpoint", str(tmp_path / "data" / "cifar-10-batches-py" / "test_batch"),
                               "--output", str(tmp_path / "other.tsv"))
        assert one_line_error(code, err) and "exported from another checkpoint" in err and "drop --checkpoint" in err

        # the same graphs labelled as the papers' CIFAR-10 export (same schedule and image shape): the
        # cifar10 preset comes from the manifests, with its protocol's defaults
        for manifest in art.glob("*.manifest.json"):
            raw = json.loads(manifest.read_text())
            raw["source"]["preset"] = "cifar10"
            manifest.write_text(json.dumps(raw))
        code, _, err = run_cli(capsys, "predict", "--backend", "onnxruntime", "--artifacts", str(art),
                               "--data", str(archive), "--skip", "7", "--n", "30", "--mode", "onestep",
                               "--seed", "7", "--device", "cpu", "--output", str(tmp_path / "cifar10.tsv"))
        assert code == 0, err
        assert "preset=cifar10" in err and (tmp_path / "cifar10.tsv").read_text().startswith("idx\tlabel\tpredict\t"
                                                                                               "correct\ttime\n")
    finally:
        PRESETS.pop("tiny-cifar10", None)
