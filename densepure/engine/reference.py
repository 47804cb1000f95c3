"""The plain reference path, beside the engine it checks: one chain at a time, no sharing, no early exit.

:func:`run_chain` and :func:`onestep_x0` are DensePure's purification (ALGORITHM §3-§5) written out
plainly (the golden tests compare them with the official implementations); :class:`ReferenceSampler`
is the base classifier built on them, whose label counts the engine must reproduce exactly for the same
noise identities. ``denoiser`` is anything with ``eps_and_var(x, t_model)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from densepure.diffusion import (
    GridTables,
    Mode,
    NoiseSchedule,
    ReverseGrid,
    SmoothingConfig,
    dds_forward_sample,
    model_time_tensor,
    noisy_input,
    predict_x0_at,
    reverse_step,
    start_point,
    start_scale,
)
from densepure.engine.backends.base import Denoiser, LogitsModel
from densepure.engine.vote import majority_vote
from densepure.errors import ConfigError
from densepure.noise import NoiseKeys, NoisePhase, NoiseStream, gaussian, sound_steps, sound_table
from densepure.noise.sound import grid_indices


@torch.no_grad()
def run_chain(
    denoiser: Denoiser,
    x: torch.Tensor,
    delta: torch.Tensor,
    sigma: float,
    grid: ReverseGrid,
    noises: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run one reverse chain per row of ``x`` from the start ``sqrt(a)(2(x+delta)-1)``.

    ``noises[i]`` is the standard-normal ``z`` of step i (``(B,C,H,W)``; the last may be None).
    Returns the purified ``x0`` in [-1, 1] and the per-step ``x0_hat`` list.
    """
    tables = GridTables(grid, x.device)
    y = start_point(x, delta, sigma)
    history = []
    for i in range(grid.num_steps):
        c = tables.gather(torch.full((x.shape[0],), i, dtype=torch.long, device=x.device))
        eps, v = denoiser.eps_and_var(y, c.model_time)
        y, x0 = reverse_step(y, eps, v, c, noises[i] if grid.has_noise[i] else None)
        history.append(x0)
    return y, history


@torch.no_grad()
def onestep_x0(denoiser: Denoiser, y: torch.Tensor, schedule: NoiseSchedule, tau: int) -> torch.Tensor:
    """One-step denoising: clipped ``x0_hat`` of ``y`` read as a forward sample at discrete ``tau``."""
    eps, _ = denoiser.eps_and_var(y, model_time_tensor(schedule, tau, y.shape[0], y.device))
    return predict_x0_at(y, eps, float(schedule.alphas_cumprod[int(tau)]))


class ReferenceSampler:
    """The plain path: ``count(x, image, phase, start, stop)``, every chain run in full, one batch of
    draws at a time, no shared first step and no early exit: the obviously-correct version of the
    engine's base classifier, which the engine must reproduce count for count.

    ``smoothing`` says what is sampled (its ``sigma`` and grid, as the engine derives them);
    ``classifier`` offers ``logits(x)`` for ``(B,C,H,W)`` images in [-1,1] and ``denoiser``
    ``eps_and_var(x, t_model)`` (the seam of :mod:`densepure.engine.backends.base`). Noise is keyed by ``(seed, image, phase, draw, chain, step, stream)``
    (:mod:`densepure.noise`), so the labels of a draw do not depend on ``batch_size`` (rows per model
    call) or on which draws share a batch.
    """

    def __init__(self, smoothing: SmoothingConfig, classifier: LogitsModel, num_classes: int, *,
                 denoiser: Denoiser | None = None, seed: int = 0, device: torch.device | str = "cpu",
                 batch_size: int = 256):
        if smoothing.needs_denoiser and denoiser is None:
            raise ConfigError(f"mode {smoothing.mode.value} needs a diffusion model (a denoiser)")
        if batch_size < smoothing.chains:
            raise ConfigError(f"batch_size must be >= K={smoothing.chains}, got {batch_size}")
        self.smoothing, self.classifier, self.denoiser = smoothing, classifier, denoiser
        self.num_classes, self.seed, self.device = int(num_classes), int(seed), torch.device(device)
        self.batch_size = int(batch_size)
        self.grid = smoothing.grid()
        self.tables = GridTables(self.grid, self.device) if smoothing.mode is Mode.DENSEPURE else None

    def _keys(self, image: int, phase: NoisePhase, draws: torch.Tensor, chains: torch.Tensor | int,
              step: int, stream: NoiseStream) -> NoiseKeys:
        return NoiseKeys.from_arrays(self.seed, image=image, phase=int(phase), draw=draws, chain=chains,
                                     step=step, stream=int(stream))

    def _normal(self, keys: NoiseKeys, shape: tuple[int, ...]) -> torch.Tensor:
        return gaussian(keys, shape, self.device)

    def delta(self, x: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        """Smoothing noise ``sigma * N(0, I)`` for each draw, ``(D, C, H, W)``."""
        keys = self._keys(image, phase, draws, 0, 0, NoiseStream.DELTA)
        return self.smoothing.sigma * self._normal(keys, tuple(x.shape))

    @torch.no_grad()
    def labels(self, x: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        """Labels ``(D,)`` int64 of the base classifier on draws ``draws`` (1-D int64) of image ``x`` ``(C,H,W)``."""
        per_call = max(1, self.batch_size // self.smoothing.chains)
        parts = [self._labels_chunk(x.to(self.device), image, phase, draws[i:i + per_call])
                 for i in range(0, len(draws), per_call)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=self.device)

    def sound_input(self, x: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        """Sound noise: the model input ``scale (2 (x_int + j) / levels - 1)`` of each draw, ``(D, C, H, W)``:
        ``j`` integer grid steps (:mod:`densepure.noise.sound`), ``scale`` ``sqrt(a)`` (DensePure and
        one-step starts), ``sqrt(abar)`` (the DDS start) or none (Gaussian smoothing's classifier input)."""
        s = self.smoothing
        stream = NoiseStream.FORWARD if s.mode is Mode.ONESTEP_DDS else NoiseStream.DELTA
        steps = sound_steps(self._keys(image, phase, draws, 0, 0, stream), tuple(x.shape),
                            sound_table(s.levels, s.noise_sigma()), self.device)
        y = 2.0 * ((grid_indices(x, s.levels).to(self.device) + steps.to(torch.float32)) * (1.0 / s.levels)) - 1.0
        if s.mode is Mode.GAUSSIAN:
            return y
        scale = float(self.grid.alphas_cumprod[0]) if s.mode is Mode.ONESTEP_DDS else start_scale(s.sigma)
        return math.sqrt(scale) * y

    def _labels_chunk(self, x: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        mode, shape = self.smoothing.mode, tuple(x.shape)
        if self.smoothing.sound:
            y = self.sound_input(x, image, phase, draws)
            if mode is Mode.GAUSSIAN:
                return self.classifier(y).argmax(dim=1)
            return self._onestep(y) if mode is not Mode.DENSEPURE else self._densepure(y, image, phase, draws)
        xs = x.unsqueeze(0).expand(len(draws), *shape)
        if mode is Mode.ONESTEP_DDS:
            eps = self._normal(self._keys(image, phase, draws, 0, 0, NoiseStream.FORWARD), shape)
            abar = float(self.grid.alphas_cumprod[0])
            return self._onestep(dds_forward_sample(xs, eps, abar))
        delta = self.delta(x, image, phase, draws)
        if mode is Mode.GAUSSIAN:
            return self.classifier.logits(noisy_input(xs, delta)).argmax(dim=1)
        y = start_point(xs, delta, self.smoothing.sigma)
        if mode is Mode.ONESTEP:
            return self._onestep(y)
        return self._densepure(y, image, phase, draws)

    def _onestep(self, y: torch.Tensor) -> torch.Tensor:
        """The clipped ``x0_hat`` of ``y`` read as a forward sample at the grid's one timestep."""
        tau = int(self.grid.taus[0])
        return self.classifier.logits(onestep_x0(self.denoiser, y, self.smoothing.schedule, tau)).argmax(dim=1)

    def _densepure(self, y: torch.Tensor, image: int, phase: NoisePhase, draws: torch.Tensor) -> torch.Tensor:
        k, d = self.smoothing.chains, len(draws)
        y = y.repeat_interleave(k, dim=0)  # rows: draw-major, chain-minor
        row_draws = draws.repeat_interleave(k)
        row_chains = torch.arange(k, dtype=torch.int64).repeat(d)
        for i in range(self.grid.num_steps):
            c = self.tables.gather(torch.full((y.shape[0],), i, dtype=torch.int64, device=self.device))
            eps, v = self.denoiser.eps_and_var(y, c.model_time)
            z = None
            if self.grid.has_noise[i]:
                keys = self._keys(image, phase, row_draws, row_chains, i, NoiseStream.CHAIN)
                z = self._normal(keys, tuple(y.shape[1:]))
            y, _ = reverse_step(y, eps, v, c, z)
        chain_labels = self.classifier.logits(y).argmax(dim=1).reshape(d, k)
        return majority_vote(chain_labels, self.num_classes)

    def count(self, x: torch.Tensor, image: int, phase: NoisePhase, start: int, stop: int) -> np.ndarray:
        """Label counts ``(num_classes,)`` int64 over draws ``start..stop-1``."""
        draws = torch.arange(start, stop, dtype=torch.int64)
        labels = self.labels(x, image, phase, draws).cpu()
        return np.bincount(labels.numpy(), minlength=self.num_classes).astype(np.int64)
