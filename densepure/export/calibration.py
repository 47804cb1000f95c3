"""Calibration data for INT8 graphs: the activations the deployed pipeline itself produces.

A DensePure chain visits only b fixed timesteps (t* and the coarse grid after it, ALGORITHM §4), so the
UNet's inputs in deployment are exactly: noisy starts ``y = sqrt(a)(2(x + delta) - 1)`` at the job's
sigma, then each reverse step's ``x_t`` fed with its own model timestep; and the classifier sees the
chains' final denoised images in [-1, 1]. :func:`pipeline_activations` runs that pipeline in float32
torch over calibration images (a split that is never the certified images) and returns those rows;
time-step-aware calibration in the spirit of Q-Diffusion (Li et al., ICCV 2023), restricted to the
timesteps the job runs. One-step modes record their one step, gaussian smoothing the noisy images.

Noise comes from one ``torch.Generator`` seeded with ``plan.seed`` and consumed in a fixed order, so
the same plan gives bit-identical rows (the reproducibility the export key relies on). One chain is run
per draw: the K chains of a draw differ only in their step noise, which a few draws per image cover.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from densepure.artifacts.manifest import ArtifactKind
from densepure.artifacts.quantized import CalibrationInfo
from densepure.diffusion import (
    GridTables,
    Mode,
    NoiseSchedule,
    SmoothingConfig,
    TStarRule,
    dds_forward_sample,
    noisy_input,
    reverse_step,
    start_point,
    validate_sigma,
)
from densepure.errors import ConfigError
from densepure.export.int8 import QUANTIZER_LIBRARY, Int8Spec, QuantizeSettings, quantizer_version

CHUNK_ROWS = 256  # rows per UNet call while recording (memory only: the rows do not depend on it)


@dataclass(frozen=True)
class CalibrationPlan:
    """What an INT8 export calibrates on.

    ``images``: ``(N, C, H, W)`` float32 in [0, 1], the calibration split; ``sigma``, ``mode``, ``steps``
    (b), ``t_star_rule``: the pipeline the graphs will run (a certify job with another sigma or grid is
    refused); ``draws``: noise draws per image; ``seed``: the noise; ``data``/``data_sha256``/``indices``:
    where the images came from (recorded, and checked against the certified images).
    """

    images: torch.Tensor
    sigma: float = 0.25
    mode: Mode = Mode.DENSEPURE
    steps: int = 2
    t_star_rule: TStarRule = TStarRule.AUTO
    draws: int = 4
    seed: int = 0
    data: str = ""
    data_sha256: str | None = None
    indices: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        object.__setattr__(self, "t_star_rule", TStarRule(self.t_star_rule))
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        x = self.images
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1:
            raise ConfigError(f"calibration images must be a (N, C, H, W) tensor with N >= 1, got "
                              f"{getattr(x, 'shape', type(x).__name__)}")
        if not torch.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise ConfigError(f"calibration images must be in [0, 1], got range [{float(x.min()):.3g}, "
                              f"{float(x.max()):.3g}]")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ConfigError(f"calibration draws per image must be an integer >= 1, got {self.draws!r}")
        if self.indices and len(self.indices) != x.shape[0]:
            raise ConfigError(f"{len(self.indices)} calibration indices for {x.shape[0]} images")
        object.__setattr__(self, "images", x.detach().to("cpu", torch.float32).contiguous())
        object.__setattr__(self, "sigma", validate_sigma(self.sigma))
        if self.mode is Mode.DENSEPURE and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                            or self.steps < 2):
            raise ConfigError(f"densepure calibration needs b >= 2 reverse steps, got {self.steps!r}")

    def smoothing(self, schedule: NoiseSchedule | None) -> SmoothingConfig:
        """The pipeline as the engine defines it (one chain per draw: chains differ only in step noise)."""
        steps = self.steps if self.mode is Mode.DENSEPURE else 1
        return SmoothingConfig(self.mode, self.sigma, 1, steps, self.t_star_rule, schedule)



@dataclass(frozen=True)
class PipelineActivations:
    """Rows the pipeline fed its models: UNet ``unet_x`` ``(R, C, H, W)`` with model timesteps ``unet_t``
    ``(R,)`` float32 (empty for gaussian), grouped by step; classifier inputs ``classifier_x``
    ``(M, C, H, W)`` in [-1, 1]; ``timesteps``: the model timesteps of the steps, in order."""

    unet_x: torch.Tensor
    unet_t: torch.Tensor
    classifier_x: torch.Tensor
    timesteps: tuple[float, ...]

    def unet_feeds(self) -> list[dict[str, np.ndarray]]:
        """The UNet rows as onnxruntime feeds, one per :data:`CHUNK_ROWS` rows, in order."""
        return [{"x": self.unet_x[s:s + CHUNK_ROWS].numpy(), "t": self.unet_t[s:s + CHUNK_ROWS].numpy()}
                for s in range(0, self.unet_x.shape[0], CHUNK_ROWS)]

    def classifier_feeds(self) -> list[dict[str, np.ndarray]]:
        return [{"x": self.classifier_x[s:s + CHUNK_ROWS].numpy()}
                for s in range(0, self.classifier_x.shape[0], CHUNK_ROWS)]


@torch.no_grad()
def pipeline_activations(plan: CalibrationPlan, unet, schedule: NoiseSchedule | None,
                         seed_offset: int = 0) -> PipelineActivations:
    """Run the plan's pipeline with the float32 ``unet`` (``eps_and_var(x, t_model)``; None for gaussian)
    over every calibration image x ``plan.draws`` and record each model input (module doc).
    ``seed_offset`` draws other noise from the same images (held-out rows for the export's check)."""
    smoothing = plan.smoothing(schedule)
    if smoothing.needs_denoiser and unet is None:
        raise ConfigError(f"calibrating for mode {plan.mode.value} needs the UNet (it makes the denoised images)")
    gen = torch.Generator().manual_seed(int(plan.seed) + int(seed_offset))
    grid = smoothing.grid()
    tables = GridTables(grid, torch.device("cpu")) if grid is not None else None
    x_all = plan.images.repeat_interleave(plan.draws, dim=0)  # rows: image-major, draw-minor
    steps = 0 if grid is None else grid.num_steps
    per_step: list[list[torch.Tensor]] = [[] for _ in range(steps)]
    finals = []
    for s in range(0, x_all.shape[0], CHUNK_ROWS):
        x = x_all[s:s + CHUNK_ROWS]
        y = _start(smoothing, x, gen)
        for i in range(steps):
            c = tables.gather(torch.full((x.shape[0],), i, dtype=torch.int64))
            per_step[i].append(y.clone())
            eps, v = unet.eps_and_var(y, c.model_time)
            z = torch.randn(y.shape, generator=gen) if grid.has_noise[i] else None
            y, _ = reverse_step(y, eps.float(), v.float(), c, z)
        finals.append(y)  # x0_hat (clipped by the last step), or the noisy image for gaussian
    times = () if grid is None else tuple(float(t) for t in grid.model_times)
    unet_x = torch.cat([x for rows in per_step for x in rows]) if steps else plan.images[:0]
    unet_t = torch.repeat_interleave(torch.tensor(times, dtype=torch.float32), x_all.shape[0]) if steps \
        else torch.zeros(0, dtype=torch.float32)
    return PipelineActivations(unet_x.contiguous(), unet_t, torch.cat(finals).contiguous(), times)


def _start(smoothing: SmoothingConfig, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The first model input of each row: DensePure's start, the DDS forward sample, or the noisy image."""
    noise = torch.randn(x.shape, generator=gen)
    if smoothing.mode is Mode.ONESTEP_DDS:
        return dds_forward_sample(x, noise, float(smoothing.grid().alphas_cumprod[0]))
    delta = smoothing.sigma * noise
    if smoothing.mode is Mode.GAUSSIAN:
        return noisy_input(x, delta)
    return start_point(x, delta, smoothing.sigma)


VERIFY_ROWS = 8  # held-out rows the export checks an int8 graph on (not the traced batch of 2)


def int8_specs(plan: CalibrationPlan, settings: QuantizeSettings, unet, schedule: NoiseSchedule | None,
               kinds: Sequence[ArtifactKind]) -> dict[ArtifactKind, Int8Spec]:
    """``{ArtifactKind: Int8Spec}`` for the ``kinds`` to export: the pipeline is run once for calibration
    and once, with other noise, for the held-out rows each graph is checked on."""
    if ArtifactKind.UNET in kinds and plan.mode is Mode.GAUSSIAN:
        raise ConfigError("gaussian smoothing never runs the UNet, so a gaussian calibration has no UNet rows: "
                          "export the classifier alone (--no-unet) or calibrate for a denoising mode")
    acts = pipeline_activations(plan, unet, schedule)
    held = pipeline_activations(plan, unet, schedule, seed_offset=1)
    version = quantizer_version()
    steps = {Mode.DENSEPURE: plan.steps, Mode.GAUSSIAN: 0}.get(plan.mode, 1)
    info = CalibrationInfo(plan.sigma, plan.mode.value, steps, plan.t_star_rule.value, acts.timesteps,
                           int(plan.images.shape[0]), plan.draws, int(acts.unet_x.shape[0]),
                           int(acts.classifier_x.shape[0]), plan.data, plan.data_sha256, plan.indices,
                           settings.describe_method(), settings.placement.value,
                           tuple(k.value for k in settings.keep_float), plan.seed, QUANTIZER_LIBRARY, version)
    out = {}
    for kind in kinds:
        unet_kind = kind is ArtifactKind.UNET
        feeds = acts.unet_feeds() if unet_kind else acts.classifier_feeds()
        rows = held.unet_x.shape[0] if unet_kind else held.classifier_x.shape[0]
        pick = torch.linspace(0, rows - 1, min(VERIFY_ROWS, rows)).round().long().unique()
        pick = pick[:1] if len(pick) == 2 else pick  # the export traces at batch 2 and checks at another
        check = (held.unet_x[pick], held.unet_t[pick]) if unet_kind else (held.classifier_x[pick],)
        out[kind] = Int8Spec(feeds, check, info, settings, _digest(kind.value, feeds, check, settings, info))
    return out


def _digest(kind: str, feeds: list, check: tuple, settings, info) -> str:
    """sha256 of the rows themselves (so also of the UNet weights that made them), the settings and the
    record (quantizer version included): what an int8 graph depends on beyond its own weights."""
    h = hashlib.sha256(repr((kind, settings, info)).encode())
    for feed in feeds:
        for name in sorted(feed):
            h.update(name.encode() + np.ascontiguousarray(feed[name]).tobytes())
    for t in check:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()
