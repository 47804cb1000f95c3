"""The inputs ``bench kernels`` checks and times its kernels on: a batch of rows with the engine's pools, noise
words and per-row coefficients; GroupNorm+SiLU calls at the UNet's activation shapes; the UNet itself.

Every input that a kernel reads holds values (random, from fixed seeds): a pool left uninitialised could
hold NaNs, and a comparison with the reference would mean nothing. Each call returns what it writes, so
the reference check (:func:`densepure.bench.kernels.check`) compares every output.
"""

from __future__ import annotations

import torch

from densepure.bench.models import random_unet
from densepure.diffusion import GridTables, NoiseSchedule, StartKind, build_reverse_grid, t_star
from densepure.kernels import AdvanceRows, KeepRows, StartRule
from densepure.models import UNetConfig, UNetModel
from densepure.noise import NoiseKeys, row_words


def unet_for(config: UNetConfig, device: torch.device, dtype: torch.dtype) -> UNetModel:
    """The UNet of ``config`` with seeded random weights (every parameter perturbed), in ``dtype``
    (channels-last on CUDA, as the engine runs it)."""
    model = random_unet(config, device).set_precision(dtype)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


class RowInputs:
    """A batch of ``rows`` rows of ``shape`` with the engine's pools, words and per-row coefficients."""

    def __init__(self, rows: int, shape: tuple[int, int, int], schedule: NoiseSchedule, device: torch.device):
        g = torch.Generator().manual_seed(1)
        self.shape, n = shape, rows

        def words(stream: int, step: int) -> torch.Tensor:
            keys = NoiseKeys.from_arrays(7, image=torch.arange(n) % 97, phase=1, draw=torch.arange(n),
                                         chain=torch.arange(n) % 10, step=step, stream=stream)
            return row_words(keys, device)

        def rand(*size, normal: bool = True) -> torch.Tensor:
            return (torch.randn if normal else torch.rand)(size, generator=g).to(device)

        self.delta, self.chain, self.chain1 = words(0, 0), words(1, 0), words(1, 1)
        self.slots = torch.randperm(n, generator=g).to(device)
        self.images = rand(n, *shape, normal=False)
        # [start output, kept mean, kept std, advanced rows]: the spawn reads the mean and std pools
        self.pools = [rand(n, *shape), rand(n, *shape), rand(n, *shape, normal=False) + 0.1,
                      torch.zeros((n, *shape), device=device)]
        self.y = rand(n, *shape)
        out = rand(n, 2 * shape[0], *shape[1:])
        self.eps, self.v = out[:, : shape[0]], out[:, shape[0]:].clamp(-1, 1)
        tables = GridTables(build_reverse_grid(schedule, t_star(0.5, schedule), 3), device)
        self.first = tables.gather(torch.zeros(n, dtype=torch.int64, device=device))
        self.middle = tables.gather(torch.ones(n, dtype=torch.int64, device=device))  # a noisy step
        self.rule = StartRule(StartKind.DENSEPURE, sigma=0.5)
        self.all = torch.arange(n, device=device)
        self.kept = (torch.zeros((n, *shape), device=device), torch.zeros((n, *shape), device=device))

    def calls(self, k) -> dict[str, tuple[callable, int]]:
        """name -> (call returning what it wrote, minimal bytes moved); bytes per element: start 4+4, spawn
        8+4, keep 12+8, advance 12+4."""
        numel = self.all.shape[0] * self.images[0].numel()
        return {
            "start (noise + start point)": (lambda: k.start_rows(self.images, self.slots, self.delta, self.rule,
                                                                 self.pools[0], self.all), 8 * numel),
            "spawn (noise + mean + std z)": (lambda: k.spawn_rows(self.pools[1], self.pools[2], self.slots,
                                                                  self.chain, self.pools[0], self.all), 12 * numel),
            "step, keep (mean, std)": (lambda: (k.step_rows(self.y, self.eps, self.v, self.first, keep=KeepRows(
                self.all, self.slots, self.kept[0], self.kept[1])), self.kept), 20 * numel),
            "step, advance (+ noise)": (lambda: (k.step_rows(self.y, self.eps, self.v, self.middle, advance=AdvanceRows(
                self.all, self.slots, self.chain1, self.pools[3])), self.pools[3]), 16 * numel),
        }


def norm_calls(model: UNetModel, rows: int, device: torch.device, dtype: torch.dtype, k) -> dict:
    """GroupNorm+SiLU with scale-shift at the UNet's two largest distinct (channels, size), the same inputs for
    every implementation: name -> (call, bytes)."""
    cfg, g = model.config, torch.Generator().manual_seed(2)
    shapes = sorted({(int(m * cfg.model_channels), cfg.image_size // 2**i) for i, m in enumerate(cfg.channel_mult)})
    out = {}
    for channels, size in shapes[-2:]:
        x = torch.randn((rows, channels, size, size), generator=g).to(device, dtype)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = (torch.randn(channels, generator=g).to(device) for _ in range(2))
        scale, shift = (torch.randn((rows, 2 * channels, 1, 1), generator=g) * 0.1).to(device, dtype).chunk(2, dim=1)
        groups = min(cfg.num_groups, channels)
        out[f"groupnorm+silu {channels}x{size}x{size}"] = (
            lambda x=x, w=w, b=b, s=scale, t=shift, n=groups: k.group_norm_silu(x, w, b, n, 1e-5, s, t),
            2 * x.numel() * x.element_size())
    return out
