"""The engine with sound noise: counts equal the plain path's for every mode, whatever the batch layout
and kernels; images off the declared grid are refused; the model sees the grid value of each draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import CLASSES, SCHEDULE, PatchSign, micro_unet
from triton_env import kernel_device, prefer_interpreter, triton_kernels_or_skip

from densepure.diffusion import Mode, NoiseKind, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.engine.policy import FixedPolicy
from densepure.engine.reference import ReferenceSampler
from densepure.errors import ConfigError, InputError
from densepure.kernels import resolve_kernels
from densepure.models.classifiers import Classifier, Preprocess
from densepure.noise import NoisePhase

prefer_interpreter()
LEVELS = 255
MODES = [(Mode.DENSEPURE, 3, 2), (Mode.ONESTEP, 1, 1), (Mode.ONESTEP_DDS, 1, 1), (Mode.GAUSSIAN, 1, 1)]


def smoothing(mode, k=1, b=1, levels=LEVELS) -> SmoothingConfig:
    dense = mode is Mode.DENSEPURE
    return SmoothingConfig(mode, 0.5, k if dense else 1, b if dense else 1, schedule=SCHEDULE,
                           noise=NoiseKind.SOUND, levels=levels)


@pytest.fixture(scope="module")
def parts():
    clf = Classifier(PatchSign(), Preprocess()).eval()
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(90, 160, (3, 3, 8, 8), generator=gen).to(torch.float32) / LEVELS  # on the grid
    return micro_unet(), clf, images


def run_engine(parts, config: SmoothingConfig, kernels=None, device="cpu", **cfg):
    unet, clf, images = parts
    settings = {"unet_rows": 19, "classifier_rows": 11, "draw_capacity": 5, "image_slots": 2, **cfg}
    backends = Backends(TorchDenoiser(unet.to(device)), TorchClassifier(clf.to(device), CLASSES, (3, 8, 8)))
    engine = Engine(config, backends, (3, 8, 8), device, EngineConfig(**settings), kernels=kernels)
    phases = {NoisePhase.SELECTION: 4, NoisePhase.ESTIMATION: 16}
    done = engine.run(ImageRequest(i, images[i], FixedPolicy(CLASSES, phases), 6, noise_id=i) for i in range(3))
    return {r.key: [r.policy.counts[p].tolist() for p in phases] for r in done}


@pytest.mark.parametrize("mode,k,b", MODES)
def test_sound_counts_equal_the_plain_path(parts, mode, k, b):
    unet, clf, images = parts
    config = smoothing(mode, k, b)
    ref = ReferenceSampler(config, clf, CLASSES, denoiser=unet, seed=6, batch_size=8)
    want = {i: [ref.count(images[i], i, NoisePhase.SELECTION, 0, 4).tolist(),
                ref.count(images[i], i, NoisePhase.ESTIMATION, 0, 16).tolist()] for i in range(3)}
    assert sum(int(np.count_nonzero(want[i][1])) for i in range(3)) >= 4, "labels must vary for a real test"
    assert run_engine(parts, config) == want
    assert run_engine(parts, config, unet_rows=64, classifier_rows=3, draw_capacity=40, image_slots=3,
                      early_exit=False) == want  # batch layout and slots change nothing


@pytest.mark.parametrize("mode,k,b", [m if m[0] is Mode.ONESTEP else pytest.param(*m, marks=pytest.mark.slow)
                                      for m in MODES])  # the interpreter is slow: one mode in the fast tier
def test_sound_triton_kernels_give_the_torch_counts(parts, mode, k, b):
    device = kernel_device()
    triton = triton_kernels_or_skip(device)
    config = smoothing(mode, k, b)
    want = run_engine(parts, config, resolve_kernels("torch", device), device)
    assert run_engine(parts, config, triton, device) == want


def test_sound_inputs_lie_on_the_grid_with_noise_of_sigma(parts):
    """Gaussian smoothing's classifier input is 2 v - 1 with v = (x_int + j) / levels: on the grid, and
    v - x has the standard deviation sigma (plus the grid's q^2 / 12, negligible here)."""
    unet, clf, images = parts
    sound = ReferenceSampler(smoothing(Mode.GAUSSIAN), clf, CLASSES, seed=6)
    draws = torch.arange(0, 64)
    steps = sound.sound_input(images[0], 0, NoisePhase.ESTIMATION, draws)  # 2 (x_int + j)/levels - 1
    grid = (steps + 1.0) / 2.0 * LEVELS
    assert torch.allclose(grid, grid.round(), atol=2e-3)  # on the grid, up to float32 rounding
    noise = (grid.round() / LEVELS - images[0]).std()
    assert abs(float(noise) - 0.5) < 0.02


def test_images_off_the_grid_are_refused_with_the_grid_named(parts):
    unet, clf, images = parts
    backends = Backends(TorchDenoiser(unet), TorchClassifier(clf, CLASSES, (3, 8, 8)))
    engine = Engine(smoothing(Mode.ONESTEP), backends, (3, 8, 8), "cpu")
    off = images[0].clone()
    off[1, 2, 3] += 0.3 / LEVELS
    with pytest.raises(InputError, match=r"not on the grid k/255 \(--levels 255\).*\(1, 2, 3\)"):
        engine.submit(ImageRequest("x", off, FixedPolicy(CLASSES, {NoisePhase.PREDICT: 2}), 1))
    engine.submit(ImageRequest("y", images[0] + 1e-8, FixedPolicy(CLASSES, {NoisePhase.PREDICT: 2}), 1))


def test_sound_noise_needs_its_grid():
    with pytest.raises(ConfigError, match="levels"):
        SmoothingConfig(Mode.GAUSSIAN, 0.5, noise="sound")
    with pytest.raises(ConfigError, match="noise must be one of"):
        SmoothingConfig(Mode.GAUSSIAN, 0.5, noise="exact")
    assert SmoothingConfig(Mode.GAUSSIAN, 0.5, noise="float", levels=16).levels is None
