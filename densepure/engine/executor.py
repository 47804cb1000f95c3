"""The executor: runs the scheduler's batches on a device, with preallocated slot pools.

Pools (all on the device, float32): ``images[I]`` (clean images in [0,1]), ``mean[D]``/``std[D]``
(the shared first step of each draw), ``state[D*K]`` (each chain's current ``y``, and finally its
``x0_hat``). A batch is a gather by slot indices, one model call, and a scatter back.

Noise identity: each image slot holds the Philox key table of its image's seed and the image's noise
id (the key's image field), set when the image is admitted (:meth:`Executor.put_image`). A row's noise
is keyed by its slot's seed and id and by its own ``(phase, draw, chain, step)``, so rows of images with
different seeds (the server's requests) share batches, and a dataset run keyed by ``(run seed, dataset
index)`` draws exactly the noise of the plain path. Row words are built on the host from the batch's
integer columns and cross to the device in one copy.

Model outputs are checked without a host synchronisation of their own: a non-finite UNet output sets
a device flag, a non-finite logit turns its row's label into a sentinel, and both travel to the host
with the labels the engine copies anyway; :meth:`PendingLabels.labels` raises
:class:`~densepure.errors.ModelOutputError` before any of those labels is counted.
"""

from __future__ import annotations

import numpy as np
import torch

from densepure.diffusion import (
    GridTables,
    SmoothingConfig,
    StartKind,
    dds_forward_sample,
    noisy_input,
    start_point,
    step_mean_std,
)
from densepure.engine.backends.base import Backends
from densepure.engine.scheduler import RowKind, Rows
from densepure.errors import ModelOutputError
from densepure.noise import NoiseStream, counter_words, gaussian_words, key_table

_BAD_LOGITS = -1  # the label of a row whose logits were not all finite


class Executor:
    """Runs batches for ``smoothing`` with ``backends`` on ``device`` (pools sized by the capacities)."""

    def __init__(self, backends: Backends, smoothing: SmoothingConfig, image_shape: tuple[int, int, int],
                 image_slots: int, draw_capacity: int, device: torch.device):
        self.denoiser, self.classifier = backends.denoiser, backends.classifier
        self.smoothing, self.sigma, self.start = smoothing, smoothing.sigma, smoothing.start
        self.grid = smoothing.grid()
        self.device, self.shape = torch.device(device), tuple(image_shape)
        self.tables = GridTables(self.grid, self.device) if self.grid is not None else None
        self.images = torch.zeros((image_slots, *self.shape), device=self.device)
        shared = self.grid is not None and self.grid.num_steps >= 2
        chains = smoothing.chains if shared else 1
        self.mean = torch.zeros((draw_capacity if shared else 0, *self.shape), device=self.device)
        self.std = torch.zeros_like(self.mean)
        self.state = torch.zeros((draw_capacity * chains, *self.shape), device=self.device)
        self.slot_keys = np.zeros((image_slots, len(NoiseStream), 2), dtype=np.int64)
        self.slot_noise_id = np.zeros(image_slots, dtype=np.int64)
        self.unet_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def put_image(self, slot: int, x: torch.Tensor, seed: int, noise_id: int) -> None:
        """Admit image ``x`` (C,H,W) in [0,1] into ``slot``, its noise keyed by ``(seed, noise_id)``."""
        self.images[slot].copy_(x.to(self.device, torch.float32))
        self.slot_keys[slot] = key_table(seed).numpy()
        self.slot_noise_id[slot] = noise_id

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    def _noise(self, rows: Rows, stream: NoiseStream, chain: np.ndarray | int, step: np.ndarray | int) -> torch.Tensor:
        """Standard normals ``(B, *shape)`` for the rows' identities in ``stream``."""
        slots = rows.image_slot
        n = len(rows)
        chain = np.broadcast_to(np.asarray(chain, dtype=np.int64), (n,))
        step = np.broadcast_to(np.asarray(step, dtype=np.int64), (n,))
        counters = counter_words(*(torch.from_numpy(np.array(c, dtype=np.int64)) for c in (
            self.slot_noise_id[slots], rows.phase, rows.draw, chain, step)))
        keys = torch.from_numpy(self.slot_keys[slots, int(stream)])
        words = torch.cat([counters.reshape(n, 4), keys.reshape(n, 2)], dim=1).to(self.device)
        return gaussian_words(words, self.shape, self.device)

    def start_points(self, rows: Rows) -> torch.Tensor:
        """The draws' starts (or, for Gaussian smoothing, the classifier inputs)."""
        x = self.images[self._t(rows.image_slot)]
        if self.start is StartKind.DDS:
            abar = float(self.grid.alphas_cumprod[0])
            return dds_forward_sample(x, self._noise(rows, NoiseStream.FORWARD, 0, 0), abar)
        delta = self.sigma * self._noise(rows, NoiseStream.DELTA, 0, 0)
        if self.start is StartKind.GAUSSIAN:
            return noisy_input(x, delta)
        return start_point(x, delta, self.sigma)

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
        self.unet_bad |= ~(torch.isfinite(eps).all() & torch.isfinite(v).all())
        mean, std, _ = step_mean_std(y, eps, v, c)
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
    def launch_classifier(self, rows: Rows) -> PendingLabels:
        """Start classifying ``rows``; on CUDA on a second stream, so the next UNet batch overlaps it.

        Safe to overlap: the rows read here (finished chains, or the clean images for Gaussian
        smoothing) are not written by any UNet batch until the scheduler has received these labels
        (a chain slot is reused only after its draw is final), and the side stream first waits for
        everything already queued on the main stream (the UNet's non-finite flag included).
        """
        names = (self.denoiser.name if self.denoiser is not None else "", self.classifier.name)
        if self.side is None:
            return PendingLabels(self._labels(rows).cpu().numpy(), names)
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            labels = self._labels(rows)
            host = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
            host.copy_(labels, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.side)
        return PendingLabels(host, names, event)

    def _labels(self, rows: Rows) -> torch.Tensor:
        """``(B + 1,)`` int64: each row's label (``-1``: non-finite logits), then the UNet's flag (0/1)."""
        x = self.start_points(rows) if self.start is StartKind.GAUSSIAN else self.state[self._t(rows.chain_slot)]
        logits = self.classifier.logits(x)
        labels = torch.where(torch.isfinite(logits).all(dim=1), logits.argmax(dim=1), _BAD_LOGITS)
        return torch.cat([labels, self.unet_bad.to(torch.int64).reshape(1)])


class PendingLabels:
    """Labels of a launched classifier batch; :meth:`labels` waits for them (int64 numpy)."""

    def __init__(self, host, names: tuple[str, str], event: torch.cuda.Event | None = None):
        self.host, self.names, self.event = host, names, event

    def labels(self) -> np.ndarray:
        """The rows' labels, or :class:`ModelOutputError` if a model returned a non-finite value."""
        if self.event is not None:
            self.event.synchronize()
        out = self.host.numpy() if self.event is not None else self.host
        if out[-1]:
            raise ModelOutputError(f"the diffusion model ({self.names[0]} backend) returned non-finite outputs "
                                   "(NaN or inf): check its checkpoint or exported graph; no count was recorded "
                                   "for the affected draws")
        if (out[:-1] == _BAD_LOGITS).any():
            raise ModelOutputError(f"the classifier ({self.names[1]} backend) returned non-finite logits (NaN or "
                                   "inf): check its weights or exported graph; no count was recorded for those draws")
        return out[:-1]


def _take(rows: Rows, idx: np.ndarray) -> Rows:
    return Rows(*(getattr(rows, f)[idx] for f in Rows.__dataclass_fields__))
