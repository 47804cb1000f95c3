"""The embedded digits default: shipped weights, manifest consistency, and the training loss."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from densepure.diffusion import NoiseSchedule, ScheduleKind, TStarRule, build_reverse_grid, start_point, t_star
from densepure.engine.reference import onestep_x0, run_chain
from densepure.hashing import file_sha256
from densepure.models import get_preset, read_state_dict
from densepure.models.checkpoint import load_into
from densepure.models.digits import (
    DIGITS_FLAGS,
    DigitsCNN,
    digits_asset_path,
    digits_manifest,
    load_digits_classifier,
    load_digits_test_split,
    load_digits_unet,
)
from densepure.models.digits_training import (
    TrainingTables,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    normal_kl,
    q_sample,
    vlb_terms,
)
from densepure.models.presets import Dataset, build_unet
from densepure.models.unet import UNetModel
from densepure.models.unet_config import UNetConfig

SCHEDULE = NoiseSchedule(ScheduleKind.COSINE, int(DIGITS_FLAGS["diffusion_steps"]))


@pytest.fixture(scope="module")
def manifest() -> dict:
    return digits_manifest()


@pytest.fixture(scope="module")
def unet() -> UNetModel:
    return load_digits_unet()


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    return load_digits_classifier()


@pytest.fixture(scope="module")
def split() -> tuple[torch.Tensor, torch.Tensor]:
    return load_digits_test_split()


# ------------------------------------------------------------------------------ shipped files
def test_preset_is_registered_lazily_and_points_to_the_shipped_unet():
    preset = get_preset("digits")
    assert preset.dataset is Dataset.DIGITS
    assert preset.image_size == 8 and preset.unet_config.in_channels == 1
    assert digits_asset_path("unet.pt").samefile(preset.checkpoint_file)


def test_shipped_weights_fit_the_architectures_exactly(manifest):
    unet_state = read_state_dict(digits_asset_path("unet.pt"))  # weights_only=True inside
    expected = build_unet(UNetConfig.from_flags(DIGITS_FLAGS), device="meta").state_dict()
    assert set(unet_state) == set(expected)
    assert all(unet_state[k].shape == expected[k].shape for k in expected)
    assert sum(v.numel() for v in unet_state.values()) == manifest["unet"]["param_count"]
    clf_state = torch.load(digits_asset_path("classifier.pt"), map_location="cpu", weights_only=True)
    load_into(DigitsCNN(), clf_state)  # strict: raises on missing/unexpected keys or shapes
    assert file_sha256(digits_asset_path("unet.pt")) == manifest["unet"]["file_sha256"]
    assert file_sha256(digits_asset_path("classifier.pt")) == manifest["classifier"]["file_sha256"]


def test_test_split_matches_the_manifest(split, manifest):
    images, labels = split
    n = manifest["split"]["num_test"]
    assert images.shape == (n, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert sorted(set(labels.tolist())) == list(range(10))
    with np.load(digits_asset_path("test_split.npz")) as data:
        digest = hashlib.sha256(data["pixels"].tobytes() + data["labels"].tobytes()).hexdigest()
    assert digest == manifest["split"]["test_arrays_sha256"]
    assert manifest["split"]["num_train"] + n == manifest["data"]["num_images"] == 1797


@torch.no_grad()
def test_classifier_reproduces_the_recorded_clean_accuracy(classifier, split, manifest):
    images, labels = split
    correct = int((classifier(images).argmax(dim=1) == labels).sum())
    assert correct == manifest["classifier"]["clean_test_correct"]
    assert correct / len(labels) >= 0.95


# ------------------------------------------------------------------------------- the denoiser
@torch.no_grad()
def test_unet_output_is_finite_with_two_channels(unet, split):
    x = 2.0 * split[0][:4] - 1.0
    out = unet(x, torch.full((4,), 300.0))
    assert out.shape == (4, 2, 8, 8) and torch.isfinite(out).all()
    eps, v = unet.eps_and_var(x, torch.full((4,), 300.0))
    assert eps.shape == v.shape == (4, 1, 8, 8)


@torch.no_grad()
@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_one_step_denoising_reduces_the_error(unet, split, sigma):
    x = split[0][:128]
    delta = sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    tau = int(t_star(sigma, SCHEDULE, TStarRule.NEAREST))
    x0 = onestep_x0(unet, start_point(x, delta, sigma), SCHEDULE, tau)
    denoised_mse = float((((x0 + 1) / 2 - x) ** 2).mean())
    noisy_mse = float((delta ** 2).mean())
    assert denoised_mse < 0.4 * noisy_mse  # measured ratios: 0.16 (sigma 0.25), 0.10 (sigma 0.5)


@torch.no_grad()
def test_densepure_chain_output_is_classified_correctly(unet, classifier, split):
    sigma, n = 0.25, 32
    x, y = split[0][:n], split[1][:n]
    gen = torch.Generator().manual_seed(2)
    delta = sigma * torch.randn(x.shape, generator=gen)
    grid = build_reverse_grid(SCHEDULE, t_star(sigma, SCHEDULE), 2)
    out, history = run_chain(unet, x, delta, sigma, grid, [torch.randn(x.shape, generator=gen), None])
    assert out.shape == x.shape and len(history) == 2
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    correct = int((classifier((out + 1) / 2).argmax(dim=1) == y).sum())
    # measured 28/32 for this seed (26..32 over 30 other seeds); the manifest has 0.949 over 4 x 450
    assert correct >= 24


# ------------------------------------------------------------------------------ the loss itself
def test_normal_kl_is_zero_for_identical_and_positive_otherwise():
    mean = torch.linspace(-2, 2, 9, dtype=torch.float64)
    logvar = torch.linspace(-8, 1, 9, dtype=torch.float64)
    assert torch.allclose(normal_kl(mean, logvar, mean, logvar), torch.zeros(9, dtype=torch.float64), atol=1e-15)
    assert (normal_kl(mean, logvar, mean + 0.1, logvar) > 0).all()
    assert (normal_kl(mean, logvar, mean, logvar + 0.1) > 0).all()
    # closed form check: KL(N(0,1) || N(1, e)) = 0.5 (1 - 0 + e^-1 + e^-1 - 1)
    one = torch.ones((), dtype=torch.float64)
    assert math.isclose(float(normal_kl(0 * one, 0 * one, one, one)), math.exp(-1.0), rel_tol=1e-12)


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    bins = torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)
    for mean, log_scale in [(0.0, -1.0), (0.7, -4.0), (-0.99, -6.0), (3.0, -3.0)]:
        logp = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale))
        assert torch.isfinite(logp).all()
        assert math.isclose(float(logp.exp().sum()), 1.0, rel_tol=1e-9)


def _batch(t_values: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand((len(t_values), 1, 8, 8), generator=gen) * 2 - 1
    return x0, torch.tensor(t_values), torch.randn(x0.shape, generator=gen)


def test_vlb_vanishes_for_the_true_noise_and_posterior_variance():
    tables = TrainingTables.from_schedule(SCHEDULE)
    x0, t, noise = _batch([1, 5, 300, 999])
    x_t = q_sample(tables, x0.double(), t, noise.double())
    v_posterior = -torch.ones_like(x0)  # frac = 0: the model's variance is the posterior's
    assert float(vlb_terms(tables, x0, x_t, t, noise, v_posterior).abs().max()) < 1e-9
    assert (vlb_terms(tables, x0, x_t, t, noise, v_posterior + 0.5) > 0).all()


class _Fixed(nn.Module):
    """A "model" whose output is a parameter, to inspect which channels the loss terms train."""

    def __init__(self, batch: int):
        super().__init__()
        self.out = nn.Parameter(0.1 * torch.randn(batch, 2, 8, 8, generator=torch.Generator().manual_seed(4)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.out


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean():
    tables = TrainingTables.from_schedule(SCHEDULE)
    x0, t, noise = _batch([0, 2, 500, 998])
    model = _Fixed(len(t))
    terms = hybrid_loss(model, tables, x0, t, noise)
    assert terms.vlb.dtype == torch.float64 and torch.isfinite(terms.total).all()
    (grad,) = torch.autograd.grad(terms.vlb.sum(), model.out)
    assert float(grad[:, 0].abs().max()) == 0.0  # eps: no gradient from L_vlb
    assert float(grad[:, 1].abs().max()) > 0.0   # v: trained only by L_vlb
    expected = terms.mse + 0.001 * SCHEDULE.num_timesteps * terms.vlb.float()
    assert torch.allclose(terms.total, expected)
