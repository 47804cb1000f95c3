"""Voracek and Hein's point (ICLR 2023), reproduced small: a base classifier that reads how x + delta rounds
in float32 gets a false certificate under the float noise, and none under the sound noise.

The classifier. Gaussian smoothing feeds it y = fl(2 fl(x + delta) - 1); for y in [0, 1) that is exact,
so it reads z = fl(x + delta) in [0.5, 1) bit for bit (z * 2^24 is an integer). It votes A (class 0) when
at least 3/4 of those z are even multiples of 2^-24, B (class 1) otherwise.

Why float noise fools it. With x = 1/4 + 2^-25 in every coordinate (a float32 just above 1/4) and a
float32 delta >= 1/2 (a multiple of 2^-24), x + delta lies exactly halfway between two floats, and
round-half-to-even makes z even; finer deltas tie often too. So 87% of the z are even at x (A, every
draw: a certificate of radius 1.5 at sigma = 1) and 63% at x' = 1/4, 2e-6 away (B, every draw). With
real Gaussian noise ties have probability 0 and about half of the z are even: the smoothed classifier
is B at x itself. The certificate is false: an adversarial example 2e-6 from x, inside radius 1.5.

Why sound noise does not. The model input is a function of the grid index x_int + j alone, so the
classifier is h = F o round_q under exact Gaussian noise, and Cohen's theorem holds for h: the point x is
refused (it is not on the grid), the grid point's certificate agrees with h's smoothed label at the grid
point and at points near it, estimated here with float64 Gaussian noise rounded to the grid (the real
smoothed classifier of h, independently of densepure's sampler).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from densepure.diffusion import Mode, NoiseKind, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.engine.policy import FixedPolicy
from densepure.errors import InputError
from densepure.models.classifiers import Classifier, Preprocess
from densepure.noise import NoisePhase
from densepure.stats.cohen import certify_from_counts, predict_from_counts

SHAPE, SIGMA, ALPHA, LEVELS = (1, 64, 64), 1.0, 0.001, 255
N0, N = 10, 100
X_TIES = 0.25 + 2.0**-25  # a float32: x + delta ties for every float32 delta >= 1/2
X_NEAR = 0.25


class RoundingReader(nn.Module):
    """Class 0 when >= 3/4 of the z = (y + 1) / 2 in [0.5, 1) are even multiples of 2^-24, else class 1."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: Preprocess's (y + 1) / 2, exact for y in [0, 1)
        inside = (z >= 0.5) & (z < 1.0)
        even = inside & (torch.remainder(z * 2.0**24, 2.0) == 0)
        share = even.flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)
        return torch.stack([share - 0.75, 0.75 - share], dim=1)


def engine(noise: NoiseKind) -> Engine:
    smoothing = SmoothingConfig(Mode.GAUSSIAN, SIGMA, noise=noise, levels=LEVELS)
    classifier = TorchClassifier(Classifier(RoundingReader(), Preprocess()).eval(), 2, SHAPE)
    return Engine(smoothing, Backends(None, classifier), SHAPE, "cpu",
                  EngineConfig(unet_rows=64, classifier_rows=64, draw_capacity=128, image_slots=2))


def counts(eng: Engine, x: float | torch.Tensor, phases: dict, seed: int = 7) -> dict:
    image = torch.full(SHAPE, x, dtype=torch.float32) if isinstance(x, float) else x
    (done,) = list(eng.run([ImageRequest(0, image, FixedPolicy(2, phases), seed)]))
    return done.policy.counts


def real_smoothing_labels(x: torch.Tensor, draws: int, grid: bool, seed: int) -> np.ndarray:
    """Labels of the base classifier under float64 Gaussian noise (the real smoothed classifier, up to
    float64 rounding): grid=True, h = F o round_q as the sound mode defines it; grid=False, F of the
    float32 rounding of the real sum x + delta."""
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn((draws, *SHAPE), generator=gen, dtype=torch.float64) * SIGMA
    if grid:
        index = torch.round((x.double() + delta) * LEVELS).to(torch.float32)
        y = 2.0 * (index * (1.0 / LEVELS)) - 1.0  # the sound start's arithmetic (GAUSSIAN: scale 1)
    else:
        y = 2.0 * (x.double() + delta).to(torch.float32) - 1.0
    model = Classifier(RoundingReader(), Preprocess()).eval()
    with torch.no_grad():
        return model(y).argmax(dim=1).numpy()


def test_float_noise_certifies_a_point_with_an_adversarial_example_inside_the_radius():
    eng = engine(NoiseKind.FLOAT)
    at_x = counts(eng, X_TIES, {NoisePhase.SELECTION: N0, NoisePhase.ESTIMATION: N})
    cert = certify_from_counts(at_x[NoisePhase.SELECTION], at_x[NoisePhase.ESTIMATION], SIGMA, ALPHA)
    assert cert.label == 0 and cert.radius > 1.4  # every draw votes A: radius sigma Phi^-1(alpha^(1/N))
    near = counts(eng, X_NEAR, {NoisePhase.PREDICT: N})[NoisePhase.PREDICT]
    distance = float(torch.linalg.vector_norm(torch.full(SHAPE, X_TIES) - torch.full(SHAPE, X_NEAR)))
    assert distance < 2e-6 < cert.radius
    assert predict_from_counts(near, ALPHA).label == 1  # the smoothed classifier says B inside the radius
    real = real_smoothing_labels(torch.full(SHAPE, X_TIES), 200, grid=False, seed=1)
    assert (real == 1).all()  # and under real Gaussian noise it says B at the certified point itself


def test_sound_noise_refuses_the_point_and_certifies_the_grid_point_correctly():
    eng = engine(NoiseKind.SOUND)
    with pytest.raises(InputError, match="not on the grid k/255"):
        counts(eng, X_TIES, {NoisePhase.PREDICT: 2})
    grid_point = torch.full(SHAPE, round(X_TIES * LEVELS) / LEVELS)
    at_x = counts(eng, grid_point, {NoisePhase.SELECTION: N0, NoisePhase.ESTIMATION: 400})
    cert = certify_from_counts(at_x[NoisePhase.SELECTION], at_x[NoisePhase.ESTIMATION], SIGMA, ALPHA)
    assert cert.label == 1 and cert.radius > 2.0  # (an abstention would be correct too; this seed gives B)
    # h's real smoothed label at the grid point and at points within the radius (1/4 and 1/4 + 2^-25:
    # 0.06 and 0.06 - 2e-6 away) is the certified one; the sampler's hit rate is h's
    for x, seed in ((grid_point, 2), (torch.full(SHAPE, X_TIES), 3), (torch.full(SHAPE, X_NEAR), 4)):
        assert float(torch.linalg.vector_norm(x - grid_point)) < cert.radius
        labels = real_smoothing_labels(x, 400, grid=True, seed=seed)
        hits = int((labels == cert.label).sum())
        assert stats.binomtest(hits, 400, 0.5, alternative="greater").pvalue < 1e-6, (x.flatten()[0], hits)
    real_rate = float((real_smoothing_labels(grid_point, 400, grid=True, seed=5) == cert.label).mean())
    sampled_rate = cert.n_a / cert.n
    assert abs(real_rate - sampled_rate) < 0.08
