"""The engine: streams images through the scheduler and executor until each policy is decided.

Images are admitted into a fixed number of slots and leave as soon as their policy is done, so the
UNet and classifier batches are refilled across images continuously. Counts are identical to the
plain path's (``densepure.certify.base.BaseClassifier``) for the same seed: every noise value is a
function of its identity, the vote's early exit is exact, and policies read prefixes of draws.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from densepure.diffusion import NoiseSchedule, build_reverse_grid, onestep_grid, t_star
from densepure.diffusion.tstar import t_star_dds
from densepure.engine.backends.base import ClassifierBackend, DenoiserBackend
from densepure.engine.executor import Executor, StartKind
from densepure.engine.policy import Policy
from densepure.engine.scheduler import Scheduler, check_prefixes
from densepure.errors import ConfigError


@dataclass(frozen=True)
class EngineConfig:
    """Batch and pool sizes. ``unet_rows``/``classifier_rows``: rows per model call;
    ``draw_capacity``: draws in flight; ``image_slots``: images in flight; ``early_exit`` of the vote."""

    unet_rows: int = 512
    classifier_rows: int = 512
    draw_capacity: int = 1024
    image_slots: int = 8
    early_exit: bool = True

    def __post_init__(self) -> None:
        for name in ("unet_rows", "classifier_rows", "draw_capacity", "image_slots"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EngineStats:
    unet_rows: int
    classifier_rows: int


def engine_grid(mode: str, sigma: float, steps: int, schedule: NoiseSchedule | None, t_star_rule):
    """(grid, start kind) for a base-classifier mode ('gaussian', 'onestep', 'onestep-dds', 'densepure')."""
    if mode == "gaussian":
        return None, StartKind.GAUSSIAN
    if mode == "onestep-dds":
        return onestep_grid(schedule, t_star_dds(sigma, schedule)), StartKind.DDS
    ts = t_star(sigma, schedule, t_star_rule)
    if mode == "onestep":
        return onestep_grid(schedule, round(ts)), StartKind.DENSEPURE
    return build_reverse_grid(schedule, ts, steps), StartKind.DENSEPURE


class Engine:
    """Runs base-classifier draws for many images at once. See the module docstring."""

    def __init__(self, *, mode: str, sigma: float, chains: int, steps: int, num_classes: int,
                 classifier: ClassifierBackend, denoiser: DenoiserBackend | None = None,
                 schedule: NoiseSchedule | None = None, t_star_rule=None, seed: int = 0,
                 image_shape: tuple[int, int, int], device: torch.device, config: EngineConfig = EngineConfig(),
                 chain_prefixes: tuple[int, ...] = ()):
        from densepure.diffusion import TStarRule

        grid, start = engine_grid(mode, sigma, steps, schedule, t_star_rule or TStarRule.AUTO)
        if grid is not None and denoiser is None:
            raise ConfigError(f"mode {mode} needs a denoiser")
        self.config, self.num_classes = config, int(num_classes)
        chains = chains if mode == "densepure" else 1
        if chain_prefixes and mode != "densepure":
            raise ConfigError(f"chain prefixes need densepure mode, not {mode}")
        try:
            check_prefixes(tuple(chain_prefixes), chains, config.early_exit)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.grid_steps = grid.num_steps if grid is not None else 1
        self.denoiser, self.classifier = denoiser, classifier
        self.scheduler_args = dict(steps=self.grid_steps, chains=chains, num_classes=num_classes,
                                   draw_capacity=config.draw_capacity, uses_unet=grid is not None,
                                   early_exit=config.early_exit, prefixes=tuple(chain_prefixes))
        self.executor = Executor(denoiser, classifier, grid, start, sigma, seed, tuple(image_shape),
                                 config.image_slots, config.draw_capacity, chains, device)
        self.stats = EngineStats(0, 0)

    def run(self, jobs: Iterable[tuple[int, torch.Tensor, Policy]]) -> Iterator[tuple[int, Policy]]:
        """Yield ``(image_index, policy)`` as each image's policy is decided (completion order)."""
        scheduler = Scheduler(**self.scheduler_args)
        ids = np.zeros(self.config.image_slots, dtype=np.int64)
        self.executor.set_image_ids(ids)
        free = list(range(self.config.image_slots))[::-1]
        waiting = iter(jobs)
        exhausted = False
        by_slot: dict[int, tuple[int, Policy]] = {}
        with _active(self.denoiser), _active(self.classifier):
            while True:
                while free and not exhausted:
                    job = next(waiting, None)
                    if job is None:
                        exhausted = True
                        break
                    slot = free.pop()
                    ids[slot] = job[0]
                    self.executor.put_image(slot, job[1])
                    scheduler.add_image(slot, job[2])
                    by_slot[slot] = (job[0], job[2])
                ran = self._step(scheduler)
                for slot in scheduler.pop_finished():
                    free.append(slot)
                    yield by_slot.pop(slot)
                if not ran and not by_slot and exhausted:
                    break
                if not ran and by_slot and not free and scheduler.idle:
                    raise RuntimeError("engine stalled: images in flight but no work to run")  # a policy bug
        self.stats = EngineStats(self.stats.unet_rows + scheduler.unet_rows,
                                 self.stats.classifier_rows + scheduler.cls_rows)

    def _step(self, scheduler: Scheduler) -> bool:
        """One classifier batch (launched first: on CUDA it overlaps the UNet) and one UNet batch.

        The order of scheduler calls does not change any count: every label is a function of its
        draw's and chain's noise keys, and each queue is first-in first-out.
        """
        cls_rows = scheduler.next_classify(self.config.classifier_rows)
        pending = self.executor.launch_classifier(cls_rows) if cls_rows is not None else None
        ran = cls_rows is not None
        if scheduler.uses_unet:
            rows = scheduler.next_unet(self.config.unet_rows)
            if rows is not None:
                self.executor.run_unet(rows)
                scheduler.unet_done(rows)
                ran = True
        if pending is not None:
            scheduler.classified(cls_rows, pending.labels())
        return ran


class _active:
    """Keep a backend active for the whole run (None is allowed)."""

    def __init__(self, backend):
        self.backend = backend

    def __enter__(self):
        if self.backend is not None:
            self.backend.__enter__()

    def __exit__(self, *exc):
        if self.backend is not None:
            self.backend.__exit__(*exc)
