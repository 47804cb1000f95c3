"""The executor: runs the scheduler's batches on a device, with preallocated slot pools.

Pools (all on the device, float32): ``images[I]`` (clean images in [0,1]), ``mean[D]``/``std[D]``
(the shared first step of each draw), ``state[D*K]`` (each chain's current ``y``, and finally its
``x0_hat``). A batch is a gather by slot indices, one model call, and a scatter back.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch

from densepure.diffusion import GridTables, ReverseGrid, dds_forward_sample, start_scale, step_mean_std
from densepure.engine.backends.base import ClassifierBackend, DenoiserBackend
from densepure.noise import NoiseKeys, NoiseStream, gaussian
from densepure.engine.scheduler import RowKind, Rows


class StartKind(enum.Enum):
    """How a draw's start is made from the clean image."""

    DENSEPURE = "densepure"  # y = sqrt(a)(2(x + delta) - 1), delta = sigma * N(0, I)
    DDS = "dds"  # x_t = sqrt(abar)(2x - 1) + sqrt(1 - abar) eps (official DDS one-step)
    GAUSSIAN = "gaussian"  # no diffusion: the classifier sees 2(x + delta) - 1


class Executor:
    def __init__(self, denoiser: DenoiserBackend | None, classifier: ClassifierBackend, grid: ReverseGrid | None,
                 start: StartKind, sigma: float, seed: int, image_shape: tuple[int, int, int],
                 image_capacity: int, draw_capacity: int, chains: int, device: torch.device):
        self.denoiser, self.classifier, self.grid, self.start = denoiser, classifier, grid, start
        self.sigma, self.seed, self.device = float(sigma), int(seed), torch.device(device)
        self.shape = tuple(image_shape)
        self.tables = GridTables(grid, self.device) if grid is not None else None
        self.images = torch.zeros((image_capacity, *self.shape), device=self.device)
        shared = grid is not None and grid.num_steps >= 2
        self.mean = torch.zeros((draw_capacity if shared else 0, *self.shape), device=self.device)
        self.std = torch.zeros_like(self.mean)
        self.state = torch.zeros((draw_capacity * (chains if shared else 1), *self.shape), device=self.device)
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def put_image(self, slot: int, x: torch.Tensor) -> None:
        self.images[slot].copy_(x.to(self.device, torch.float32))

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    def _noise(self, rows: Rows, stream: NoiseStream, chain: np.ndarray | int, step: np.ndarray | int) -> torch.Tensor:
        keys = NoiseKeys.from_arrays(self.seed, image=self._image_ids[rows.image_slot], phase=rows.phase,
                                     draw=rows.draw, chain=chain, step=step, stream=int(stream))
        return gaussian(keys, self.shape, self.device)

    def set_image_ids(self, ids: np.ndarray) -> None:
        """``ids[slot]`` is the dataset index of the image in each slot (part of every noise key)."""
        self._image_ids = ids

    def start_points(self, rows: Rows) -> torch.Tensor:
        """The draws' starts (or, for Gaussian smoothing, the classifier inputs)."""
        x = self.images[self._t(rows.image_slot)]
        if self.start is StartKind.DDS:
            abar = float(self.grid.alphas_cumprod[0])
            return dds_forward_sample(x, self._noise(rows, NoiseStream.FORWARD, 0, 0), abar)
        delta = self.sigma * self._noise(rows, NoiseStream.DELTA, 0, 0)
        if self.start is StartKind.GAUSSIAN:
            return 2.0 * (x + delta) - 1.0
        return math.sqrt(start_scale(self.sigma)) * (2.0 * (x + delta) - 1.0)

    @torch.no_grad()
    def run_unet(self, rows: Rows) -> None:
        kinds = rows.kind
        y = torch.empty((len(rows), *self.shape), device=self.device)
        for kind, fill in ((RowKind.START, self.start_points), (RowKind.SPAWN, self._spawn),
                           (RowKind.CONTINUE, self._continue)):
            idx = np.nonzero(kinds == kind)[0]
            if idx.size:
                y[self._t(idx)] = fill(_take(rows, idx))
        c = self.tables.gather(self._t(rows.step))
        eps, v = self.denoiser.eps_and_var(y, c.model_time)
        mean, std, x0 = step_mean_std(y, eps, v, c)
        shared = self.mean.shape[0] > 0
        start = (kinds == RowKind.START) if shared else np.zeros(len(rows), dtype=bool)
        if start.any():  # shared first step: keep (mean, std) per draw for its chains
            sel, slots = self._t(np.nonzero(start)[0]), self._t(rows.draw_slot[start])
            self.mean[slots], self.std[slots] = mean[sel], std[sel]
        chain_rows = np.nonzero(~start)[0]
        if chain_rows.size:
            sub = _take(rows, chain_rows)
            sel = self._t(chain_rows)
            out = mean[sel]
            noisy = self.grid.has_noise[sub.step]
            if noisy.any():
                nz = np.nonzero(noisy)[0]
                z = self._noise(_take(sub, nz), NoiseStream.CHAIN, sub.chain[nz], sub.step[nz])
                out[self._t(nz)] += std[sel[self._t(nz)]] * z
            self.state[self._t(sub.chain_slot)] = out

    def _spawn(self, rows: Rows) -> torch.Tensor:
        slots = self._t(rows.draw_slot)
        z = self._noise(rows, NoiseStream.CHAIN, rows.chain, 0)
        return self.mean[slots] + self.std[slots] * z

    def _continue(self, rows: Rows) -> torch.Tensor:
        return self.state[self._t(rows.chain_slot)]

    @torch.no_grad()
    def run_classifier(self, rows: Rows) -> np.ndarray:
        """Labels of the rows' classifier inputs (synchronous)."""
        return self.launch_classifier(rows).labels()

    @torch.no_grad()
    def launch_classifier(self, rows: Rows) -> PendingLabels:
        """Start classifying ``rows``; on CUDA on a second stream, so the next UNet batch overlaps it.

        Safe to overlap: the rows read here (finished chains, or the clean images for Gaussian
        smoothing) are not written by any UNet batch until the scheduler has received these labels
        (a chain slot is reused only after its draw is final), and the side stream first waits for
        everything already queued on the main stream.
        """
        if self.side is None:
            return PendingLabels(self._labels(rows).cpu().numpy())
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            labels = self._labels(rows)
            host = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
            host.copy_(labels, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.side)
        return PendingLabels(host, event)

    def _labels(self, rows: Rows) -> torch.Tensor:
        x = self.start_points(rows) if self.start is StartKind.GAUSSIAN else self.state[self._t(rows.chain_slot)]
        return self.classifier.logits(x).argmax(dim=1)


class PendingLabels:
    """Labels of a launched classifier batch; :meth:`labels` waits for them (int64 numpy)."""

    def __init__(self, host, event: torch.cuda.Event | None = None):
        self.host, self.event = host, event

    def labels(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
            return self.host.numpy()
        return self.host


def _take(rows: Rows, idx: np.ndarray) -> Rows:
    return Rows(*(getattr(rows, f)[idx] for f in Rows.__dataclass_fields__))
