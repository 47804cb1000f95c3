"""The executor: runs the scheduler's batches on a device, with preallocated slot pools.

Pools (all on the device, float32): ``images[I]`` (clean images in [0,1]; with sound noise their
integer grid indices), ``mean[D]``/``std[D]``
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
from densepure.engine.transfer import SyncCounter, Uploader
from densepure.errors import ModelOutputError
from densepure.kernels import AdvanceRows, KeepRows, KernelChoice, Kernels, StartRule, resolve_kernels
from densepure.noise import NoiseStream, counter_words, key_table, sound_table
from densepure.noise.sound import grid_indices

_BAD_LOGITS = -1  # the label of a row whose logits were not all finite


def start_rule(smoothing: SmoothingConfig, grid) -> StartRule:
    """How the kernels make a draw's start (or Gaussian smoothing's classifier input) for ``smoothing``;
    sound noise: with the table of the grid and the start's noise level (built once per process)."""
    table = sound_table(smoothing.levels, smoothing.noise_sigma()) if smoothing.sound else None
    if smoothing.start is StartKind.DDS:
        return StartRule(StartKind.DDS, alpha_bar=float(grid.alphas_cumprod[0]), table=table)
    return StartRule(smoothing.start, sigma=smoothing.sigma, table=table)


class Executor:
    """Runs batches for ``smoothing`` with ``backends`` on ``device``.

    The per-row arithmetic (start points, the shared first step, spawns, the reverse step with its keyed
    noise) runs through ``kernels`` (:mod:`densepure.kernels`): the torch references, or the fused Triton
    kernels that reproduce them. Each batch's index columns reach the device in one asynchronous copy
    (:mod:`densepure.engine.transfer`). The draw pools grow with the highest draw slot in use (the
    scheduler hands out the lowest free slot), up to ``draw_capacity``, so memory follows the work queued,
    not the capacity.
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
        self.shared = self.grid is not None and self.grid.num_steps >= 2
        self.chains = smoothing.chains if self.shared else 1
        self.draw_capacity = int(draw_capacity)
        self.mean = self.std = self.state = torch.zeros((0, *self.shape), device=self.device)
        self.slot_keys = np.zeros((image_slots, len(NoiseStream), 2), dtype=np.int64)
        self.slot_noise_id = np.zeros(image_slots, dtype=np.int64)
        self.unet_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.syncs = SyncCounter()
        self.upload = Uploader(self.device, self.syncs)

    def put_image(self, slot: int, x: torch.Tensor, seed: int, noise_id: int) -> None:
        """Admit image ``x`` (C,H,W) in [0,1] into ``slot``, its noise keyed by ``(seed, noise_id)``: one
        asynchronous copy (a host image is staged in pinned memory; a pageable copy would wait for the
        whole queue of the main stream, once per admitted image). With sound noise the slot holds the
        image's integer grid indices (the engine checked it is on the grid)."""
        if self.smoothing.sound:
            x = grid_indices(x, self.smoothing.levels)
        self.upload.copy_into(self.images[slot], x)
        self.slot_keys[slot] = key_table(seed).numpy()
        self.slot_noise_id[slot] = noise_id

    def _grow(self, draw_slots: np.ndarray) -> None:
        """Make the pools hold draw slots ``0..max(draw_slots)`` (doubling, at most ``draw_capacity``)."""
        need = int(draw_slots.max()) + 1 if draw_slots.size else 0
        have = self.state.shape[0] // self.chains
        if need <= have:
            return
        size = min(self.draw_capacity, max(need, 2 * have, 8))
        old = self.state
        grown = torch.zeros((size * self.chains, *self.shape), device=self.device)
        grown[: old.shape[0]] = old
        if self.side is not None and old.numel():
            # a classifier batch queued on the side stream may still read the old pool: without this the
            # caching allocator could hand its block to the next main-stream allocation before that read
            old.record_stream(self.side)
        self.state = grown
        if self.shared:
            self.mean, self.std = (torch.cat([t, t.new_zeros((size - have, *self.shape))]) for t in (self.mean, self.std))

    def _words(self, rows: Rows, stream: NoiseStream, chain: np.ndarray | int, step: np.ndarray | int) -> np.ndarray:
        """The rows' ``(R, 6)`` noise row words in ``stream`` (:mod:`densepure.noise`), on the host, from
        the slots' keys and the rows' identities."""
        n = len(rows)
        chain = np.broadcast_to(np.asarray(chain, dtype=np.int64), (n,))
        step = np.broadcast_to(np.asarray(step, dtype=np.int64), (n,))
        counters = counter_words(*(torch.from_numpy(np.array(c, dtype=np.int64)) for c in (
            self.slot_noise_id[rows.image_slot], rows.phase, rows.draw, chain, step))).numpy()
        keys = self.slot_keys[rows.image_slot, int(stream)]
        return np.concatenate([counters.reshape(n, 4), keys.reshape(n, 2)], axis=1)

    @torch.no_grad()
    def run_unet(self, rows: Rows) -> None:
        self._grow(rows.draw_slot)
        host = self._unet_columns(rows)
        d = self.upload(host)
        y = torch.empty((len(rows), *self.shape), device=self.device)
        k = self.kernels
        if host["start_at"].size:
            k.start_rows(self.images, d["start_slot"], d["start_words"], self.rule, y, d["start_at"])
        if host["spawn_at"].size:
            k.spawn_rows(self.mean, self.std, d["spawn_draw"], d["spawn_words"], y, d["spawn_at"])
        if host["cont_at"].size:
            y[d["cont_at"]] = self.state[d["cont_chain"]]
        c = self.tables.gather(d["step"])
        eps, v = self.denoiser.eps_and_var(y, c.model_time)
        self.unet_bad |= ~(torch.isfinite(eps).all() & torch.isfinite(v).all())
        keep = KeepRows(d["keep_at"], d["keep_draw"], self.mean, self.std) if host["keep_at"].size else None
        advance = AdvanceRows(d["adv_at"], d["adv_chain"], d["adv_words"], self.state, d["adv_noisy"]) \
            if host["adv_at"].size else None
        k.step_rows(y, eps, v, c, keep=keep, advance=advance)

    def _unet_columns(self, rows: Rows) -> dict[str, np.ndarray]:
        """Every index a UNet batch needs, on the host: positions in the batch by row kind, the slots they
        read or write, the steps, and the noise row words of the rows that draw noise."""
        out: dict[str, np.ndarray] = {"step": rows.step}
        for name, kind in (("start", RowKind.START), ("spawn", RowKind.SPAWN), ("cont", RowKind.CONTINUE)):
            out[f"{name}_at"] = np.nonzero(rows.kind == kind)[0]
        start, spawn = _take(rows, out["start_at"]), _take(rows, out["spawn_at"])
        out["start_slot"], out["start_words"] = start.image_slot, self._words(start, self.start_stream, 0, 0)
        out["spawn_draw"] = spawn.draw_slot
        out["spawn_words"] = self._words(spawn, NoiseStream.CHAIN, spawn.chain, 0)
        out["cont_chain"] = rows.chain_slot[out["cont_at"]]
        keep = out["start_at"] if self.shared else np.zeros(0, dtype=np.int64)
        out["keep_at"], out["keep_draw"] = keep, rows.draw_slot[keep]
        moving = np.nonzero(rows.kind != RowKind.START)[0] if self.shared else np.arange(len(rows))
        sub = _take(rows, moving)
        out["adv_at"], out["adv_chain"] = moving, sub.chain_slot
        out["adv_words"] = self._words(sub, NoiseStream.CHAIN, sub.chain, sub.step)
        out["adv_noisy"] = np.nonzero(self.grid.has_noise[sub.step])[0]
        return out

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
            return PendingLabels(self._labels(rows).numpy(), names, self.syncs)
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            labels = self._labels(rows)
            host = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
            host.copy_(labels, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.side)
        return PendingLabels(host, names, self.syncs, event)

    def _labels(self, rows: Rows) -> torch.Tensor:
        """``(B + 1,)`` int64: each row's label (``-1``: non-finite logits), then the UNet's flag (0/1)."""
        if self.start is StartKind.GAUSSIAN:
            d = self.upload({"slot": rows.image_slot, "words": self._words(rows, self.start_stream, 0, 0)})
            x = self.kernels.start_rows(self.images, d["slot"], d["words"], self.rule)
        else:
            x = self.state[self.upload({"chain": rows.chain_slot})["chain"]]
        logits = self.classifier.logits(x)
        labels = torch.where(torch.isfinite(logits).all(dim=1), logits.argmax(dim=1), _BAD_LOGITS)
        return torch.cat([labels, self.unet_bad.to(torch.int64).reshape(1)])


class PendingLabels:
    """Labels of a launched classifier batch; :meth:`labels` waits for them (int64 numpy): the one host
    synchronisation of an engine step (counted in ``counter.waits``)."""

    def __init__(self, host, names: tuple[str, str], counter: SyncCounter, event: torch.cuda.Event | None = None):
        self.host, self.names, self.counter, self.event = host, names, counter, event

    def labels(self) -> np.ndarray:
        """The rows' labels, or :class:`ModelOutputError` if a model returned a non-finite value."""
        self.counter.waits += 1
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
