"""Hugging Face ``transformers`` and ``timm`` classifiers, from tiny random-config models built here.

Nothing is downloaded: the hub is offline for every test, HF models come from ``save_pretrained``
directories (or a hand-made local cache), timm models are built with ``pretrained=False`` and their
weights written next to them. The packages are optional: each group skips with a reason when its
package is absent (timm also when its torchvision cannot be imported against this torch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hf_helpers import vit_transformers

from densepure.errors import CheckpointError, ConfigError
from densepure.models.classifiers import InputRange, Preprocess, ResizeMode, from_timm, from_transformers, hf_preprocess
from densepure.models.sources import ClassifierSource, ClassifierSpec, load_classifier

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the hub: HF_HUB_OFFLINE in the environment and in huggingface_hub's constants
    (read once at import, so an already imported hub library would not see the variable)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def transformers():
    return vit_transformers()


@pytest.fixture(scope="module")
def timm():
    # `import timm` imports torchvision (timm.layers.norm_act: torchvision.ops.misc), whose compiled ops must be
    # built for this very torch. For torch 2.13.0+cpu that is torchvision 0.28.0+cpu, only on
    # download.pytorch.org; PyPI's 0.28.0 Linux wheel links libtorch_cuda.so and libc10_cuda.so, which a +cpu
    # torch lacks (and PyPI has no torchvision source to build). Where neither can be installed these skip.
    try:
        pytest.importorskip("torchvision", reason=f"timm imports torchvision, and none built for torch "
                            f"{torch.__version__} is installed (the +cpu wheel is on download.pytorch.org only)")
        return pytest.importorskip("timm", reason="timm classifiers need 'timm' (densepure[timm])")
    except RuntimeError as exc:  # PyPI's CUDA torchvision on a torch+cpu: "operator torchvision::nms does not exist"
        pytest.skip(f"torchvision cannot be imported with torch {torch.__version__}: {str(exc).splitlines()[0]}")


def _pixels(side: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """``(n, 3, side, side)`` uint8 images."""
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _diffusion_space(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit pixels p as the engine sees them: x = 2 p/255 - 1 in [-1, 1]."""
    return pixels.double().div(127.5).sub(1.0).float()


def _processor_output(processor, pixels: torch.Tensor) -> torch.Tensor:
    """The HF processor's own CPU pipeline on 8-bit HWC images (what it does to a PIL image)."""
    return processor([p.permute(1, 2, 0).numpy() for p in pixels], return_tensors="pt")["pixel_values"]


def _processor(transformers, **kwargs):
    base = {"size": {"height": 32, "width": 32}, "resample": 2, "image_mean": list(MEAN), "image_std": list(STD)}
    return transformers.ViTImageProcessor(**(base | kwargs))


# --------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def hf_vit(transformers, tmp_path_factory):
    """A tiny random ViT (32x32, patch 8, 10 labels) saved with its image processor: (model, processor, dir)."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=10)
    model = transformers.ViTForImageClassification(config).eval()
    processor = _processor(transformers)
    directory = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor, directory


def test_hf_logits_equal_the_source_model_after_its_processor(hf_vit):
    model, processor, directory = hf_vit
    clf = from_transformers(directory)
    pixels = _pixels(32)
    with torch.no_grad():
        expected = model(pixel_values=_processor_output(processor, pixels)).logits
        got = clf(_diffusion_space(pixels))
    # No resize: both sides compute (p/255 - m)/s in float32, in a different order (a few ulp apart).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape == (2, 10) and got.dtype == torch.float32


def test_hf_weights_that_are_a_code_pickle_are_refused_in_one_line(hf_vit, tmp_path):
    """A saved model directory whose weights file is a pickle that runs code: refused, nothing runs."""
    import os
    import shutil

    directory = tmp_path / "evil_vit"
    shutil.copytree(hf_vit[2], directory)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"vit.embeddings.cls_token": Evil()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled Python objects") as info:
        from_transformers(directory)
    assert "weights_only" not in str(info.value) and not (tmp_path / "pwned").exists()


def test_hf_config_read(hf_vit):
    clf = from_transformers(hf_vit[2])
    assert clf.num_classes == 10
    assert clf.preprocess == Preprocess(InputRange.ZERO_ONE, 32, ResizeMode.BILINEAR, True, MEAN, STD)
    assert not clf.training and not clf.network.training
    assert all(p.dtype == torch.float32 for p in clf.parameters())


def test_hf_loader_is_local_only(hf_vit, transformers, monkeypatch):
    calls = []
    original = transformers.AutoModelForImageClassification.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageClassification, "from_pretrained", spy)
    from_transformers(hf_vit[2])
    assert len(calls) == 1 and calls[0]["local_files_only"] is True and calls[0]["dtype"] is torch.float32


def test_hf_half_precision_checkpoint_loads_in_float32(hf_vit, tmp_path):
    model, processor, _ = hf_vit
    half = type(model)(model.config).half()
    half.load_state_dict({k: v.half() for k, v in model.state_dict().items()})
    half.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    clf = from_transformers(tmp_path)  # transformers 5 keeps the checkpoint's dtype unless told otherwise
    assert all(p.dtype == torch.float32 for p in clf.parameters())
    assert torch.isfinite(clf(_diffusion_space(_pixels(32)))).all()


def test_hf_spec_loads_the_same_classifier(hf_vit):
    spec = ClassifierSpec.parse(f"hf:{hf_vit[2]}")
    assert (spec.source, spec.location, spec.checkpoint) == (ClassifierSource.HF, str(hf_vit[2]), None)
    x = _diffusion_space(_pixels(32))
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(spec, CPU)(x), from_transformers(hf_vit[2])(x), rtol=0, atol=0)


def test_hf_hub_id_from_the_local_cache(hf_vit, transformers, tmp_path, monkeypatch):
    """``hf:owner/name`` resolves in the local HF cache (the layout huggingface_hub writes)."""
    from huggingface_hub import constants

    revision = "0" * 40
    repo = tmp_path / "models--local--tiny-vit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in hf_vit[2].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    # transformers < 5 binds its default cache directory at import time
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(tmp_path), raising=False)
    clf = load_classifier(ClassifierSpec.parse("hf:local/tiny-vit"), CPU)
    assert clf.num_classes == 10 and clf.preprocess.size == 32


def _smooth_pixels(side: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """``(n, 3, side, side)`` uint8 images, smooth like natural images and x0_hat, in levels 32..223."""
    low = torch.rand((n, 3, max(side // 8, 2), max(side // 8, 2)), generator=torch.Generator().manual_seed(seed))
    up = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)
    return up.mul(191).add(32).round().to(torch.uint8)


@pytest.mark.parametrize("side, resample, mode", [
    (64, 2, ResizeMode.BILINEAR), (16, 2, ResizeMode.BILINEAR), (48, 3, ResizeMode.BICUBIC),
    (16, 3, ResizeMode.BICUBIC), (40, 0, ResizeMode.NEAREST_EXACT), (16, 0, ResizeMode.NEAREST_EXACT),
])
def test_hf_resize_matches_the_processor(transformers, tmp_path, side, resample, mode):
    processor = _processor(transformers, resample=resample)
    processor.save_pretrained(tmp_path)
    pre = hf_preprocess(tmp_path / "preprocessor_config.json")
    assert (pre.size, pre.mode, pre.antialias) == (32, mode, True)
    pixels = _smooth_pixels(side)
    expected = _processor_output(processor, pixels)
    levels = (pre(_diffusion_space(pixels)) - expected).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    # PIL resizes an 8-bit image in two separable passes, rounding to a level after each (<= 0.5 each),
    # with fixed-point weights; torch resizes in float32 in one go: within 1 level plus a little, about
    # 0.3 on average; nearest picks the same pixels (exact). On white noise PIL's clipping of the
    # intermediate pass, where bicubic's negative lobes overshoot 0..255, moves a few pixels by up to
    # ~7 levels; smooth images (like x0_hat) stay inside the range, so no clip is emulated.
    bound = 1e-3 if mode is ResizeMode.NEAREST_EXACT else 1.1
    assert levels.max().item() <= bound and levels.mean().item() <= 0.4


@pytest.mark.parametrize("options", [
    {"do_rescale": False}, {"rescale_factor": 1 / 127.5}, {"do_normalize": False},
    {"do_normalize": False, "rescale_factor": 1 / 127.5}, {"do_resize": False},
])
def test_hf_rescale_and_normalise_fold_into_mean_std(transformers, tmp_path, options):
    processor = _processor(transformers, **options)
    processor.save_pretrained(tmp_path)
    pre = hf_preprocess(tmp_path / "preprocessor_config.json")
    pixels = _pixels(32)
    expected = _processor_output(processor, pixels)
    scale = expected.abs().max().item()
    torch.testing.assert_close(pre(_diffusion_space(pixels)), expected, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


def test_hf_plain_processor_is_a_range_conversion_only(transformers, tmp_path):
    _processor(transformers, do_normalize=False).save_pretrained(tmp_path)
    expected = Preprocess(InputRange.ZERO_ONE, 32, ResizeMode.BILINEAR)  # no mean/std: nothing to normalise
    assert hf_preprocess(tmp_path / "preprocessor_config.json") == expected


@pytest.mark.parametrize("options, message", [
    ({"do_center_crop": True, "crop_size": {"height": 28, "width": 28}}, "centre-cropping"),
    ({"crop_pct": 0.9}, "centre-cropping"),
    ({"size": {"height": 32, "width": 48}}, "square"),
    ({"resample": 1}, "resample"),
    ({"rescale_offset": True}, "rescale_offset"),
    ({"image_mean": None}, "image_mean"),
])
def test_hf_unsupported_processor_settings_are_config_errors(tmp_path, options, message):
    cfg = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN), "image_std": list(STD)}
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(cfg | options))
    with pytest.raises(ConfigError, match=message):
        hf_preprocess(path)


def test_hf_directory_without_config(transformers, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        from_transformers(tmp_path)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_classifier(ClassifierSpec.parse(f"hf:{tmp_path / 'missing'}"), CPU)


def test_hf_uncached_hub_id_is_not_downloaded(transformers, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        from_transformers("aaraki/vit-base-patch16-224-in21k-finetuned-cifar10")


def test_hf_directory_without_processor_or_weights(hf_vit, tmp_path):
    hf_vit[0].config.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        from_transformers(tmp_path)
    with pytest.raises(CheckpointError, match="cannot load a transformers image classifier"):
        from_transformers(tmp_path, preprocess=Preprocess(size=32))


# --------------------------------------------------------------------------- timm


def _timm_model(timm, name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


@pytest.fixture(scope="module")
def timm_vit(timm, tmp_path_factory):
    """timm's tiny ``test_vit`` at 32x32 with 10 classes, saved as .pt and .safetensors: (model, {suffix: path})."""
    model = _timm_model(timm, "test_vit", img_size=32)
    directory = tmp_path_factory.mktemp("timm_vit")
    paths = {".pt": directory / "vit.pt", ".safetensors": directory / "vit.safetensors"}
    torch.save(model.state_dict(), paths[".pt"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(paths[".safetensors"]))
    return model, paths


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_timm_logits_equal_the_source_model(timm_vit, suffix):
    model, paths = timm_vit
    clf = from_timm("test_vit", paths[suffix], model_kwargs={"img_size": 32})
    x = _diffusion_space(_pixels(32))
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = model(((x + 1) / 2 - mean) / std)  # timm's own normalisation of a [0,1] image; no resize
        torch.testing.assert_close(clf(x), expected, rtol=1e-5, atol=1e-5)
    cfg = model.pretrained_cfg
    assert clf.num_classes == 10
    assert clf.preprocess == Preprocess(InputRange.ZERO_ONE, 32, ResizeMode(cfg["interpolation"]), True,
                                        tuple(cfg["mean"]), tuple(cfg["std"]))


def test_timm_spec_loads_the_same_classifier(timm_vit, timm):
    paths = timm_vit[1]
    resnet = _timm_model(timm, "test_resnet")
    path = paths[".pt"].with_name("resnet.pt")
    torch.save(resnet.state_dict(), path)
    spec = ClassifierSpec.parse(f"timm:test_resnet:{path}")
    assert (spec.source, spec.location, spec.checkpoint) == (ClassifierSource.TIMM, "test_resnet", str(path))
    clf = load_classifier(spec, CPU)
    cfg = resnet.pretrained_cfg
    assert clf.num_classes == 10  # read from the checkpoint's classifier; the architecture's default is 1000
    assert clf.preprocess == Preprocess(InputRange.ZERO_ONE, cfg["input_size"][-1], ResizeMode(cfg["interpolation"]),
                                        True, tuple(cfg["mean"]), tuple(cfg["std"]))
    x = _diffusion_space(_pixels(32))
    with torch.no_grad():
        torch.testing.assert_close(clf(x), resnet(clf.preprocess(x)), rtol=0, atol=0)


def test_timm_checkpoint_of_another_architecture(timm_vit, timm):
    _, paths = timm_vit
    with pytest.raises(CheckpointError, match="does not fit") as info:
        from_timm("test_resnet", paths[".pt"])
    assert "missing keys" in str(info.value) and "unexpected keys" in str(info.value)
    with pytest.raises(CheckpointError, match="shape mismatches.*pos_embed"):
        from_timm("test_vit", paths[".safetensors"])  # built at its default 160x160: more positions


def test_timm_unknown_name(timm, tmp_path):
    with pytest.raises(ConfigError, match="unknown timm model 'test_vitt'.*test_vit"):
        from_timm("test_vitt", tmp_path / "unused.pt")


def test_timm_specs_parse():
    assert ClassifierSpec.parse("timm:test_vit") == ClassifierSpec(ClassifierSource.TIMM, "test_vit", None)
    assert ClassifierSpec.parse("timm:test_vit:/w/a:b.pt") == ClassifierSpec(ClassifierSource.TIMM, "test_vit", "/w/a:b.pt")
    with pytest.raises(ConfigError, match="needs a timm model name"):
        ClassifierSpec.parse("timm::weights.pt")


@pytest.mark.parametrize("package, load", [
    ("transformers", lambda: from_transformers("unused")),
    ("timm", lambda: from_timm("test_vit", "unused.pt")),
])
def test_missing_packages_are_config_errors(monkeypatch, package, load):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(ConfigError, match=rf"pip install -e '\.\[{package}\]'"):
        load()


def test_timm_checkpoints_are_read_weights_only(timm_vit, timm, tmp_path, monkeypatch):
    _, paths = timm_vit
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from_timm("test_vit", paths[".pt"], model_kwargs={"img_size": 32})
    assert calls and all(c.get("weights_only") is True for c in calls)
    hostile = tmp_path / "hostile.pt"
    torch.save({"state_dict": original(paths[".pt"], weights_only=True), "note": Path("x")}, hostile)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        from_timm("test_vit", hostile, model_kwargs={"img_size": 32})


def test_timm_without_checkpoint_uses_only_the_local_cache(timm_vit, timm, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        load_classifier(ClassifierSpec.parse("timm:test_vit"), CPU)
    revision = "1" * 40
    repo = tmp_path / f"models--{timm.models.get_pretrained_cfg('test_vit').hf_hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "model.safetensors").write_bytes(timm_vit[1][".safetensors"].read_bytes())
    clf = from_timm("test_vit", None, model_kwargs={"img_size": 32})
    assert clf.num_classes == 10 and clf.preprocess.size == 32

