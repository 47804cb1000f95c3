"""The reference sampler (the plain path) on the golden tiny UNet with a small random classifier."""

import numpy as np
import pytest
import torch
from torch import nn

from densepure.diffusion import Mode, NoiseSchedule, SmoothingConfig, build_reverse_grid, t_star
from densepure.diffusion.tstar import t_star_dds
from densepure.engine.reference import ReferenceSampler, run_chain
from densepure.errors import ConfigError
from densepure.models.classifiers import Classifier, InputRange, Preprocess
from densepure.noise import NoiseKeys, NoisePhase, NoiseStream, gaussian

SCHEDULE = NoiseSchedule("cosine", 4000)


def tiny_classifier(channels=3, classes=4, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, classes))
    return Classifier(net, Preprocess(InputRange.ZERO_ONE), num_classes=classes).eval()


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return torch.rand(3, 32, 32)


def make(improved_tiny, mode, batch_size=64, k=3, b=2, sigma=0.25, seed=7):
    unet, _ = improved_tiny
    dense = mode is Mode.DENSEPURE
    cfg = SmoothingConfig(mode, sigma, k if dense else 1, b if dense else 1, schedule=SCHEDULE)
    return ReferenceSampler(cfg, tiny_classifier(), 4, denoiser=unet, seed=seed, batch_size=batch_size)


@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.slow) if m is Mode.DENSEPURE else m for m in Mode])
def test_labels_do_not_depend_on_batch_size(improved_tiny, image, mode):
    draws = torch.arange(0, 10)
    a = make(improved_tiny, mode, batch_size=64).labels(image, 3, NoisePhase.ESTIMATION, draws)
    b = make(improved_tiny, mode, batch_size=3).labels(image, 3, NoisePhase.ESTIMATION, draws)
    c = make(improved_tiny, mode, batch_size=64).labels(image, 3, NoisePhase.ESTIMATION, draws[5:])
    assert torch.equal(a, b) and torch.equal(a[5:], c)


def test_densepure_equals_reference_chains_and_vote(improved_tiny, image):
    unet, _ = improved_tiny
    base = make(improved_tiny, Mode.DENSEPURE, k=3, b=2, seed=11)
    draws = torch.arange(4)
    got = base.labels(image, 5, NoisePhase.SELECTION, draws)
    delta = base.delta(image, 5, NoisePhase.SELECTION, draws)
    grid = build_reverse_grid(SCHEDULE, t_star(0.25, SCHEDULE), 2)
    expected = []
    for d in range(4):
        chain_labels = []
        for k in range(3):
            keys = NoiseKeys.from_arrays(11, image=5, phase=int(NoisePhase.SELECTION), draw=d, chain=k, step=0,
                                         stream=int(NoiseStream.CHAIN))
            z0 = gaussian(keys, (3, 32, 32), torch.device("cpu"))
            out, _ = run_chain(unet, image[None], delta[d:d + 1], 0.25, grid, [z0, None])
            chain_labels.append(int(base.classifier(out).argmax()))
        expected.append(max(chain_labels, key=chain_labels.count))
    assert got.tolist() == expected


def test_gaussian_mode_is_classifier_on_noisy_input(improved_tiny, image):
    base = make(improved_tiny, Mode.GAUSSIAN)
    draws = torch.arange(6)
    delta = base.delta(image, 0, NoisePhase.ESTIMATION, draws)
    expected = base.classifier(2 * (image + delta) - 1).argmax(1)
    assert torch.equal(base.labels(image, 0, NoisePhase.ESTIMATION, draws), expected)
    assert float(delta.std()) == pytest.approx(0.25, rel=0.1)


def test_onestep_variants_use_their_timesteps(improved_tiny):
    assert make(improved_tiny, Mode.ONESTEP).grid.taus.tolist() == [round(t_star(0.25, SCHEDULE))]
    assert make(improved_tiny, Mode.ONESTEP_DDS).grid.taus.tolist() == [t_star_dds(0.25, SCHEDULE)]


def test_phases_and_images_give_independent_noise(improved_tiny, image):
    base = make(improved_tiny, Mode.GAUSSIAN)
    draws = torch.arange(3)
    d1 = base.delta(image, 0, NoisePhase.SELECTION, draws)
    d2 = base.delta(image, 0, NoisePhase.ESTIMATION, draws)
    d3 = base.delta(image, 1, NoisePhase.SELECTION, draws)
    assert not torch.allclose(d1, d2) and not torch.allclose(d1, d3)


def test_count_sums_to_draws(improved_tiny, image):
    counts = make(improved_tiny, Mode.ONESTEP).count(image, 0, NoisePhase.ESTIMATION, 0, 9)
    assert counts.shape == (4,) and counts.sum() == 9 and counts.dtype == np.int64


def test_config_validation(improved_tiny):
    with pytest.raises(ConfigError, match="sigma must be a finite number > 0"):
        SmoothingConfig(Mode.GAUSSIAN, -0.25)
    with pytest.raises(ConfigError, match="num_chains"):
        SmoothingConfig(Mode.DENSEPURE, 0.25, 0, 2, schedule=SCHEDULE)
    with pytest.raises(ConfigError, match="applies to densepure only"):
        SmoothingConfig(Mode.ONESTEP, 0.25, 4, schedule=SCHEDULE)
    with pytest.raises(ConfigError, match="noise schedule"):
        SmoothingConfig(Mode.ONESTEP, 0.25)
    with pytest.raises(ConfigError, match="needs a diffusion model"):
        ReferenceSampler(SmoothingConfig(Mode.ONESTEP, 0.25, schedule=SCHEDULE), tiny_classifier(), 4)
