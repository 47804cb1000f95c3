"""The randomized base classifiers ``f`` whose smoothed version is certified (ALGORITHM §2).

* ``GAUSSIAN`` (Cohen et al.): ``argmax C(x + delta)``.
* ``ONESTEP`` (Carlini et al., DensePure's variant): the clipped ``x0_hat`` at ``round(t*)`` of the
  start ``sqrt(a)(2(x+delta)-1)``, with exact ``sigma``.
* ``ONESTEP_DDS`` (the official DDS code): noise drawn inside the forward process at ``t_dds``;
  its effective noise is >= sigma, so certificates computed with sigma stay valid (conservative).
* ``DENSEPURE``: K reverse chains of b steps from the same start, majority-voted.

This module is the plain path: every chain is run in full, one batch of draws at a time. All noise
comes from :mod:`densepure.noise`, keyed by ``(seed, image, phase, draw, chain, step,
stream)``, so the labels of a draw do not depend on the batch size or on which draws share a batch;
the optimised engine must reproduce exactly these labels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from densepure.certify.vote import majority_vote
from densepure.diffusion import (
    GridTables,
    NoiseSchedule,
    TStarRule,
    build_reverse_grid,
    dds_forward_sample,
    model_time_tensor,
    predict_x0_at,
    reverse_step,
    start_point,
    t_star,
    validate_sigma,
)
from densepure.diffusion.tstar import t_star_dds
from densepure.engine.reference import Denoiser
from densepure.noise import NoiseKeys, NoisePhase, NoiseStream, gaussian
from densepure.errors import ConfigError


class Mode(enum.Enum):
    GAUSSIAN = "gaussian"
    ONESTEP = "onestep"
    ONESTEP_DDS = "onestep-dds"
    DENSEPURE = "densepure"


@dataclass(frozen=True)
class SmoothingConfig:
    """What the base classifier does. ``num_chains`` (K) and ``steps`` (b) matter for DENSEPURE only."""

    mode: Mode
    sigma: float
    num_chains: int = 1
    steps: int = 2
    t_star_rule: TStarRule = TStarRule.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "sigma", validate_sigma(self.sigma))
        object.__setattr__(self, "t_star_rule", TStarRule(self.t_star_rule))
        for name in ("num_chains", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.mode is not Mode.DENSEPURE and (self.num_chains != 1):
            raise ConfigError(f"num_chains (K) applies to densepure only; got K={self.num_chains} with {self.mode.value}")

    @property
    def needs_denoiser(self) -> bool:
        return self.mode is not Mode.GAUSSIAN

    @property
    def rows_per_draw(self) -> int:
        return self.num_chains if self.mode is Mode.DENSEPURE else 1


class BaseClassifier:
    """``labels(x, image, phase, draws)``: the base classifier's label for each requested draw.

    ``classifier`` maps ``(B,C,H,W)`` images in [-1,1] to logits; ``denoiser`` offers
    ``eps_and_var(x, t_model)``. ``batch_size`` bounds the rows (draws x chains) per model call.
    """

    def __init__(self, config: SmoothingConfig, classifier: torch.nn.Module, num_classes: int, *,
                 denoiser: Denoiser | None = None, schedule: NoiseSchedule | None = None,
                 seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256):
        if config.needs_denoiser and (denoiser is None or schedule is None):
            raise ConfigError(f"mode {config.mode.value} needs a diffusion model (denoiser and schedule)")
        if batch_size < config.rows_per_draw:
            raise ConfigError(f"batch_size must be >= K={config.rows_per_draw}, got {batch_size}")
        self.config, self.classifier, self.denoiser, self.schedule = config, classifier, denoiser, schedule
        self.num_classes, self.seed, self.device = int(num_classes), int(seed), torch.device(device)
        self.batch_size = int(batch_size)
        self.tau: int | None = None
        self.tables: GridTables | None = None
        if config.mode in (Mode.ONESTEP, Mode.DENSEPURE):
            ts = t_star(config.sigma, schedule, config.t_star_rule)
            if config.mode is Mode.ONESTEP:
                self.tau = int(round(ts))
            else:
                self.tables = GridTables(build_reverse_grid(schedule, ts, config.steps), self.device)
        elif config.mode is Mode.ONESTEP_DDS:
            self.tau = t_star_dds(config.sigma, schedule)

    def _keys(self, image: int, phase: NoisePhase, draws: torch.Tensor, chains: torch.Tensor | int,
              step: int, stream: NoiseStream) -> NoiseKeys:
        return NoiseKeys.from_arrays(self.seed, image=image, phase=int(phase), draw=draws, chain=chains,
                                     step=step, stream=int(stream))

    def delta(self, x: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        """Smoothing noise ``sigma * N(0, I)`` for each draw, ``(D, C, H, W)``."""
        keys = self._keys(image, phase, draws, 0, 0, NoiseStream.DELTA)
        return self.config.sigma * gaussian(keys, tuple(x.shape), self.device)

    @torch.no_grad()
    def labels(self, x: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        """Labels ``(D,)`` int64 of the base classifier on draws ``draws`` (1-D int64) of image ``x`` ``(C,H,W)``."""
        per_call = max(1, self.batch_size // self.config.rows_per_draw)
        parts = [self._labels_chunk(x.to(self.device), image, phase, draws[i:i + per_call])
                 for i in range(0, len(draws), per_call)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=self.device)

    def _labels_chunk(self, x: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        mode, d = self.config.mode, len(draws)
        xs = x.unsqueeze(0).expand(d, *x.shape)
        if mode is Mode.ONESTEP_DDS:
            abar = float(self.schedule.alphas_cumprod[self.tau])
            eps = gaussian(self._keys(image, phase, draws, 0, 0, NoiseStream.FORWARD), tuple(x.shape), self.device)
            return self._onestep(dds_forward_sample(xs, eps, abar), abar)
        delta = self.delta(x, image, phase, draws)
        if mode is Mode.GAUSSIAN:
            return self.classifier(2.0 * (xs + delta) - 1.0).argmax(dim=1)
        y = start_point(xs, delta, self.config.sigma)
        if mode is Mode.ONESTEP:
            return self._onestep(y, float(self.schedule.alphas_cumprod[self.tau]))
        return self._densepure(y, image, phase, draws)

    def _onestep(self, y: torch.Tensor, abar: float) -> torch.Tensor:
        t_model = model_time_tensor(self.schedule, self.tau, y.shape[0], y.device)
        eps, _ = self.denoiser.eps_and_var(y, t_model)
        return self.classifier(predict_x0_at(y, eps, abar)).argmax(dim=1)

    def _densepure(self, y: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        k, d = self.config.num_chains, len(draws)
        y = y.repeat_interleave(k, dim=0)  # rows: draw-major, chain-minor
        row_draws = draws.repeat_interleave(k)
        row_chains = torch.arange(k, dtype=torch.int64).repeat(d)
        for i in range(self.config.steps):
            c = self.tables.gather(torch.full((y.shape[0],), i, dtype=torch.int64, device=self.device))
            eps, v = self.denoiser.eps_and_var(y, c.model_time)
            z = None
            if self.tables.grid.has_noise[i]:
                keys = self._keys(image, phase, row_draws, row_chains, i, NoiseStream.CHAIN)
                z = gaussian(keys, tuple(y.shape[1:]), self.device)
            y, _ = reverse_step(y, eps, v, c, z)
        chain_labels = self.classifier(y).argmax(dim=1).reshape(d, k)
        return majority_vote(chain_labels, self.num_classes)

    def count(self, x: torch.Tensor, image: int, phase: NoisePhase, start: int, stop: int) -> np.ndarray:
        """Label counts ``(num_classes,)`` int64 over draws ``start..stop-1``."""
        draws = torch.arange(start, stop, dtype=torch.int64)
        labels = self.labels(x, image, phase, draws).cpu()
        return np.bincount(labels.numpy(), minlength=self.num_classes).astype(np.int64)
