"""The UNet with densepure.kernels: SDPA attention against the two-matmul form it replaced, and
GroupNorm+SiLU through the registry's kernels (torch: no bit changes; Triton: within tolerance)."""

from __future__ import annotations

import math

import pytest
import torch
from triton_env import fresh_generator, kernel_device, prefer_interpreter, triton_kernels_or_skip

import densepure.models.unet as unet
from densepure.kernels import resolve_kernels
from densepure.kernels.groupnorm import TOLERANCE
from densepure.models import UNetConfig, UNetModel

prefer_interpreter()


def _legacy_attention(block: unet.AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The attention forward as it was before SDPA (einsums, ch^-1/4 on q and k, float32 softmax)."""
    b, c, *spatial = x.shape
    flat = x.reshape(b, c, -1)
    q, k, v = block._split_heads(block.qkv(block.norm(flat)))
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1).to(q.dtype)
    h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (flat + block.proj_out(h)).reshape(b, c, *spatial)


def _sdpa_attention(block: unet.AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's forward with the SDPA path (the one CUDA takes), on any device."""
    b, c, *spatial = x.shape
    flat = x.reshape(b, c, -1)
    h = block.attend_fused(block.qkv(block.norm(flat)))
    return (flat + block.proj_out(h)).reshape(b, c, *spatial)


def _random_block(gen, channels, heads, head_channels, legacy) -> unet.AttentionBlock:
    block = unet.AttentionBlock(channels, heads, head_channels, 8, legacy_order=legacy).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return block


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy_order", "new_order"])
@pytest.mark.parametrize("channels,heads,head_channels,size", [(256, 4, -1, 8), (256, 4, -1, 16), (128, 1, 64, 16)],
                         ids=["cifar10_8px", "cifar10_16px", "guided_64_per_head"])
def test_sdpa_attention_equals_the_matmul_form_in_fp32(legacy, channels, heads, head_channels, size, request):
    """The SDPA path (the one CUDA takes: 4-D heads) equals the matmul form to float32 rounding (a
    fused kernel sums in another order; 3-D inputs happened to reach the matmul form's exact bits on
    the CPU, but only through the math kernel)."""
    gen = fresh_generator(request)
    block = _random_block(gen, channels, heads, head_channels, legacy)
    x = torch.randn((2, channels, size, size), generator=gen)
    with torch.no_grad():
        got, want = _sdpa_attention(block, x), _legacy_attention(block, x)
        assert torch.equal(block(x), want)  # the CPU forward: the matmul form, bit for bit
    torch.testing.assert_close(got, want, rtol=1e-6, atol=2e-6 * float(want.abs().max()))


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy_order", "new_order"])
def test_sdpa_gets_4d_contiguous_heads(legacy, monkeypatch, request):
    """Flash, memory-efficient and cuDNN attention take only 4-D (B, heads, T, ch) inputs with a
    contiguous last dimension; 3-D (B*heads, T, ch) inputs fall back to the math kernel, which
    materialises the T x T scores (~0.5 GB per call at CIFAR-10 batch 512)."""
    seen = []
    original = unet.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append([(tuple(t.shape), t.is_contiguous()) for t in (q, k, v)])
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(unet.F, "scaled_dot_product_attention", spy)
    block = _random_block(fresh_generator(request), 256, 4, -1, legacy)
    with torch.no_grad():
        _sdpa_attention(block, torch.randn(3, 256, 8, 8))
    assert seen == [[((3, 4, 64, 64), True)] * 3]


@pytest.mark.parametrize("channels,heads,size", [(32, 4, 6), (24, 1, 3), (16, 2, 5)])
def test_sdpa_attention_with_small_heads_in_fp32(channels, heads, size, request):
    """Narrow heads (the tiny test UNets) take another CPU kernel: equal to ~1 ulp, not bit for bit."""
    gen = fresh_generator(request)
    block = _random_block(gen, channels, heads, -1, True)
    x = torch.randn((3, channels, size, size), generator=gen)
    with torch.no_grad():
        got, want = _sdpa_attention(block, x), _legacy_attention(block, x)
        assert torch.equal(block(x), want)  # on the CPU the forward keeps the exact matmul form
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_sdpa_attention_in_reduced_precision(dtype, tol, request):
    gen = fresh_generator(request)
    block = _random_block(gen, 32, 4, -1, True)
    block.qkv.to(dtype), block.proj_out.to(dtype)
    x = torch.randn((2, 32, 4, 4), generator=gen).to(dtype)
    with torch.no_grad():
        got, want = _sdpa_attention(block, x).float(), _legacy_attention(block, x).float()
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def test_onnx_export_keeps_the_matmul_form(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    monkeypatch.setattr(unet, "_attention_matmuls", lambda q, k, v: calls.append(q.shape) or torch.zeros_like(q))
    block = unet.AttentionBlock(8, 2, -1, 4)
    block(torch.randn(1, 8, 2, 2))
    assert calls == [torch.Size([2, 4, 4])]


@pytest.mark.parametrize("fixture", ["improved_tiny", "guided_tiny"])
def test_torch_kernels_change_no_bit_and_no_key(fixture, request):
    model, data = request.getfixturevalue(fixture)
    x, t = torch.from_numpy(data["x"]), torch.from_numpy(data["t"])
    keys = list(model.state_dict())
    with torch.no_grad():
        plain = model(x, t)
        try:
            model.set_kernels(resolve_kernels("torch", "cpu"))
            assert model.fused_norm_silu is not None and list(model.state_dict()) == keys
            assert torch.equal(model(x, t), plain)
        finally:
            model.set_kernels(None)  # the fixture is shared by the session
        assert torch.equal(model(x, t), plain)


def micro_unet(gen: torch.Generator) -> UNetModel:
    """Scale-shift ResBlocks, attention and the output head with 4 channels per group, non-zero weights."""
    cfg = UNetConfig(image_size=8, in_channels=1, model_channels=16, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_heads=2, num_groups=4)
    model = UNetModel(cfg).eval()
    with torch.no_grad():  # the output convs are zero-initialized (ALGORITHM §10): perturb everything
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"),
                                          pytest.param(torch.float16, "channels_last", marks=pytest.mark.slow)])
def test_triton_norms_match_the_modules(dtype, layout, request):
    device = kernel_device()
    kernels = triton_kernels_or_skip(device)
    gen = fresh_generator(request)
    model = micro_unet(gen).to(device).set_precision(dtype)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    x = (torch.randn((2, 1, 8, 8), generator=gen)).to(device)
    t = torch.tensor([3.0, 500.0], device=device)
    with torch.inference_mode():
        want = model(x, t)
        got = model.set_kernels(kernels)(x, t)
    assert got.dtype == want.dtype == dtype
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=4 * rtol, atol=4 * atol * float(want.abs().max()))
