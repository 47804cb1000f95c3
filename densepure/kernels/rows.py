"""The engine's per-row start, spawn and reverse-step arithmetic with keyed noise: the torch references.

These functions are exactly what the engine's executor computes inline (same torch ops in the same
order, in float32), so swapping the inline code for them changes no bit. Their Triton counterparts in
:mod:`densepure.kernels.rows_triton` fuse each call into one kernel launch; both share the input
checks of :func:`check_start`, :func:`check_spawn` and :func:`check_step`.

Row kinds (ALGORITHM.md §3-§6; ``shape = (C, H, W)``, every image tensor float32, ``z`` the standard
normal field of a row's words, :func:`densepure.noise.gaussian_words`):

* start (:func:`start_rows`): ``x = images[image_slot]`` and, by :class:`StartKind`,
  DENSEPURE ``y = sqrt(a) (2 (x + sigma z) - 1)`` with ``a = 1/(1 + 4 sigma^2)``,
  GAUSSIAN ``y = 2 (x + sigma z) - 1``, DDS ``y = sqrt(abar) (2x - 1) + sqrt(1 - abar) z``.
  With a sound table (:attr:`StartRule.table`) the images hold integer grid indices ``x_int`` and the
  noise is ``j``, integer grid steps (:func:`densepure.noise.sound_steps_words`): the grid value is
  ``v = (x_int + j) * fl(1/levels)``, and DENSEPURE ``y = sqrt(a) (2v - 1)``, GAUSSIAN ``y = 1 * (2v - 1)``,
  DDS ``y = sqrt(abar) (2v - 1)`` (its ``j`` from the table of the effective noise level). Every
  operation after the integer sum is a fixed float32 function of ``x_int + j``, so the model input
  is a function of the grid index alone (docs/guarantees.md).
* spawn (:func:`spawn_rows`): ``y = mean[draw_slot] + std[draw_slot] z`` (a chain leaving the shared
  first step of its draw).
* step (:func:`step_rows`): ``(mean, std) = step_mean_std(y, eps, v, coeffs)`` per row (ALGORITHM
  §5); :class:`KeepRows` store ``mean`` and ``std`` (the shared first step of a draw),
  :class:`AdvanceRows` store ``mean + std z`` (``mean`` alone where the row's ``noise_mask`` is 0).

Python float constants (sigma, sqrt(a), ...) are rounded once to float32 before use, as torch does
for a Python scalar times a float32 tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from densepure.diffusion import (
    StartKind,
    StepCoefficients,
    dds_forward_sample,
    dds_noise_sigma,
    start_point,
    start_scale,
    step_mean_std,
    validate_sigma,
)
from densepure.errors import ConfigError, InputError
from densepure.kernels.checks import check_index, check_words, float_rows, writable_rows
from densepure.noise import SoundTable, gaussian_words, sound_steps_words

__all__ = ["AdvanceRows", "KeepRows", "StartRule", "check_spawn", "check_start", "check_step",
           "spawn_rows", "start_rows", "step_rows"]


@dataclass(frozen=True)
class StartRule:
    """One start form and its constant: ``sigma`` (> 0) for DENSEPURE and GAUSSIAN, ``alpha_bar``
    (in (0, 1)) for DDS, the other left None. ``table``: the sound noise's table (its ``sigma`` the
    rule's, or for DDS the effective ``sqrt((1 - abar) / abar) / 2`` or more); None for float noise."""

    form: StartKind
    sigma: float | None = None
    alpha_bar: float | None = None
    table: SoundTable | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "form", StartKind(self.form))
        if self.table is not None and not isinstance(self.table, SoundTable):
            raise ConfigError(f"table must be a SoundTable or None, got {type(self.table).__name__}")
        if self.form is StartKind.DDS:
            if self.sigma is not None or self.alpha_bar is None:
                raise ConfigError(f"a DDS start takes alpha_bar and no sigma, got sigma={self.sigma!r}, "
                                  f"alpha_bar={self.alpha_bar!r}")
            abar = float(self.alpha_bar)
            if not 0.0 < abar < 1.0:
                raise ConfigError(f"alpha_bar must be in (0, 1), got {self.alpha_bar!r}")
            object.__setattr__(self, "alpha_bar", abar)
        else:
            if self.alpha_bar is not None or self.sigma is None:
                raise ConfigError(f"a {self.form.value} start takes sigma and no alpha_bar, got "
                                  f"sigma={self.sigma!r}, alpha_bar={self.alpha_bar!r}")
            object.__setattr__(self, "sigma", validate_sigma(self.sigma))
        if self.table is not None:
            want = dds_noise_sigma(self.alpha_bar) if self.form is StartKind.DDS else self.sigma
            if self.table.sigma != want:
                raise ConfigError(f"a sound {self.form.value} start needs the table of sigma {want!r}, got "
                                  f"{self.table.sigma!r}")

    def constants(self) -> tuple[float, float]:
        """``(a, b)`` as Python floats: DENSEPURE ``(sqrt(1/(1+4 sigma^2)), sigma)``, GAUSSIAN
        ``(1, sigma)``, DDS ``(sqrt(abar), sqrt(1 - abar))``; each is rounded to float32 where used."""
        if self.form is StartKind.DDS:
            return math.sqrt(self.alpha_bar), math.sqrt(1.0 - self.alpha_bar)
        if self.form is StartKind.GAUSSIAN:
            return 1.0, self.sigma
        return math.sqrt(start_scale(self.sigma)), self.sigma

    @property
    def sound(self) -> bool:
        return self.table is not None

    def grid_constants(self) -> tuple[float, float]:
        """Sound starts: ``(scale, step)`` with ``y = scale * (2 (x_int + j) step - 1)``: scale ``sqrt(a)``
        (DENSEPURE), 1 (GAUSSIAN) or ``sqrt(abar)`` (DDS); step ``1 / levels``. Rounded to float32 where used."""
        if self.table is None:
            raise ConfigError("grid constants belong to a sound start (a rule with a table)")
        return self.constants()[0], 1.0 / self.table.levels


@dataclass(frozen=True, eq=False)
class KeepRows:
    """Rows of a step whose ``(mean, std)`` are kept: ``mean_out[slots[i]] = mean[rows[i]]`` and
    ``std_out[slots[i]] = std[rows[i]]``. ``rows``, ``slots``: ``(R,)`` int64 (``slots`` distinct);
    ``mean_out``, ``std_out``: ``(D, C, H, W)`` float32 pools with C-contiguous rows."""

    rows: torch.Tensor
    slots: torch.Tensor
    mean_out: torch.Tensor
    std_out: torch.Tensor


@dataclass(frozen=True, eq=False)
class AdvanceRows:
    """Rows of a step that move on: ``out[slots[i]] = mean[r] + std[r] z_i`` with ``r = rows[i]`` and
    ``z_i`` the normal field of ``words[i]``, or ``mean[r]`` where ``noise_mask[r] == 0`` (its words are
    then not read). ``rows``, ``slots``: ``(R,)`` int64 (``slots`` distinct); ``words``: ``(R, 6)``
    int64; ``out``: ``(S, C, H, W)`` float32 with C-contiguous rows, not aliasing the step's inputs.

    ``noisy`` (optional, a host ``(N,)`` int64 tensor): the positions ``i`` whose row takes noise, when
    the caller knows them (the engine does, from the grid). The torch reference then reads no mask from
    the device (no synchronisation); kernels that read the mask on the device ignore it."""

    rows: torch.Tensor
    slots: torch.Tensor
    words: torch.Tensor
    out: torch.Tensor
    noisy: torch.Tensor | None = None


def _scatter(out: torch.Tensor | None, out_rows: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    if out is None:
        return y
    out[out_rows] = y
    return out


def _check_out(out, out_rows, device, shape, rows: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if (out is None) != (out_rows is None):
        raise InputError("out and out_rows go together: pass both or neither")
    if out is None:
        return None, None
    return writable_rows(out, "out", device, shape), check_index(out_rows, "out_rows", device, rows)


def check_start(images, image_slot, words, rule, out, out_rows):
    """Validated ``(images, image_slot, words, out, out_rows)`` of a :func:`start_rows` call."""
    if not isinstance(rule, StartRule):
        raise InputError(f"rule must be a StartRule, got {type(rule).__name__}")
    device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    images = float_rows(images, "images", device)
    image_slot = check_index(image_slot, "image_slot", device)
    words = check_words(words, device, image_slot.shape[0])
    return (images, image_slot, words, *_check_out(out, out_rows, device, tuple(images.shape[1:]),
                                                   image_slot.shape[0]))


def check_spawn(mean, std, draw_slot, words, out, out_rows):
    """Validated ``(mean, std, draw_slot, words, out, out_rows)`` of a :func:`spawn_rows` call."""
    device = mean.device if isinstance(mean, torch.Tensor) else torch.device("cpu")
    mean = float_rows(mean, "mean", device)
    shape = tuple(mean.shape[1:])
    std = float_rows(std, "std", device, shape)
    draw_slot = check_index(draw_slot, "draw_slot", device)
    words = check_words(words, device, draw_slot.shape[0])
    return (mean, std, draw_slot, words, *_check_out(out, out_rows, device, shape, draw_slot.shape[0]))


def check_step(y, eps, v, coeffs, keep, advance):
    """Validated ``(y, eps, v, keep, advance)`` of a :func:`step_rows` call (rows made contiguous)."""
    device = y.device if isinstance(y, torch.Tensor) else torch.device("cpu")
    y = float_rows(y, "y", device)
    shape, batch = tuple(y.shape[1:]), y.shape[0]
    eps, v = float_rows(eps, "eps", device, shape), float_rows(v, "v", device, shape)
    if eps.shape[0] != batch or v.shape[0] != batch:
        raise InputError(f"y, eps and v must have the same rows, got {batch}, {eps.shape[0]}, {v.shape[0]}")
    if not isinstance(coeffs, StepCoefficients):
        raise InputError(f"coeffs must be StepCoefficients, got {type(coeffs).__name__}")
    for name, c in vars(coeffs).items():
        if not isinstance(c, torch.Tensor) or c.shape != (batch,) or c.dtype != torch.float32 or c.device != device:
            raise InputError(f"coeffs.{name} must be a ({batch},) float32 tensor on {device}, got {c!r:.80}")
    if keep is not None:
        if not isinstance(keep, KeepRows):
            raise InputError(f"keep must be KeepRows, got {type(keep).__name__}")
        rows = check_index(keep.rows, "keep.rows", device)
        keep = KeepRows(rows, check_index(keep.slots, "keep.slots", device, rows.shape[0]),
                        writable_rows(keep.mean_out, "keep.mean_out", device, shape),
                        writable_rows(keep.std_out, "keep.std_out", device, shape))
    if advance is not None:
        if not isinstance(advance, AdvanceRows):
            raise InputError(f"advance must be AdvanceRows, got {type(advance).__name__}")
        rows = check_index(advance.rows, "advance.rows", device)
        advance = AdvanceRows(rows, check_index(advance.slots, "advance.slots", device, rows.shape[0]),
                              check_words(advance.words, device, rows.shape[0]),
                              writable_rows(advance.out, "advance.out", device, shape), advance.noisy)
    return y, eps, v, keep, advance


def start_rows(images: torch.Tensor, image_slot: torch.Tensor, words: torch.Tensor, rule: StartRule,
               out: torch.Tensor | None = None, out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Start points of ``R`` rows (module docstring), float32 ``(R, C, H, W)``.

    ``images``: ``(I, C, H, W)`` float32 clean images in [0, 1] (sound rules: their integer grid
    indices ``0 .. levels``); ``image_slot``: ``(R,)`` int64 rows of ``images``; ``words``: ``(R, 6)`` int64 row words of the DELTA stream (FORWARD for DDS). With
    ``out`` (``(N, C, H, W)`` float32) and ``out_rows`` (``(R,)`` int64), row ``i`` is written to
    ``out[out_rows[i]]`` and ``out`` is returned.
    """
    images, image_slot, words, out, out_rows = check_start(images, image_slot, words, rule, out, out_rows)
    x = images[image_slot]
    if rule.sound:
        return _scatter(out, out_rows, _sound_start(x, words, rule))
    z = gaussian_words(words, tuple(images.shape[1:]), images.device)
    if rule.form is StartKind.DDS:
        return _scatter(out, out_rows, dds_forward_sample(x, z, rule.alpha_bar))
    delta = rule.sigma * z
    if rule.form is StartKind.GAUSSIAN:
        return _scatter(out, out_rows, 2.0 * (x + delta) - 1.0)
    return _scatter(out, out_rows, start_point(x, delta, rule.sigma))


def _sound_start(x_int: torch.Tensor, words: torch.Tensor, rule: StartRule) -> torch.Tensor:
    """``scale * (2 (x_int + j) step - 1)`` in float32 (:meth:`StartRule.grid_constants`)."""
    j = sound_steps_words(words, tuple(x_int.shape[1:]), rule.table, x_int.device)
    scale, step = rule.grid_constants()
    y = (x_int + j.to(torch.float32)).mul_(step).mul_(2.0).sub_(1.0)
    return y if scale == 1.0 else y.mul_(scale)  # times 1.0 would change no bit


def spawn_rows(mean: torch.Tensor, std: torch.Tensor, draw_slot: torch.Tensor, words: torch.Tensor,
               out: torch.Tensor | None = None, out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """``mean[draw_slot] + std[draw_slot] * z``: float32 ``(R, C, H, W)`` (or ``out``, as in :func:`start_rows`).

    ``mean``, ``std``: ``(D, C, H, W)`` float32 pools of the shared first steps; ``draw_slot``: ``(R,)``
    int64; ``words``: ``(R, 6)`` int64 CHAIN-stream row words (chain k, step 0).
    """
    mean, std, draw_slot, words, out, out_rows = check_spawn(mean, std, draw_slot, words, out, out_rows)
    z = gaussian_words(words, tuple(mean.shape[1:]), mean.device)
    return _scatter(out, out_rows, mean[draw_slot] + std[draw_slot] * z)


def step_rows(y: torch.Tensor, eps: torch.Tensor, v: torch.Tensor, coeffs: StepCoefficients,
              keep: KeepRows | None = None, advance: AdvanceRows | None = None) -> None:
    """One reverse step of a batch (ALGORITHM §5), stored for the :class:`KeepRows` and :class:`AdvanceRows`.

    ``y``, ``eps``, ``v``: ``(B, C, H, W)`` float32 (the model's ``eps`` and ``v`` halves may be
    strided views); ``coeffs``: per batch row, every field ``(B,)`` float32
    (:meth:`densepure.diffusion.GridTables.gather`). Writes the outputs in place; returns None.
    This reference reads ``noise_mask`` on the host (one synchronization per call with ``advance``)
    unless ``advance.noisy`` gives the noisy positions.
    """
    y, eps, v, keep, advance = check_step(y, eps, v, coeffs, keep, advance)
    if keep is None and advance is None:
        return
    mean, std, _ = step_mean_std(y, eps, v, coeffs)
    if keep is not None:
        keep.mean_out[keep.slots], keep.std_out[keep.slots] = mean[keep.rows], std[keep.rows]
    if advance is not None:
        new = mean[advance.rows]
        noisy = advance.noisy.to(y.device) if advance.noisy is not None else \
            torch.nonzero(coeffs.noise_mask[advance.rows] != 0).flatten()
        if noisy.numel():
            z = gaussian_words(advance.words[noisy], tuple(y.shape[1:]), y.device)
            new[noisy] += std[advance.rows[noisy]] * z
        advance.out[advance.slots] = new

