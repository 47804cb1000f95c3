"""The official DensePure loop, re-implemented faithfully as the baseline of ``bench throughput --baseline official``.

What the published code does for one image (Xiao et al. 2023, DensePure, their ``certify``): K complete
certification passes, one per reverse seed; each pass draws ``n0`` selection and then ``n`` estimation
noises in batches of ``batch`` (100 for CIFAR-10, 16 for ImageNet), and for each batch adds the noise,
scales into the diffusion model's space at t*, runs the b reverse steps of the coarse grid on the whole
batch (fresh noise between steps), and classifies x0_hat once. Each draw's label is the majority over
its K passes; Cohen's CERTIFY then runs on the voted labels. Fp32, eager, no sharing between passes
(``precision``: the models in another precision, computing with its float32 math: fp32 is exact float32,
as published, also on a GPU whose PyTorch default would run convolutions in TF32).

So per image it runs exactly ``K * b * (n0 + n)`` UNet rows and ``K * (n0 + n)`` classifier rows (what
``benchmarks/evals.py`` compares the engine with); :class:`OfficialCounts` counts them as they run.
The order of the passes (here: every pass of an image, then the next image) changes no count and no
cost. As in the published code, the smoothing noise of draw d is the same in every pass (its generator
is seeded by (seed, image) alone) and only the reverse process's noise depends on the pass (seeded by
(seed, image, pass)): the vote is over K reverse chains of one noisy image. Torch generators, not the
engine's keyed noise, so the two sides' certificates agree in distribution, not draw for draw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from densepure.diffusion import GridTables, Mode, SmoothingConfig, start_scale, step_mean_std
from densepure.errors import ConfigError
from densepure.precision import Precision, float32_math
from densepure.stats.cohen import Certificate, certify_from_counts


@dataclass
class OfficialCounts:
    """Model rows and calls the official loop ran (cumulative)."""

    unet_rows: int = 0
    unet_calls: int = 0
    classifier_rows: int = 0
    classifier_calls: int = 0
    draws: int = 0


def official_batch_default(preset: str) -> int:
    """The published batch: 16 draws for ImageNet, 100 otherwise."""
    return 16 if preset.startswith("imagenet") else 100


def majority(labels: np.ndarray, classes: int) -> np.ndarray:
    """Per draw, the label most passes gave; a tie goes to the earliest pass's label among the tied.
    ``labels``: (K, draws) int64 -> (draws,) int64."""
    k, draws = labels.shape
    counts = np.zeros((draws, classes), dtype=np.int64)
    np.add.at(counts, (np.arange(draws)[None, :].repeat(k, 0), labels), 1)
    top = counts.max(axis=1)
    out = np.full(draws, -1, dtype=np.int64)
    for row in labels:  # the first pass whose label has the top count decides
        free = (out < 0) & (counts[np.arange(draws), row] == top)
        out[free] = row[free]
    return out


class OfficialLoop:
    """The published control flow with the job's models: ``unet`` (``eps_and_var``) and ``classifier``
    (x in [-1, 1] -> logits), torch modules on ``device`` already in ``precision`` (fp32: as published)."""

    def __init__(self, unet, classifier, smoothing: SmoothingConfig, batch: int, device: torch.device,
                 precision: Precision = Precision.FP32):
        if smoothing.mode is not Mode.DENSEPURE:
            raise ConfigError(f"--baseline official is DensePure's published loop: it needs --mode densepure, "
                              f"not {smoothing.mode.value}")
        self.unet, self.classifier, self.smoothing = unet, classifier, smoothing
        self.batch, self.device, self.precision = batch, torch.device(device), Precision.parse(precision)
        self.grid = smoothing.grid()
        self.tables = GridTables(self.grid, self.device)
        self.scale = math.sqrt(start_scale(smoothing.sigma))
        self.counts = OfficialCounts()

    def labels(self, x: torch.Tensor, num: int, noise: torch.Generator, reverse: torch.Generator,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Labels of ``num`` draws of one pass for image ``x`` (C, H, W), in batches of ``self.batch``:
        smoothing noise from ``noise``, the reverse steps' noise from ``reverse``."""
        with torch.inference_mode(), float32_math(self.precision.tf32):
            return self._labels(x, num, noise, reverse, progress)

    def _labels(self, x: torch.Tensor, num: int, noise: torch.Generator, reverse: torch.Generator,
                progress: Callable[[int], None] | None) -> np.ndarray:
        out = np.empty(num, dtype=np.int64)
        sigma, counts = self.smoothing.sigma, self.counts
        for lo in range(0, num, self.batch):
            m = min(self.batch, num - lo)
            xb = x.to(self.device).unsqueeze(0).repeat(m, 1, 1, 1)
            delta = torch.randn(xb.shape, generator=noise, device=self.device)
            y = self.scale * (2.0 * (xb + sigma * delta) - 1.0)
            for i in range(self.grid.num_steps):
                c = self.tables.gather(torch.full((m,), i, dtype=torch.int64, device=self.device))
                eps, v = self.unet.eps_and_var(y, c.model_time)
                counts.unet_rows, counts.unet_calls = counts.unet_rows + m, counts.unet_calls + 1
                mean, std, _ = step_mean_std(y, eps, v, c)
                if self.grid.has_noise[i]:
                    y = mean + std * torch.randn(mean.shape, generator=reverse, device=self.device)
                else:
                    y = mean
            logits = self.classifier(y.clamp(-1, 1).to(torch.float32))
            counts.classifier_rows, counts.classifier_calls = counts.classifier_rows + m, counts.classifier_calls + 1
            out[lo:lo + m] = logits.argmax(1).cpu().numpy()
            if progress is not None:
                progress(m)
        return out

    def certify(self, x: torch.Tensor, key: int, seed: int, n0: int, n: int, alpha: float, classes: int,
                progress: Callable[[int], None] | None = None) -> Certificate:
        """CERTIFY of image ``x`` (its noise keyed by ``(seed, key)``) on the K passes' voted labels."""
        k = self.smoothing.num_chains
        selection, estimation = np.empty((k, n0), dtype=np.int64), np.empty((k, n), dtype=np.int64)
        for p in range(k):  # one full certification pass per reverse seed; the same smoothing noise in each
            noise = torch.Generator(self.device).manual_seed(_seed(seed, key))
            reverse = torch.Generator(self.device).manual_seed(_seed(seed, key, 1 + p))
            selection[p] = self.labels(x, n0, noise, reverse, progress)
            estimation[p] = self.labels(x, n, noise, reverse, progress)
        self.counts.draws += n0 + n
        sel = np.bincount(majority(selection, classes), minlength=classes)
        est = np.bincount(majority(estimation, classes), minlength=classes)
        return certify_from_counts(sel, est, self.smoothing.sigma, alpha)

    def warm_up(self, x: torch.Tensor) -> None:
        """One batch through both models (allocator and kernel selection), not counted."""
        saved = OfficialCounts(**vars(self.counts))
        generator = torch.Generator(self.device).manual_seed(0)
        self.labels(x, min(self.batch, 8), generator, generator)
        self.counts = saved


def _seed(*words: int) -> int:
    """A 63-bit generator seed from integer words (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(w) % 2**64 for w in words]).generate_state(1, np.uint64)[0]) >> 1


def timed_sync(device: torch.device) -> float:
    """``time.perf_counter()`` after the device finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
