"""Philox4x32 (Salmon, Moraes, Dror, Shaw, SC'11) in plain torch int64 tensor ops.

uint32 arithmetic is emulated in int64 so that CPU and CUDA produce identical words; the keying and
counter layout that turn these words into the engine's noise are in :mod:`densepure.noise.keys`.
"""

from __future__ import annotations

import torch

from densepure.errors import InputError

__all__ = ["MASK32", "mulhilo", "philox", "philox4x32"]

MASK32 = 0xFFFFFFFF
# Philox4x32 multipliers and Weyl key increments (Salmon et al. 2011, Random123 philox.h).
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product ``a * m`` for uint32 ``a`` (int64) and ``m``.

    The full product can reach 2**64 and overflow int64, so ``m`` is split into 16-bit halves:
    each partial product is < 2**48 and every intermediate stays exact in int64.
    """
    p_hi = a * (m >> 16)
    t = (p_hi & 0xFFFF).bitwise_left_shift_(16).add_(a * (m & 0xFFFF))
    hi = p_hi.bitwise_right_shift_(16).add_(t >> 32)
    return hi, t.bitwise_and_(MASK32)


def philox(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 on uint32 words held in broadcastable int64 tensors; returns 4 int64 tensors."""
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)  # views; results are fresh tensors
    for i in range(rounds):
        if i:
            k0 = (k0 + _W0) & MASK32
            k1 = (k1 + _W1) & MASK32
        hi0, lo0 = mulhilo(c0, _M0)
        hi1, lo1 = mulhilo(c2, _M1)
        new0 = hi1.bitwise_xor_(c1).bitwise_xor_(k0)
        new2 = hi0.bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = new0, lo1, new2, lo0
    return c0, c1, c2, c3


def philox4x32(counter: torch.Tensor, key: torch.Tensor, rounds: int = 10) -> torch.Tensor:
    """Philox4x32-``rounds`` of ``counter`` (..., 4) under ``key`` (..., 2), uint32 words in int64.

    Word order follows Random123 (``ctr.v[0..3]``, ``key.v[0..1]``), so its known-answer vectors
    apply directly. Returns (..., 4) int64 with values in [0, 2**32).
    """
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise InputError(
            f"counter must be (..., 4) and key (..., 2), got {tuple(counter.shape)} and "
            f"{tuple(key.shape)}"
        )
    c = counter.to(torch.int64) & MASK32
    k = key.to(torch.int64) & MASK32
    out = philox(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k[..., 0], k[..., 1], rounds)
    return torch.stack(out, dim=-1)
