"""Training objective of the shipped digits diffusion model: improved-diffusion's hybrid loss.

Nichol & Dhariwal 2021 ("Improved DDPM"), learned-range variance:

* ``L_simple = ||eps - eps_hat(x_t, t)||^2`` (mean over pixels);
* ``L_t`` (the variational bound's term at t, in bits per dimension): for ``t > 0`` the KL between
  the true posterior ``q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t)`` and the model's
  ``p(x_{t-1} | x_t) = N(mu_theta, Sigma_theta)``, where ``mu_theta`` comes from ``eps_hat`` with its
  gradient *stopped* (only the variance output learns from ``L_t``) and
  ``log Sigma_theta = frac log beta_t + (1 - frac) log beta~_t(clipped)``, ``frac = (v + 1)/2``
  (eq. 15); for ``t = 0`` the decoder NLL ``-log p(x_0 | x_1)`` of the discretized Gaussian with 256
  bins over [-1, 1] (Ho et al. 2020, eq. 13), computed exactly with ``log_ndtr``;
* ``L_hybrid = L_simple + lambda L_vlb`` with ``lambda = 0.001`` and ``L_vlb = T E_t[L_t]``, so the
  per-sample vlb weight is ``lambda T`` (= improved-diffusion's ``vb *= T/1000``).

Every variance-side quantity (posterior tables, KL, likelihood) is computed in float64: the KL's
``exp(logvar1 - logvar2)`` and ``log(beta~_t)`` near t = 0 lose precision in float32. Tensors are
``(B, C, H, W)`` in the model's [-1, 1] space; ``t`` is ``(B,)`` int64 in ``[0, T)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from densepure.diffusion import NoiseSchedule

VLB_WEIGHT = 0.001  # lambda of the hybrid objective


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats (>= 0, = 0 iff equal)."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log P(bin of x)`` under ``N(mean, e^{2 log_scale})`` with 256 bins over [-1, 1].

    The bin of ``x`` is ``[x - 1/255, x + 1/255]``; the outermost bins extend to -inf / +inf (so the
    probabilities of the 256 bins sum to one). ``log(Phi(b) - Phi(a))`` is evaluated as
    ``log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b)))`` (and mirrored in the upper tail), which
    stays finite far into both tails. Inputs are cast to float64.
    """
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_std = torch.exp(-log_scale)
    lower = (x - mean - 1.0 / 255.0) * inv_std
    upper = (x - mean + 1.0 / 255.0) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # use whichever tail is far from 1 to keep the difference accurate
    left = log_cdf_upper + torch.log(-torch.expm1(torch.special.log_ndtr(lower) - log_cdf_upper).clamp(max=-1e-300))
    right = log_sf_lower + torch.log(-torch.expm1(torch.special.log_ndtr(-upper) - log_sf_lower).clamp(max=-1e-300))
    middle = torch.where(lower > 0, right, left)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, middle))


@dataclass(frozen=True, eq=False)
class TrainingTables:
    """Per-timestep float64 tables of the *full* discrete schedule (``(T,)`` tensors)."""

    num_timesteps: int
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    log_betas: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    model_time_scale: float

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule, device: torch.device | str = "cpu") -> "TrainingTables":
        betas = schedule.betas
        abar = schedule.alphas_cumprod
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # post_var[0] = 0: like improved-diffusion, log-variance at t = 0 takes the t = 1 value
        clipped = np.concatenate([[post_var[1]], post_var[1:]])

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)

        return cls(
            num_timesteps=int(schedule.num_timesteps),
            sqrt_alphas_cumprod=put(np.sqrt(abar)),
            sqrt_one_minus_alphas_cumprod=put(np.sqrt(1.0 - abar)),
            sqrt_recip_alphas_cumprod=put(np.sqrt(1.0 / abar)),
            sqrt_recipm1_alphas_cumprod=put(np.sqrt(1.0 / abar - 1.0)),
            log_betas=put(np.log(betas)),
            posterior_log_variance_clipped=put(np.log(clipped)),
            posterior_mean_coef1=put(betas * np.sqrt(abar_prev) / (1.0 - abar)),
            posterior_mean_coef2=put((1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)),
            model_time_scale=float(schedule.model_time_scale),
        )

    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table ``name`` gathered at ``t`` and shaped ``(B, 1, 1, 1)`` for broadcasting against ``like``."""
        return getattr(self, name)[t].reshape((-1,) + (1,) * (like.dim() - 1))


def q_sample(tables: TrainingTables, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward sample ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` in ``x0.dtype``."""
    a = tables.at("sqrt_alphas_cumprod", t, x0).to(x0.dtype)
    s = tables.at("sqrt_one_minus_alphas_cumprod", t, x0).to(x0.dtype)
    return a * x0 + s * noise


def vlb_terms(tables: TrainingTables, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              eps: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 ``L_t`` in bits per dimension (KL for t > 0, decoder NLL for t = 0).

    Gradients flow only through ``v``; pass ``eps`` detached to reproduce the stop-gradient.
    """
    x0d, xtd, epsd, vd = x0.double(), x_t.double(), eps.double(), v.double()
    true_mean = tables.at("posterior_mean_coef1", t, x0d) * x0d + tables.at("posterior_mean_coef2", t, x0d) * xtd
    true_logvar = tables.at("posterior_log_variance_clipped", t, x0d)
    pred_x0 = tables.at("sqrt_recip_alphas_cumprod", t, x0d) * xtd - tables.at("sqrt_recipm1_alphas_cumprod", t, x0d) * epsd
    model_mean = tables.at("posterior_mean_coef1", t, x0d) * pred_x0 + tables.at("posterior_mean_coef2", t, x0d) * xtd
    frac = (vd + 1.0) / 2.0
    model_logvar = frac * tables.at("log_betas", t, x0d) + (1.0 - frac) * true_logvar
    kl = normal_kl(true_mean, true_logvar.expand_as(model_logvar), model_mean, model_logvar)
    nll = -discretized_gaussian_log_likelihood(x0d, model_mean, 0.5 * model_logvar)
    at_zero = (t == 0).reshape((-1,) + (1,) * (kl.dim() - 1))
    per_pixel = torch.where(at_zero, nll, kl)
    return per_pixel.flatten(1).mean(dim=1) / math.log(2.0)


@dataclass(frozen=True)
class LossTerms:
    """``(B,)`` per-sample terms; ``total`` is what is averaged and differentiated."""

    mse: torch.Tensor
    vlb: torch.Tensor
    total: torch.Tensor


def hybrid_loss(model: nn.Module, tables: TrainingTables, x0: torch.Tensor, t: torch.Tensor,
                noise: torch.Tensor) -> LossTerms:
    """``L_simple + lambda T L_t`` for a learn_sigma UNet (output ``[eps_hat, v]``, ``2C`` channels)."""
    x_t = q_sample(tables, x0, t, noise)
    t_model = t.to(torch.float32) * tables.model_time_scale
    out = model(x_t, t_model).float()
    c = x0.shape[1]
    eps, v = out[:, :c], out[:, c:]
    mse = (eps - noise).square().flatten(1).mean(dim=1)
    vlb = vlb_terms(tables, x0, x_t, t, eps.detach(), v)
    total = mse + (VLB_WEIGHT * tables.num_timesteps) * vlb.to(mse.dtype)
    return LossTerms(mse=mse, vlb=vlb, total=total)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay target + (1 - decay) source`` for parameters; buffers are copied."""
    for pt, ps in zip(target.parameters(), source.parameters(), strict=True):
        pt.lerp_(ps, 1.0 - decay)
    for bt, bs in zip(target.buffers(), source.buffers(), strict=True):
        bt.copy_(bs)
