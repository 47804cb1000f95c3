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

from densepure.diffusion import GridTables, SmoothingConfig, StartKind
from densepure.engine.backends.base import Backends
from densepure.engine.scheduler import RowKind, Rows
from densepure.errors import ModelOutputError
from densepure.kernels import AdvanceRows, KeepRows, KernelChoice, Kernels, StartForm, StartRule, resolve_kernels
from densepure.noise import NoiseStream, counter_words, key_table

_BAD_LOGITS = -1  # the label of a row whose logits were not all finite


def start_rule(smoothing: SmoothingConfig, grid) -> StartRule:
    """How the kernels make a draw's start (or Gaussian smoothing's classifier input) for ``smoothing``."""
    if smoothing.start is StartKind.DDS:
        return StartRule(StartForm.DDS, alpha_bar=float(grid.alphas_cumprod[0]))
    form = StartForm.GAUSSIAN if smoothing.start is StartKind.GAUSSIAN else StartForm.DENSEPURE
    return StartRule(form, sigma=smoothing.sigma)


class Executor:
    """Runs batches for ``smoothing`` with ``backends`` on ``device`` (pools sized by the capacities).

    The per-row arithmetic (start points, the shared first step, spawns, the reverse step with its keyed
    noise) runs through ``kernels`` (:mod:`densepure.kernels`): the torch references, or the fused Triton
    kernels that reproduce them.
    """

    def __init__(self, backends: Backends, smoothing: SmoothingConfig, image_shape: tuple[int, int, int],
                 image_slots: int, draw_capacity: int, device: torch.device, kernels: Kernels | None = None):
        self.denoiser, self.classifier = backends.denoiser, backends.classifier
        self.smoothing, self.start = smoothing, smoothing.start
        self.grid = smoothing.grid()
        self.device, self.shape = torch.device(device), tuple(image_shape)
        self.kernels = kernels if kernels is not None else resolve_kernels(KernelChoice.TORCH, self.device)
        self.rule = start_rule(smoothing, self.grid)
        self.start_stream = NoiseStream.FORWARD if self.start is StartKind.DDS else NoiseStream.DELTA
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

    def _words(self, rows: Rows, stream: NoiseStream, chain: np.ndarray | int, step: np.ndarray | int) -> torch.Tensor:
        """The rows' ``(R, 6)`` noise row words in ``stream`` (:mod:`densepure.noise`), built on the host
        from the slots' keys and the rows' identities, then copied to the device at once."""
        slots = rows.image_slot
        n = len(rows)
        chain = np.broadcast_to(np.asarray(chain, dtype=np.int64), (n,))
        step = np.broadcast_to(np.asarray(step, dtype=np.int64), (n,))
        counters = counter_words(*(torch.from_numpy(np.array(c, dtype=np.int64)) for c in (
            self.slot_noise_id[slots], rows.phase, rows.draw, chain, step)))
        keys = torch.from_numpy(self.slot_keys[slots, int(stream)])
        return torch.cat([counters.reshape(n, 4), keys.reshape(n, 2)], dim=1).to(self.device)

    def _start_rows(self, rows: Rows, out: torch.Tensor | None = None, at: np.ndarray | None = None) -> torch.Tensor:
        """The rows' starts (Gaussian smoothing: the classifier inputs), into ``out[at]`` when given."""
        words = self._words(rows, self.start_stream, 0, 0)
        out_rows = self._t(at) if at is not None else None
        return self.kernels.start_rows(self.images, self._t(rows.image_slot), words, self.rule, out, out_rows)

    @torch.no_grad()
    def run_unet(self, rows: Rows) -> None:
        kinds = rows.kind
        y = torch.empty((len(rows), *self.shape), device=self.device)
        for kind in (RowKind.START, RowKind.SPAWN, RowKind.CONTINUE):
            idx = np.nonzero(kinds == kind)[0]
            if not idx.size:
                continue
            sub = _take(rows, idx)
            if kind is RowKind.START:
                self._start_rows(sub, y, idx)
            elif kind is RowKind.SPAWN:
                words = self._words(sub, NoiseStream.CHAIN, sub.chain, 0)
                self.kernels.spawn_rows(self.mean, self.std, self._t(sub.draw_slot), words, y, self._t(idx))
            else:
                y[self._t(idx)] = self.state[self._t(sub.chain_slot)]
        c = self.tables.gather(self._t(rows.step))
        eps, v = self.denoiser.eps_and_var(y, c.model_time)
        self.unet_bad |= ~(torch.isfinite(eps).all() & torch.isfinite(v).all())
        self.kernels.step_rows(y, eps, v, c, keep=self._keep(rows), advance=self._advance(rows))

    def _keep(self, rows: Rows) -> KeepRows | None:
        """START rows of a shared first step keep their ``(mean, std)`` per draw, for the draw's chains."""
        start = np.nonzero(rows.kind == RowKind.START)[0] if self.mean.shape[0] else np.zeros(0, dtype=np.int64)
        if not start.size:
            return None
        return KeepRows(self._t(start), self._t(rows.draw_slot[start]), self.mean, self.std)

    def _advance(self, rows: Rows) -> AdvanceRows | None:
        """Every other row moves its chain on: ``mean + std z`` (``mean``, i.e. ``x0_hat``, at the last step)."""
        moving = np.nonzero(rows.kind != RowKind.START)[0] if self.mean.shape[0] else np.arange(len(rows))
        if not moving.size:
            return None
        sub = _take(rows, moving)
        noisy = torch.from_numpy(np.nonzero(self.grid.has_noise[sub.step])[0])
        words = self._words(sub, NoiseStream.CHAIN, sub.chain, sub.step)
        return AdvanceRows(self._t(moving), self._t(sub.chain_slot), words, self.state, noisy)

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
        x = self._start_rows(rows) if self.start is StartKind.GAUSSIAN else self.state[self._t(rows.chain_slot)]
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
