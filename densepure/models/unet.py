"""The improved-diffusion / guided-diffusion UNet family (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021).

Written for this project; module names and nesting are chosen so that ``state_dict()`` keys and
shapes are identical to the official checkpoints (``cifar10_uncond_50M_500K.pt``,
``256x256_diffusion_uncond.pt``). Class conditioning is not supported.

Mixed precision (:meth:`UNetModel.set_precision`): convolutions run in fp16/bf16 while GroupNorm,
the attention softmax, the timestep embedding and the embedding projections stay float32 (x^2
overflows fp16 above |x| = 256; sinusoid arguments reach ~1000 rad where fp16 spacing is 0.5).

Kernels (:meth:`UNetModel.set_kernels`): every GroupNorm -> [scale-shift ->] SiLU chain (ResBlocks and
the output head) can run as one fused kernel of :mod:`densepure.kernels`; module names, parameters and
``state_dict()`` keys do not change, and with no kernels set the modules run exactly as before.
Attention runs through ``F.scaled_dot_product_attention`` on CUDA, on 4-D contiguous ``(B, heads, T, ch)``
tensors so that its fused kernels can run (flash, memory-efficient, cuDNN: 3-D inputs fall back to the
math kernel, which materialises the ``T x T`` scores).
On the CPU, and while exporting to ONNX, it keeps the explicit two-matmul form: the exporters need it,
and on the CPU it is the form every earlier result was computed with (SDPA's fused kernels sum in
another order: equal to float32 rounding, not bit for bit).

Input ``x``: ``(B, C, H, W)`` in the model's [-1, 1] space; ``timesteps``: ``(B,)`` float32 as the
checkpoint expects them (already rescaled). Output: ``(B, 2C, H, W)`` = ``[eps, v]`` when
``learn_sigma``, in the compute dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from densepure.models.unet_config import UNetConfig

# (x, weight, bias, groups, eps, scale, shift) -> SiLU(GroupNorm(x) [* (1 + scale) + shift])
NormSiLU = Callable[..., torch.Tensor]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_j), sin(t f_j)]``, ``f_j = max_period^(-j/half)``, float32 ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _norm(channels: int, groups: int) -> GroupNorm32:
    return GroupNorm32(min(groups, channels), channels)


class _FusedNorms(Protocol):
    """What :meth:`UNetModel.set_kernels` reads (a :class:`densepure.kernels.Kernels`)."""

    group_norm_silu: NormSiLU


def norm_silu(norm: GroupNorm32, x: torch.Tensor, fused: NormSiLU | None, scale: torch.Tensor | None = None,
              shift: torch.Tensor | None = None) -> torch.Tensor:
    """``SiLU(norm(x) [* (1 + scale) + shift])``: the modules' ops, or ``fused`` with the norm's parameters."""
    if fused is not None:
        return fused(x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift)
    h = norm(x)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h)


class TimestepSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with the timestep embedding as scale-shift (or additive) modulation."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int, cfg: UNetConfig,
                 up: bool = False, down: bool = False):
        super().__init__()
        g = cfg.num_groups
        self.use_scale_shift_norm = cfg.use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels, g), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if self.use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels, g), nn.SiLU(), nn.Dropout(p=dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.fused_norm_silu: NormSiLU | None = None  # a plain attribute: not in state_dict
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = norm_silu(self.in_layers[0], x, self.fused_norm_silu)
        if self.updown:
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers[-1](h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_silu(self.out_layers[0], h, self.fused_norm_silu, scale, shift)
        else:
            h = norm_silu(self.out_layers[0], h + emb_out, self.fused_norm_silu)
        h = self.out_layers[3](self.out_layers[2](h))  # dropout, conv
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; ``legacy_order`` splits qkv per head after reshaping (the official order)."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, groups: int, legacy_order: bool = True):
        super().__init__()
        if num_head_channels > 0:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def _split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        if self.legacy_order:
            q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
            return q, k, v
        q, k, v = qkv.chunk(3, dim=1)
        return tuple(t.reshape(b * self.num_heads, ch, length) for t in (q, k, v))  # type: ignore[return-value]

    def heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """``qkv`` ``(B, 3C, T)`` -> q, k, v stacked as one contiguous ``(3, B, heads, T, ch)`` tensor
        (one copy), in the head layout of :meth:`_split_heads`: the 4-D, last-dim-contiguous inputs the
        fused attention kernels (flash, memory-efficient, cuDNN) require."""
        b, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        if self.legacy_order:  # channel h*3ch + s*ch + c holds part s (q, k, v) of head h
            stacked = qkv.reshape(b, self.num_heads, 3, ch, length).permute(2, 0, 1, 4, 3)
        else:  # channel s*C + h*ch + c
            stacked = qkv.reshape(b, 3, self.num_heads, ch, length).permute(1, 0, 2, 4, 3)
        return stacked.contiguous()

    def attend_fused(self, qkv: torch.Tensor) -> torch.Tensor:
        """``(B, 3C, T)`` -> ``(B, C, T)`` through ``F.scaled_dot_product_attention`` on 4-D
        ``(B, heads, T, ch)`` tensors (softmax in float32 inside the fused kernels)."""
        q, k, v = self.heads(qkv)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, ch)
        return h.transpose(-1, -2).reshape(qkv.shape[0], -1, qkv.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        if x.is_cuda and not torch.onnx.is_in_onnx_export():
            h = self.attend_fused(qkv)
        else:
            h = _attention_matmuls(*self._split_heads(qkv)).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


def _attention_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q^T k / sqrt(ch)) v`` as two einsums with a float32 softmax, q and k each scaled by
    ``ch^(-1/4)`` (fp16-safe); ``(B*heads, ch, T)`` in and out. The form ONNX export keeps."""
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(q.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


class UNetModel(nn.Module):
    """The UNet of the official checkpoints, built from a :class:`UNetConfig`."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb_ch = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out = int(mult * mc)
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, cfg.dropout, out, cfg)]
                ch = out
                if ds in cfg.attention_downsample_rates:
                    layers.append(self._attention(ch, cfg.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = (ResBlock(ch, emb_ch, cfg.dropout, ch, cfg, down=True) if cfg.resblock_updown
                        else Downsample(ch, cfg.conv_resample))
                self.input_blocks.append(TimestepSequential(down))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_ch, cfg.dropout, ch, cfg), self._attention(ch, cfg.num_heads),
            ResBlock(ch, emb_ch, cfg.dropout, ch, cfg),
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                out = int(mc * mult)
                layers = [ResBlock(ch + skip_chans.pop(), emb_ch, cfg.dropout, out, cfg)]
                ch = out
                if ds in cfg.attention_downsample_rates:
                    layers.append(self._attention(ch, cfg.num_heads_upsample))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, cfg.dropout, ch, cfg, up=True) if cfg.resblock_updown
                                  else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(_norm(ch, cfg.num_groups), nn.SiLU(),
                                 nn.Conv2d(int(cfg.channel_mult[0] * mc), cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.compute_dtype = torch.float32
        self.fused_norm_silu: NormSiLU | None = None

    def _attention(self, ch: int, heads: int) -> AttentionBlock:
        cfg = self.config
        legacy = not bool(cfg.extra.get("use_new_attention_order", False))
        return AttentionBlock(ch, heads, cfg.num_head_channels, cfg.num_groups, legacy_order=legacy)

    def set_precision(self, dtype: torch.dtype) -> UNetModel:
        """Run convolutions in ``dtype`` (float32, float16 or bfloat16); norms, softmax and embeddings stay float32."""
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"unsupported precision {dtype}")
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                module.to(dtype)
            elif isinstance(module, (nn.GroupNorm, nn.Linear)):
                module.float()
        self.compute_dtype = dtype
        return self

    def set_kernels(self, kernels: _FusedNorms | None) -> UNetModel:
        """Run every GroupNorm -> [scale-shift ->] SiLU chain through ``kernels.group_norm_silu``
        (:func:`densepure.kernels.resolve_kernels`), or through the modules again with None."""
        fused = kernels.group_norm_silu if kernels is not None else None
        for module in self.modules():
            if isinstance(module, ResBlock):
                module.fused_norm_silu = fused
        self.fused_norm_silu = fused
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        h = x.to(self.compute_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out[-1](norm_silu(self.out[0], h, self.fused_norm_silu))

    def eps_and_var(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's seam: float32 ``(eps, v)`` halves of the output, each ``(B, C, H, W)``."""
        if not self.config.learn_sigma:
            raise ValueError("eps_and_var needs a learn_sigma UNet (2C output channels)")
        out = self(x, t_model).float()
        c = self.config.in_channels
        return out[:, :c], out[:, c:]
