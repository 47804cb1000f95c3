"""Fused GroupNorm (+ scale-shift) + SiLU against the UNet's own composition (densepure.kernels.groupnorm).

The kernel rounds once where the reference rounds after every op, so the check is a per-dtype
tolerance (``TOLERANCE``), and both are also held against a float64 evaluation of the same formula.
"""

from __future__ import annotations

import pytest
import torch

from densepure.errors import InputError
from densepure.kernels import resolve_kernels
from densepure.kernels.groupnorm import TOLERANCE, group_norm_silu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, C, H, W, groups): 4 channels per group on an odd image; 3 per group (masked channel block);
# 2 per group on 48x48 (two tiles per group, the second partial); 1x1 pixels
SHAPES = [(2, 12, 5, 7, 3), (1, 6, 3, 3, 2), (3, 4, 48, 48, 2), (2, 8, 1, 1, 4)]
LAYOUTS = ["nchw", "channels_last", "sliced", "transposed"]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # a channel slice of a wider tensor: strided, H and W still flatten
        wide = torch.cat([x, x], dim=1)
        return wide[:, : x.shape[1]]
    if layout == "transposed":  # H and W do not flatten: the kernel works on a contiguous copy
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


def _inputs(shape, dtype, gen, device, scale_shift: bool, offset: float = 0.0):
    b, c, h, w, groups = shape
    x = (torch.randn((b, c, h, w), generator=gen) * 2.0 + offset + torch.rand((1, c, 1, 1), generator=gen))
    weight, bias = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    emb = (torch.randn((b, 2 * c, 1, 1), generator=gen) * 0.5).to(dtype).to(device)
    scale, shift = emb.chunk(2, dim=1) if scale_shift else (None, None)
    return x.to(dtype).to(device), weight.to(device), bias.to(device), groups, scale, shift


def _float64(x, weight, bias, groups, eps, scale, shift) -> torch.Tensor:
    b, c = x.shape[:2]
    g = x.double().reshape(b, groups, -1)
    h = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + eps)).reshape(x.shape)
    h = h * weight.double()[:, None, None] + bias.double()[:, None, None]
    if scale is not None:
        h = h * (1 + scale.double()) + shift.double()
    return h * torch.sigmoid(h)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale_shift", [True, False], ids=["scale_shift", "plain"])
def test_fused_matches_reference(dtype, shape, scale_shift, device, triton_kernels, gen):
    from densepure.kernels.groupnorm_triton import _launch

    # every layout meets every dtype and both forms across the cases (all 96 would be slow in the interpreter)
    layout = LAYOUTS[(DTYPES.index(dtype) + SHAPES.index(shape) + 2 * scale_shift) % len(LAYOUTS)]
    x, weight, bias, groups, scale, shift = _inputs(shape, dtype, gen, device, scale_shift)
    x = _layout(x, layout)
    want = group_norm_silu(x, weight, bias, groups, 1e-5, scale, shift)
    out = torch.full_like(x.contiguous() if layout == "transposed" else x, float("nan"))
    ss = (scale.reshape(shape[0], -1), shift.reshape(shape[0], -1)) if scale_shift else (None, None)
    got = _launch(x, weight, bias, groups, 1e-5, *ss, out=out)
    assert got is out and got.dtype == dtype and not torch.isnan(got).any()
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    exact = _float64(x, weight, bias, groups, 1e-5, scale, shift)
    torch.testing.assert_close(got.double(), exact, rtol=rtol, atol=atol)
    public = triton_kernels.group_norm_silu(x, weight, bias, groups, 1e-5, scale, shift)
    assert torch.equal(public, got) and public.stride() == got.stride()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_output_keeps_the_memory_format(layout, device, triton_kernels, gen):
    x, weight, bias, groups, scale, shift = _inputs((2, 8, 4, 6, 2), torch.float32, gen, device, True)
    x = _layout(x, layout)
    got = triton_kernels.group_norm_silu(x, weight, bias, groups, 1e-5, scale, shift)
    assert got.stride() == x.stride()


def test_statistics_stay_accurate_far_from_zero(device, triton_kernels, gen):
    """|mean| = 1000 std: a one-pass E[x^2] - E[x]^2 in float32 would lose the variance entirely."""
    x, weight, bias, groups, scale, shift = _inputs((2, 4, 48, 48, 2), torch.float32, gen, device, False, 2000.0)
    got = triton_kernels.group_norm_silu(x, weight, bias, groups, 1e-5)
    exact = _float64(x, weight, bias, groups, 1e-5, None, None)
    torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-4)


def test_registered_custom_op_is_consistent(device, triton_kernels, gen):
    """The custom op's schema, fake (meta) implementation and strides agree with the real kernel."""
    from densepure.kernels.groupnorm_triton import _group_norm_silu_op

    x, weight, bias, groups, scale, shift = _inputs((1, 4, 3, 3, 2), torch.float32, gen, device, True)
    args = (x.contiguous(memory_format=torch.channels_last), weight, bias, groups, 1e-5,
            scale.reshape(1, -1), shift.reshape(1, -1))
    torch.library.opcheck(_group_norm_silu_op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_both_implementations_reject_the_same_calls(impl, device, triton_kernels):
    kernels = resolve_kernels("torch", device) if impl == "torch" else triton_kernels
    x = torch.randn(2, 6, 3, 3, device=device)
    w, b = torch.ones(6, device=device), torch.zeros(6, device=device)
    with pytest.raises(InputError, match="groups"):
        kernels.group_norm_silu(x, w, b, 4, 1e-5)
    with pytest.raises(InputError, match="scale and shift"):
        kernels.group_norm_silu(x, w, b, 3, 1e-5, torch.zeros(2, 6, device=device), None)
    with pytest.raises(InputError, match="scale must be"):
        kernels.group_norm_silu(x, w, b, 3, 1e-5, torch.zeros(2, 5, device=device), torch.zeros(2, 5, device=device))
    with pytest.raises(InputError, match="weight"):
        kernels.group_norm_silu(x, w[:3], b, 3, 1e-5)
    with pytest.raises(InputError, match="x must be"):
        kernels.group_norm_silu(x.double(), w, b, 3, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_unet_sized_groups_on_gpu(dtype, layout, gen):
    """CIFAR-10 and ImageNet UNet shapes on a GPU (bf16 arithmetic included), against the reference."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from triton_env import triton_kernels_or_skip

    device = torch.device("cuda")
    kernels = triton_kernels_or_skip(device)
    for shape in [(64, 256, 16, 16, 32), (8, 128, 32, 32, 32), (2, 256, 128, 128, 32)]:
        x, weight, bias, groups, scale, shift = _inputs(shape, dtype, gen, device, True)
        x = _layout(x, layout)
        rtol, atol = TOLERANCE[dtype]
        torch.testing.assert_close(kernels.group_norm_silu(x, weight, bias, groups, 1e-5, scale, shift),
                                   group_norm_silu(x, weight, bias, groups, 1e-5, scale, shift), rtol=rtol, atol=atol)
