"""Exactness: engine counts equal the plain path's (no sharing, no early exit, one image at a time)."""

import numpy as np
import pytest
import torch
from torch import nn

from densepure.certify.base import BaseClassifier, Mode, SmoothingConfig
from densepure.certify.procedures import certify_sequential
from densepure.certify.sequential import SequentialPlan
from densepure.diffusion import NoiseSchedule
from densepure.engine.backends import TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig
from densepure.engine.policy import FixedPolicy, SequentialPolicy
from densepure.noise import NoisePhase
from densepure.models import UNetConfig, UNetModel
from densepure.models.classifiers import Classifier, Preprocess

SCHEDULE = NoiseSchedule("cosine", 4000)
CLASSES = 3


class PatchSign(nn.Module):
    """Labels that depend on the noise: argmax of random projections of 2x2 patch means."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(CLASSES, 3 * 4 * 4, generator=g), requires_grad=False)

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 2).flatten(1) @ self.w.T


def micro_unet():
    """An 8x8 UNet of the official family with random (non-zero) weights: fast on CPU."""
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_heads=2)
    model = UNetModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def parts():
    clf = Classifier(PatchSign(), Preprocess()).eval()
    torch.manual_seed(2)
    return micro_unet(), clf, torch.rand(3, 3, 8, 8) * 0.2 + 0.4


def plain(unet, clf, mode, k, b, seed=6):
    cfg = SmoothingConfig(mode, 0.5, k if mode is Mode.DENSEPURE else 1, b)
    return BaseClassifier(cfg, clf, CLASSES, denoiser=unet, schedule=SCHEDULE, seed=seed, batch_size=8)


def engine(unet, clf, mode, k, b, early=True, seed=6, prefixes=(), **cfg):
    config = EngineConfig(**{"unet_rows": 19, "classifier_rows": 11, "draw_capacity": 5, "image_slots": 2,
                             "early_exit": early, **cfg})
    return Engine(mode=mode.value, sigma=0.5, chains=k, steps=b, num_classes=CLASSES,
                  classifier=TorchClassifier(clf, CLASSES), denoiser=TorchDenoiser(unet), schedule=SCHEDULE,
                  seed=seed, image_shape=(3, 8, 8), device=torch.device("cpu"), config=config,
                  chain_prefixes=prefixes)


@pytest.mark.parametrize("mode,k,b", [(Mode.DENSEPURE, 5, 2), (Mode.DENSEPURE, 3, 3), (Mode.DENSEPURE, 4, 1),
                                      (Mode.ONESTEP, 1, 1), (Mode.ONESTEP_DDS, 1, 1), (Mode.GAUSSIAN, 1, 1)])
def test_fixed_n_counts_equal_plain_path(parts, mode, k, b):
    unet, clf, images = parts
    n0, n = 6, 24
    ref = plain(unet, clf, mode, k, b)
    expected = {i: (ref.count(images[i], i, NoisePhase.SELECTION, 0, n0),
                    ref.count(images[i], i, NoisePhase.ESTIMATION, 0, n)) for i in range(3)}
    assert sum(int(np.count_nonzero(e[1])) for e in expected.values()) >= 4, "labels must vary for a real test"
    for early in (True, False):
        eng = engine(unet, clf, mode, k, b, early)
        jobs = ((i, images[i], FixedPolicy(CLASSES, {NoisePhase.SELECTION: n0, NoisePhase.ESTIMATION: n}))
                for i in range(3))
        got = dict(eng.run(jobs))
        for i in range(3):
            assert np.array_equal(got[i].counts[NoisePhase.SELECTION], expected[i][0])
            assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], expected[i][1])
        if mode is Mode.DENSEPURE and b >= 2:
            naive = 3 * (n0 + n) * k * b
            assert eng.stats.unet_rows <= 3 * (n0 + n) * (1 + k * (b - 1)) < naive


def test_sequential_engine_equals_plain_sequential(parts):
    unet, clf, images = parts
    plan = SequentialPlan.geometric(0.1, 0.5, 0.1, n_max=40)
    ref = plain(unet, clf, Mode.ONESTEP, 1, 1)
    expected = [certify_sequential(ref, images[i], i, 4, plan) for i in range(3)]
    got = dict(engine(unet, clf, Mode.ONESTEP, 1, 1).run(
        (i, images[i], SequentialPolicy(CLASSES, 4, plan)) for i in range(3)))
    for i in range(3):
        assert got[i].result == expected[i].result
        assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], expected[i].counts_estimation)


@pytest.mark.parametrize("k,b,prefixes", [(5, 2, (1, 3)), (4, 3, (1, 2, 3))])
def test_chain_prefix_counts_equal_separate_runs(parts, k, b, prefixes):
    """One K-chain run's prefix counts equal separate k-chain runs (plain path) with the same seed."""
    unet, clf, images = parts
    n0, n = 5, 20
    phases = {NoisePhase.SELECTION: n0, NoisePhase.ESTIMATION: n}
    eng = engine(unet, clf, Mode.DENSEPURE, k, b, prefixes=prefixes)
    got = dict(eng.run((i, images[i], FixedPolicy(CLASSES, phases)) for i in range(3)))
    varied = 0
    for kp in prefixes:
        ref = plain(unet, clf, Mode.DENSEPURE, kp, b)
        for i in range(3):
            for phase, size in phases.items():
                expected = ref.count(images[i], i, phase, 0, size)
                assert np.array_equal(got[i].prefix_counts[kp][phase], expected), (kp, i, phase)
                varied += int(np.count_nonzero(expected) > 1)
    assert varied >= 2, "labels must vary for a real test"
    for i in range(3):  # the K-chain counts are unchanged by tracking prefixes
        ref = plain(unet, clf, Mode.DENSEPURE, k, b)
        assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], ref.count(images[i], i, NoisePhase.ESTIMATION, 0, n))


@pytest.mark.parametrize("prefixes,early", [((0,), True), ((4,), True), ((6,), False), ((2,), True)])
def test_chain_prefixes_validated(parts, prefixes, early):
    from densepure.errors import ConfigError

    unet, clf, _ = parts
    if prefixes == (2,):
        engine(unet, clf, Mode.DENSEPURE, 5, 2, early, prefixes=prefixes)  # 2 <= 5 // 2 + 1: first wave
    else:
        with pytest.raises(ConfigError, match="chain prefixes"):
            engine(unet, clf, Mode.DENSEPURE, 5, 2, early, prefixes=prefixes)
