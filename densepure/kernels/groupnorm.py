"""GroupNorm (+ scale-shift) + SiLU: the torch reference, i.e. the UNet's own composition.

``h = GroupNorm32(x)`` (statistics and affine in float32, result cast back to ``x.dtype``), then,
with the timestep modulation of a scale-shift ResBlock, ``h = h * (1 + scale) + shift`` in
``x.dtype``, then ``SiLU(h) = h * sigmoid(h)`` in ``x.dtype`` (Nichol & Dhariwal 2021, the
improved-diffusion ResBlock; ALGORITHM.md §10 for the float32 statistics). The fused Triton kernel
(:mod:`densepure.kernels.groupnorm_triton`) computes everything in float32 and rounds once, so it
agrees with this reference to a dtype-dependent tolerance (:data:`TOLERANCE`), not bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from densepure.errors import InputError

__all__ = ["TOLERANCE", "check_group_norm_silu", "group_norm_silu"]

# (rtol, atol) between the fused kernel and this reference, per I/O dtype: the reference rounds to
# the dtype after each of its 4-5 ops, the kernel once (fp16 / bf16: a few ulps of 2^-11 / 2^-8).
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def check_group_norm_silu(x, weight, bias, groups, eps, scale, shift) -> tuple[torch.Tensor | None, ...]:
    """Validate a call; returns ``(scale, shift)`` as ``(B, C)`` views (or Nones)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype not in TOLERANCE:
        raise InputError(f"x must be a (B, C, H, W) float32/float16/bfloat16 tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    b, c = x.shape[:2]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c % groups:
        raise InputError(f"groups must be a positive divisor of the {c} channels, got {groups!r}")
    if not (isinstance(eps, float) and eps > 0):
        raise InputError(f"eps must be a float > 0, got {eps!r}")
    for name, p in (("weight", weight), ("bias", bias)):
        if not isinstance(p, torch.Tensor) or p.shape != (c,) or not p.dtype.is_floating_point \
                or p.device != x.device:
            raise InputError(f"{name} must be a ({c},) float tensor on {x.device}, got {p!r:.80}")
    if (scale is None) != (shift is None):
        raise InputError("scale and shift go together: pass both or neither")
    if scale is None:
        return None, None
    flat = []
    for name, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, torch.Tensor) or t.shape not in ((b, c), (b, c, 1, 1)) or t.dtype != x.dtype \
                or t.device != x.device:
            raise InputError(f"{name} must be a ({b}, {c}) or ({b}, {c}, 1, 1) {x.dtype} tensor on {x.device}, "
                             f"got {getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        flat.append(t.reshape(b, c))
    return flat[0], flat[1]


def group_norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
                    scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``SiLU(GroupNorm32(x) [* (1 + scale) + shift])`` exactly as :class:`densepure.models.unet.ResBlock` does.

    ``x``: ``(B, C, H, W)`` float32/float16/bfloat16, any memory format; ``weight``, ``bias``: ``(C,)``
    (used in float32); ``scale``, ``shift``: ``(B, C)`` or ``(B, C, 1, 1)`` in ``x.dtype``, or both None.
    Returns ``x.dtype``, shape of ``x``.
    """
    scale, shift = check_group_norm_silu(x, weight, bias, groups, eps, scale, shift)
    h = F.group_norm(x.float(), groups, weight.float(), bias.float(), eps).to(x.dtype)
    if scale is not None:
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    return F.silu(h)
