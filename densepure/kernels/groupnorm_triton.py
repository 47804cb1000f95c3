"""Fused GroupNorm (+ scale-shift) + SiLU in Triton: one read for the statistics, one read and one write.

One program per (sample, group). Pass 1 walks the group in tiles of ``BLOCK_C`` channels by
``BLOCK_HW`` pixels and merges per-tile float32 means and squared deviations (Chan, Golub & LeVeque
1979), which stays accurate when ``|mean| >> std``. Pass 2 writes
``silu(((x - mean) rstd w_c + b_c) (1 + scale_bc) + shift_bc)`` computed in float32 and rounded once to
``x.dtype``, with ``rstd = 1/sqrt(var + eps)`` and the biased variance (as ``F.group_norm``).

Layouts: any strides whose H and W dimensions flatten into one (NCHW contiguous and channels-last
both do); anything else is made contiguous first. The output has the input's strides.

The kernel is registered as the custom op ``densepure::group_norm_silu`` so that ``torch.compile``
keeps it as one opaque call (no graph break) and CUDA-graph capture sees an ordinary launch.
Reference and tolerance: :mod:`densepure.kernels.groupnorm`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from densepure.kernels.groupnorm import check_group_norm_silu

__all__ = ["INTERPRETED", "group_norm_silu"]

_TILE = 4096  # elements per tile (BLOCK_C * BLOCK_HW)


@triton.jit
def _group_stats(x_ptr, base, ch, ch_ok, sc, shw, hw_size, BLOCK_HW: tl.constexpr):
    """float32 ``(mean, m2)`` of one group: tile means and squared deviations merged in turn."""
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, hw_size, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = ch_ok[:, None] & (hw < hw_size)[None, :]
        x = tl.load(x_ptr + base + ch[:, None] * sc + hw[None, :] * shw, mask=ok, other=0.0).to(tl.float32)
        n = tl.sum(ok.to(tl.float32))
        tile_mean = tl.sum(x) / n
        dev = tl.where(ok, x - tile_mean, 0.0)
        tile_m2 = tl.sum(dev * dev)
        total = count + n
        delta = tile_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + tile_m2 + delta * delta * (count * n / total)
        count = total
    return mean, m2 / count


@triton.jit
def _gn_silu_kernel(x_ptr, out_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, groups, group_ch, hw_size,
                    sxb, sxc, sxhw, sob, soc, sohw, ss_b, ss_c, eps,
                    SCALE_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // groups).to(tl.int64)
    ch = (pid % groups) * group_ch + tl.arange(0, BLOCK_C)
    ch_ok = tl.arange(0, BLOCK_C) < group_ch
    mean, var = _group_stats(x_ptr, b * sxb, ch, ch_ok, sxc, sxhw, hw_size, BLOCK_HW)
    rstd = 1.0 / tl.sqrt(var + eps)
    gain = tl.load(w_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32) * rstd
    offset = tl.load(b_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)
    if SCALE_SHIFT:
        factor = 1.0 + tl.load(scale_ptr + b * ss_b + ch * ss_c, mask=ch_ok, other=0.0).to(tl.float32)
        gain = gain * factor
        offset = offset * factor + tl.load(shift_ptr + b * ss_b + ch * ss_c, mask=ch_ok, other=0.0).to(tl.float32)
    for start in range(0, hw_size, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = ch_ok[:, None] & (hw < hw_size)[None, :]
        x = tl.load(x_ptr + b * sxb + ch[:, None] * sxc + hw[None, :] * sxhw, mask=ok, other=0.0).to(tl.float32)
        h = (x - mean) * gain[:, None] + offset[:, None]  # centre first: no cancellation when |mean| >> std
        e = tl.exp(-tl.abs(h))  # sigmoid without overflow: e in (0, 1]
        h = h * tl.where(h >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        tl.store(out_ptr + b * sob + ch[:, None] * soc + hw[None, :] * sohw, h.to(out_ptr.dtype.element_ty),
                 mask=ok)


INTERPRETED = not isinstance(_gn_silu_kernel, triton.runtime.JITFunction)  # fixed at this module's import


def _flat_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """``(batch, channel, pixel)`` strides if H and W flatten into one pixel index, else None."""
    _, _, h, w = t.shape
    sb, sc, sh, sw = t.stride()
    if h > 1 and w > 1 and sh != w * sw:
        return None
    return sb, sc, (sw if w > 1 else sh)


def _prepared(x: torch.Tensor) -> torch.Tensor:
    return x if _flat_strides(x) is not None else x.contiguous()


def _launch(x, weight, bias, groups, eps, scale, shift, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch into ``out`` (a tensor like ``x`` whose H and W flatten; the tests pass a poisoned one)."""
    x = _prepared(x)
    if out is None:
        out = torch.empty_like(x)  # x's strides when x is dense, else contiguous: both flatten H and W
    strides, out_strides = _flat_strides(x), _flat_strides(out)
    b, c, h, w = x.shape
    if x.numel() == 0:
        return out
    group_ch = c // groups
    block_c = triton.next_power_of_2(group_ch)
    block_hw = max(1, min(triton.next_power_of_2(h * w), _TILE // block_c))
    has_ss = scale is not None
    ss = (scale, shift, scale.stride(0), scale.stride(1)) if has_ss else (x, x, 0, 0)
    _gn_silu_kernel[(b * groups,)](x, out, weight, bias, ss[0], ss[1], groups, group_ch, h * w, *strides,
                                   *out_strides, ss[2], ss[3], float(eps), SCALE_SHIFT=has_ss,
                                   BLOCK_C=block_c, BLOCK_HW=block_hw)
    return out


@torch.library.custom_op("densepure::group_norm_silu", mutates_args=())
def _group_norm_silu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
                        scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    return _launch(x, weight, bias, groups, eps, scale, shift)


@_group_norm_silu_op.register_fake
def _(x, weight, bias, groups, eps, scale, shift):
    return torch.empty_like(_prepared(x))


def group_norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
                    scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`densepure.kernels.groupnorm.group_norm_silu` in one launch (same arguments, ``x.dtype`` result)."""
    scale, shift = check_group_norm_silu(x, weight, bias, groups, eps, scale, shift)
    return _group_norm_silu_op(x, weight, bias, groups, eps, scale, shift)
