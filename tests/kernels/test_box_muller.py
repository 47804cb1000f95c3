"""The kernels' Box-Muller on extreme Philox words: the full tail of the reference, unlike tl.randn.

``tl.randn`` clamps its uniforms at 1e-7 and so never returns |z| > 5.68; the reference field reaches
sqrt(66 ln 2) = 6.76 when a word is 0. Words are fed to the kernels' own ``_box_muller`` directly.
"""

from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import densepure.noise.fields as fields  # noqa: E402
from densepure.kernels.rows_triton import _box_muller as box_muller  # noqa: E402

MASK32 = 2**32 - 1


@triton.jit
def _pairs_kernel(wa_ptr, wb_ptr, first_ptr, second_ptr, N: tl.constexpr, LIBDEVICE: tl.constexpr):
    offs = tl.arange(0, N)
    first, second = box_muller(tl.load(wa_ptr + offs).to(tl.uint32), tl.load(wb_ptr + offs).to(tl.uint32),
                               LIBDEVICE)
    tl.store(first_ptr + offs, first)
    tl.store(second_ptr + offs, second)


def _reference(wa: torch.Tensor, wb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 Box-Muller of densepure.noise.fields, op for op, rounded once to float32."""
    radius = fields._to_unit(wa).log_().mul_(-2.0).sqrt_()
    angle = fields._to_unit(wb).mul_(2.0 * math.pi)
    return torch.cos(angle).mul_(radius).float(), angle.sin_().mul_(radius).float()


def test_extreme_words_reach_the_reference_tail(device, triton_kernels, gen):
    extremes = torch.tensor([0, 1, 2, 2**30, 2**31, 3 * 2**30, MASK32 - 1, MASK32], dtype=torch.int64)
    wa = torch.cat([extremes.repeat_interleave(8), torch.randint(0, 2**32, (64,), generator=gen)])
    wb = torch.cat([extremes.repeat(8), torch.randint(0, 2**32, (64,), generator=gen)])
    out = [torch.full((128,), float("nan"), device=device) for _ in range(2)]
    libdevice = device.type == "cuda" and not triton.knobs.runtime.interpret
    _pairs_kernel[(1,)](wa.to(device), wb.to(device), out[0], out[1], N=128, LIBDEVICE=libdevice)
    want = _reference(wa, wb)
    for got, ref in zip(out, want, strict=True):
        assert torch.equal(got.cpu(), ref)
    assert float(out[0][0]) > 6.76  # word 0: u = 2^-33, r = sqrt(66 ln 2); tl.randn stops at 5.68
    assert float(out[0].abs().max()) == pytest.approx(math.sqrt(66 * math.log(2)), rel=1e-6)
