"""The engine core: images are submitted, batches are stepped, decided images are collected.

``submit`` queues an :class:`ImageRequest` (an image, its sampling policy and its noise identity);
``step`` admits queued images into free slots and runs one round (a classifier batch, launched first so
that on CUDA it overlaps, and a UNet batch); ``collect`` returns the requests whose policy is decided;
``idle`` says nothing is queued or in flight; ``cancel`` drops a request. A dataset run, a server loop
and a cluster worker all drive the engine through these five, and :meth:`Engine.run` is such a loop.

UNet and classifier batches mix rows of all images in flight and are refilled continuously, so an image
leaves as soon as its policy is decided. Counts are identical to the plain path's
(:class:`~densepure.engine.reference.ReferenceSampler`) for the same noise identities: every noise value
is a function of its identity (:mod:`densepure.noise`), the vote's early exit is exact, and policies
read prefixes of draws.

Noise identity of a request: ``(seed, noise_id)``. A dataset run gives every image the run's seed and
its dataset index as ``noise_id`` (the key's 24-bit image field); a server gives every request its own
secret seed and ``noise_id = 0``. Either way no two images of one run share noise.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from densepure.diffusion import SmoothingConfig
from densepure.engine.backends.base import Backends
from densepure.engine.executor import Executor
from densepure.engine.policy import Policy
from densepure.engine.scheduler import Scheduler, check_prefixes
from densepure.errors import ConfigError, InputError
from densepure.kernels import Kernels
from densepure.noise import CHAIN_BITS, DRAW_BITS, IMAGE_BITS, SEED_BITS, STEP_BITS
from densepure.noise.sound import grid_indices


@dataclass(frozen=True)
class EngineConfig:
    """Batch and pool sizes: ``unet_rows``/``classifier_rows`` rows per model call; ``draw_capacity``
    draws in flight; ``image_slots`` images in flight; ``early_exit`` of the vote; ``chain_prefixes``:
    also count the votes of each draw's first ``k`` chains (DensePure only, see the scheduler);
    ``lookahead``: let sequential policies' look-ahead draws fill a batch's empty rows (the counts and
    decisions are the same either way; see the scheduler)."""

    unet_rows: int = 512
    classifier_rows: int = 512
    draw_capacity: int = 1024
    image_slots: int = 8
    early_exit: bool = True
    chain_prefixes: tuple[int, ...] = ()
    lookahead: bool = True

    def __post_init__(self) -> None:
        for name in ("unet_rows", "classifier_rows", "draw_capacity", "image_slots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "chain_prefixes", tuple(int(k) for k in self.chain_prefixes))


@dataclass(frozen=True, eq=False)
class ImageRequest:
    """One image to sample for: ``key`` comes back with it (a dataset index, a request id); ``image``
    ``(C, H, W)`` in [0, 1]; ``policy`` decides which draws it needs; ``(seed, noise_id)`` is its noise
    identity (module docstring)."""

    key: Hashable
    image: torch.Tensor
    policy: Policy
    seed: int
    noise_id: int = 0


@dataclass(frozen=True)
class EngineStats:
    """Cumulative counts since the engine was built: model rows run and draws decided."""

    unet_rows: int
    classifier_rows: int
    draws: int = 0


class Engine:
    """Runs base-classifier draws for many images at once (module docstring). A context manager: the
    backends stay active (graphs captured, sessions open) while the engine is."""

    def __init__(self, smoothing: SmoothingConfig, backends: Backends, image_shape: tuple[int, int, int],
                 device: torch.device | str, config: EngineConfig = EngineConfig(), kernels: Kernels | None = None):
        if not isinstance(smoothing, SmoothingConfig):
            raise ConfigError(f"smoothing must be a SmoothingConfig, got {type(smoothing).__name__}")
        if smoothing.needs_denoiser and backends.denoiser is None:
            raise ConfigError(f"mode {smoothing.mode.value} needs a denoiser backend")
        if smoothing.chains >= 1 << CHAIN_BITS or smoothing.steps >= 1 << STEP_BITS:
            raise ConfigError(f"K and b must be < {1 << CHAIN_BITS}, got K={smoothing.chains} b={smoothing.steps}")
        if config.chain_prefixes and smoothing.chains == 1:
            raise ConfigError(f"chain prefixes need densepure mode, not {smoothing.mode.value}")
        try:
            check_prefixes(config.chain_prefixes, smoothing.chains, config.early_exit)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.smoothing, self.backends, self.config = smoothing, backends, config
        self.device, self.image_shape = torch.device(device), tuple(int(d) for d in image_shape)
        self.num_classes = backends.classifier.num_classes
        self.executor = Executor(backends, smoothing, self.image_shape, config.image_slots, config.draw_capacity,
                                 self.device, kernels)
        self.kernels = self.executor.kernels
        steps = self.executor.grid.num_steps if self.executor.grid is not None else 1
        self.scheduler = Scheduler(steps, smoothing.chains, self.num_classes, config.draw_capacity,
                                   uses_unet=smoothing.needs_denoiser, early_exit=config.early_exit,
                                   prefixes=config.chain_prefixes,
                                   lookahead=config.lookahead)
        self._waiting: deque[ImageRequest] = deque()
        self._free = list(range(config.image_slots))[::-1]
        self._by_slot: dict[int, ImageRequest] = {}
        self._finished: list[ImageRequest] = []
        self._active = 0
        self._pending = None  # (rows, labels) of the classifier batch launched last round, read this round

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        if self._active == 0:
            for backend in (self.backends.denoiser, self.backends.classifier):
                if backend is not None:
                    backend.__enter__()
        self._active += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._active -= 1
        if self._active == 0:
            for backend in (self.backends.classifier, self.backends.denoiser):
                if backend is not None:
                    backend.__exit__(*exc)

    @property
    def stats(self) -> EngineStats:
        return EngineStats(self.scheduler.unet_rows, self.scheduler.cls_rows, self.scheduler.draws)

    # -- the core API -------------------------------------------------------------------------
    def submit(self, request: ImageRequest) -> None:
        """Queue ``request`` (checked now: image shape, range and finiteness, noise identity, draw counts)."""
        self._check(request)
        self._waiting.append(request)

    def cancel(self, key: Hashable) -> bool:
        """Drop the queued or in-flight request with ``key`` (its slot is freed); False if there is none."""
        for request in list(self._waiting):
            if request.key == key:
                self._waiting.remove(request)
                return True
        for slot, request in list(self._by_slot.items()):
            if request.key == key:
                self.scheduler.drop_image(slot)
                del self._by_slot[slot]
                self._free.append(slot)
                return True
        return False

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight (finished requests may still wait for :meth:`collect`)."""
        return not self._waiting and not self._by_slot

    @property
    def free_slots(self) -> int:
        """Image slots not yet claimed by a queued or in-flight request."""
        return max(0, len(self._free) - len(self._waiting))

    def step(self) -> bool:
        """Admit queued requests into free slots and run one round of batches; True if any work ran."""
        if self._active == 0:
            raise ConfigError("Engine.step needs an active engine: use `with engine:` (Engine.run does this)")
        while self._free and self._waiting:
            request, slot = self._waiting.popleft(), self._free.pop()
            self.executor.put_image(slot, request.image, request.seed, request.noise_id)
            self.scheduler.add_image(slot, request.policy)
            self._by_slot[slot] = request
        started = time.perf_counter()
        ran = self._round()
        share = (time.perf_counter() - started) / max(1, len(self._by_slot))
        for request in self._by_slot.values():  # each image's own time: its share of every step it was in
            request.policy.seconds += share
        for slot in self.scheduler.pop_finished():
            self._finished.append(self._by_slot.pop(slot))
            self._free.append(slot)
        if not ran and self._by_slot and self.scheduler.idle and not self._finished:
            raise RuntimeError("engine stalled: images in flight but no work to run")  # a policy bug
        return ran

    def collect(self) -> list[ImageRequest]:
        """The requests decided since the last call, in completion order (their policies hold the counts)."""
        out, self._finished = self._finished, []
        return out

    def run(self, requests: Iterable[ImageRequest],
            on_step: Callable[[EngineStats], None] | None = None) -> Iterator[ImageRequest]:
        """Stream ``requests`` through the engine (submitted lazily, as slots free up); yield each as its
        policy is decided (completion order). ``on_step`` sees the cumulative stats after every step
        (progress inside long images)."""
        pending = iter(requests)
        exhausted = False
        with self:
            while True:
                while not exhausted and self.free_slots:
                    request = next(pending, None)
                    if request is None:
                        exhausted = True
                    else:
                        self.submit(request)
                if exhausted and self.idle:
                    break
                self.step()
                if on_step is not None:
                    on_step(self.stats)
                yield from self.collect()
            yield from self.collect()

    def _round(self) -> bool:
        """Launch a classifier batch (on CUDA it overlaps what follows) and a UNet batch, then read the
        labels of the classifier batch launched in the previous round.

        Reading labels one round late keeps the device busy: by the time the host waits for them, this
        round's batches are already queued behind them. The order of scheduler calls does not change any
        count: every label is a function of its draw's and chain's noise keys, each queue is first-in
        first-out, and a chain slot is reused only after its draw's labels have been read.
        """
        scheduler = self.scheduler
        cls_rows = scheduler.next_classify(self.config.classifier_rows)
        launched = (cls_rows, self.executor.launch_classifier(cls_rows)) if cls_rows is not None else None
        ran = launched is not None
        if scheduler.uses_unet:
            rows = scheduler.next_unet(self.config.unet_rows)
            if rows is not None:
                self.executor.run_unet(rows)
                scheduler.unet_done(rows)
                ran = True
        if self._pending is not None:
            rows, pending = self._pending
            self._pending = None
            scheduler.classified(rows, pending.labels())
            ran = True
        self._pending = launched
        return ran

    def _check(self, request: ImageRequest) -> None:
        if not isinstance(request, ImageRequest) or not isinstance(request.policy, Policy):
            raise InputError(f"submit takes an ImageRequest with a Policy, got {type(request).__name__}")
        x = request.image
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != self.image_shape or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"image {request.key!r} must be a float tensor of shape {self.image_shape}, got {got}")
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"image {request.key!r} contains NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"image {request.key!r} must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]: "
                             "did you pass an already normalized image?")
        if self.smoothing.sound:
            grid_indices(x, self.smoothing.levels, name=f"image {request.key!r}")
        for name, value, bits in (("seed", request.seed, SEED_BITS), ("noise_id", request.noise_id, IMAGE_BITS)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 1 << bits:
                raise InputError(f"{name} of image {request.key!r} must be an integer in [0, 2**{bits}), got {value!r}")
        if request.policy.max_draws >= 1 << DRAW_BITS:
            raise InputError(f"image {request.key!r} asks for {request.policy.max_draws} draws in one phase; the "
                             f"noise counters hold at most 2**{DRAW_BITS} - 1")
