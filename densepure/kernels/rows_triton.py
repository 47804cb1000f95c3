"""Triton kernels for :mod:`densepure.kernels.rows`: keyed noise fused with start, spawn and step.

One launch per call; program ``(r, j)`` handles elements ``j*BLOCK .. (j+1)*BLOCK - 1`` of row ``r``.
The noise is :func:`densepure.noise.gaussian_words` re-derived in registers, not ``tl.randn``
(``tl.randn`` clamps its uniforms at 1e-7, so it never returns ``|z| > 5.68``; ours reach 6.76):
Philox4x32-10 on uint32 words of the counter ``(c0 | block, c1, c2, c3)`` under ``(k0, k1)``, element
``i`` taking word ``i % 4`` of block ``i // 4``; ``u = (w + 0.5) 2^-32`` and Box-Muller on the word
pairs (0, 1), (2, 3) in float64, rounded once to float32.

Bits. Every float32 operation is the reference's operation in the reference's order (no FMA
contraction: CUDA launches pass ``enable_fp_fusion=False``; the interpreter never contracts). What
can differ is the rounding of transcendental functions:

* In Triton's interpreter (numpy), log/sin/cos run in float64 and agree with torch's CPU float64 after
  the rounding to float32 (measured: 0 of 4M normals differ). ``exp`` of the step's ``std`` is float32
  in the reference (Sleef on CPU, not correctly rounded in ~1% of values) and numpy's float32 ``exp``
  is off by up to 2 ulp in ~39%; the interpreter path therefore computes ``exp`` in float64 and
  rounds once (correctly rounded): ``std`` and the noisy ``y`` differ from the CPU reference by at
  most 1 float32 ulp of ``std`` in ~1% of values, everything else is identical.
* On CUDA, log/sin/cos (float64) and exp (float32) are libdevice's ``__nv_log``, ``__nv_sin``,
  ``__nv_cos`` and ``__nv_expf``, the functions torch's own CUDA kernels call, and sqrt is
  ``__nv_dsqrt_rn`` (IEEE, as torch's), so the kernels are expected to be bit-identical to the
  reference run on the same GPU (the ``gpu`` tests check it; not yet run on a GPU). Triton links
  libdevice with flush-to-zero, so ``expf`` could differ for subnormal arguments or results only,
  which ``std = exp(logvar / 2)`` never reaches. tests/kernels/test_cuda_codegen.py compiles every
  kernel for sm_90 on the CPU and checks that no float32 FMA of ours is contracted. Against the CPU
  reference, CUDA differs by at most 1 float32 ulp in the normals where libdevice and libm round
  differently (the noise contract of :mod:`densepure.noise.fields`) and by up to 2 ulp in ``std``
  (CUDA's expf is within 2 ulp, Sleef's within 1).

The sound start (a rule with a table, :mod:`densepure.noise.sound`): program ``(r, c)`` takes the row's
own Philox words ``u0`` (the words the float noise reads), counts ``#{i : high_i < u0}`` by a branchless
binary search of the table's padded high words (``log2 P`` loads; the padding, ``2^32``, is never
counted), and only where ``u0`` equals a high word (about ``2k / 2^32`` of the values) draws ``u1``,
``u2`` (the identity with step 1 and 2) for the block and counts ``T_i <= (u0, u1, u2)`` on all 96 bits;
then ``y = scale (2 ((x_int + j) step) - 1)`` in float32. All of it is integer arithmetic up to three
rounded float32 products, so it is bit-identical to the torch reference on every device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from densepure.diffusion import StartKind, StepCoefficients
from densepure.errors import InputError
from densepure.kernels.rows import (
    AdvanceRows,
    KeepRows,
    StartRule,
    check_spawn,
    check_start,
    check_step,
)

__all__ = ["INTERPRETED", "spawn_rows", "start_rows", "step_rows"]

_FORMS = {StartKind.DENSEPURE: 0, StartKind.GAUSSIAN: 1, StartKind.DDS: 2}
_MAX_CHUNKS = 65535  # CUDA grid dimension y


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors (Salmon et al. 2011); the key is bumped after every round."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _box_muller(wa, wb, LIBDEVICE: tl.constexpr):
    """Two float32 normals from two uint32 words: ``r = sqrt(-2 ln u_a)``, ``(r cos 2πu_b, r sin 2πu_b)``."""
    ua = (wa.to(tl.float64) + 0.5) * 2.3283064365386963e-10  # 0.5 and 2^-32 are exact float32 literals
    ub = (wb.to(tl.float64) + 0.5) * 2.3283064365386963e-10
    angle = ub * tl.full(ub.shape, 6.283185307179586, tl.float64)  # float literals would be float32
    if LIBDEVICE:
        radius = libdevice.sqrt_rn(libdevice.log(ua) * -2.0)  # __nv_dsqrt_rn
        first, second = libdevice.cos(angle) * radius, libdevice.sin(angle) * radius
    else:
        radius = tl.sqrt(tl.log(ua) * -2.0)
        first, second = tl.cos(angle) * radius, tl.sin(angle) * radius
    return first.to(tl.float32), second.to(tl.float32)


@triton.jit
def _normals(words_ptr, chunk, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    """Elements ``chunk*BLOCK ..`` of the normal field of the row words at ``words_ptr``: ``(BLOCK,)`` float32."""
    block = (chunk * (BLOCK // 4) + tl.arange(0, BLOCK // 4)).to(tl.uint32)
    zero = tl.zeros([BLOCK // 4], dtype=tl.uint32)
    c0 = tl.load(words_ptr + 0).to(tl.uint32) | block
    c1 = tl.load(words_ptr + 1).to(tl.uint32) + zero
    c2 = tl.load(words_ptr + 2).to(tl.uint32) + zero
    c3 = tl.load(words_ptr + 3).to(tl.uint32) + zero
    k0 = tl.load(words_ptr + 4).to(tl.uint32)
    k1 = tl.load(words_ptr + 5).to(tl.uint32)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    z0, z1 = _box_muller(w0, w1, LIBDEVICE)
    z2, z3 = _box_muller(w2, w3, LIBDEVICE)
    # element 4*b + 2*p + q is z_{2p+q} of block b
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [BLOCK])


@triton.jit
def _exp32(x, LIBDEVICE: tl.constexpr):
    """float32 exp: libdevice ``__nv_expf`` on CUDA (torch's), correctly rounded in the interpreter."""
    if LIBDEVICE:
        return libdevice.exp(x)
    return tl.exp(x.to(tl.float64)).to(tl.float32)


@triton.jit
def _dest_row(out_rows_ptr, r, HAS_OUT_ROWS: tl.constexpr):
    """Row of the output written by call row ``r``: ``out_rows[r]``, or ``r`` itself."""
    if HAS_OUT_ROWS:
        return tl.load(out_rows_ptr + r)
    return r


@triton.jit
def _start_kernel(img_ptr, img_stride, slot_ptr, words_ptr, out_ptr, out_stride, out_rows_ptr, numel,
                  coef_a, coef_b, FORM: tl.constexpr, HAS_OUT_ROWS: tl.constexpr, BLOCK: tl.constexpr,
                  LIBDEVICE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    x = tl.load(img_ptr + tl.load(slot_ptr + r) * img_stride + offs, mask=inside)
    z = _normals(words_ptr + r * 6, chunk, BLOCK, LIBDEVICE)
    if FORM == 2:  # DDS: sqrt(abar) (2x - 1) + sqrt(1 - abar) z
        y = coef_a * (2.0 * x - 1.0) + coef_b * z
    else:  # sqrt(a) (2 (x + sigma z) - 1); GAUSSIAN without the factor
        y = 2.0 * (x + coef_b * z) - 1.0
        if FORM == 0:
            y = coef_a * y
    tl.store(out_ptr + _dest_row(out_rows_ptr, r, HAS_OUT_ROWS) * out_stride + offs, y, mask=inside)


@triton.jit
def _spawn_kernel(mean_ptr, mean_stride, std_ptr, std_stride, slot_ptr, words_ptr, out_ptr, out_stride,
                  out_rows_ptr, numel, HAS_OUT_ROWS: tl.constexpr, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    slot = tl.load(slot_ptr + r)
    mean = tl.load(mean_ptr + slot * mean_stride + offs, mask=inside)
    std = tl.load(std_ptr + slot * std_stride + offs, mask=inside)
    y = mean + std * _normals(words_ptr + r * 6, chunk, BLOCK, LIBDEVICE)
    tl.store(out_ptr + _dest_row(out_rows_ptr, r, HAS_OUT_ROWS) * out_stride + offs, y, mask=inside)


@triton.jit
def _mean_std(y_ptr, eps_ptr, v_ptr, y_stride, eps_stride, v_stride, row, offs, inside, sra_ptr, srm1_ptr,
              coef1_ptr, coef2_ptr, log_beta_ptr, logvar_ptr, mask_ptr, LIBDEVICE: tl.constexpr):
    """``(mean, std, noise_mask)`` of batch row ``row`` at ``offs``: :func:`densepure.diffusion.step_mean_std`."""
    y = tl.load(y_ptr + row * y_stride + offs, mask=inside)
    eps = tl.load(eps_ptr + row * eps_stride + offs, mask=inside)
    v = tl.load(v_ptr + row * v_stride + offs, mask=inside)
    x0 = tl.load(sra_ptr + row) * y - tl.load(srm1_ptr + row) * eps
    x0 = tl.clamp(x0, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)  # torch.clamp keeps NaN
    mean = tl.load(coef1_ptr + row) * x0 + tl.load(coef2_ptr + row) * y
    frac = (v + 1.0) * 0.5  # == (v + 1) / 2 exactly
    logvar = frac * tl.load(log_beta_ptr + row) + (1.0 - frac) * tl.load(logvar_ptr + row)
    noise_mask = tl.load(mask_ptr + row)
    return mean, noise_mask * _exp32(0.5 * logvar, LIBDEVICE), noise_mask


@triton.jit
def _keep_kernel(y_ptr, eps_ptr, v_ptr, y_stride, eps_stride, v_stride, sra_ptr, srm1_ptr, coef1_ptr,
                 coef2_ptr, log_beta_ptr, logvar_ptr, mask_ptr, rows_ptr, slots_ptr, mean_out_ptr, mean_stride,
                 std_out_ptr, std_stride, numel, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    mean, std, _ = _mean_std(y_ptr, eps_ptr, v_ptr, y_stride, eps_stride, v_stride, tl.load(rows_ptr + r), offs,
                             inside, sra_ptr, srm1_ptr, coef1_ptr, coef2_ptr, log_beta_ptr, logvar_ptr, mask_ptr,
                             LIBDEVICE)
    slot = tl.load(slots_ptr + r)
    tl.store(mean_out_ptr + slot * mean_stride + offs, mean, mask=inside)
    tl.store(std_out_ptr + slot * std_stride + offs, std, mask=inside)


@triton.jit
def _advance_kernel(y_ptr, eps_ptr, v_ptr, y_stride, eps_stride, v_stride, sra_ptr, srm1_ptr, coef1_ptr,
                    coef2_ptr, log_beta_ptr, logvar_ptr, mask_ptr, rows_ptr, slots_ptr, words_ptr, out_ptr,
                    out_stride, numel, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    mean, std, noise_mask = _mean_std(y_ptr, eps_ptr, v_ptr, y_stride, eps_stride, v_stride, tl.load(rows_ptr + r),
                                      offs, inside, sra_ptr, srm1_ptr, coef1_ptr, coef2_ptr, log_beta_ptr,
                                      logvar_ptr, mask_ptr, LIBDEVICE)
    dest = out_ptr + tl.load(slots_ptr + r) * out_stride + offs
    if noise_mask != 0.0:  # rows of the last step take no noise (and their words are not read)
        tl.store(dest, mean + std * _normals(words_ptr + r * 6, chunk, BLOCK, LIBDEVICE), mask=inside)
    else:
        tl.store(dest, mean, mask=inside)


@triton.jit
def _level_words(words_ptr, chunk, LEVEL: tl.constexpr, BLOCK: tl.constexpr):
    """Elements ``chunk*BLOCK ..`` of the row's word field with its step field set to ``LEVEL``
    (0: the row's own words): ``(BLOCK,)`` int64 in [0, 2^32)."""
    block = (chunk * (BLOCK // 4) + tl.arange(0, BLOCK // 4)).to(tl.uint32)
    zero = tl.zeros([BLOCK // 4], dtype=tl.uint32)
    c0 = tl.load(words_ptr + 0).to(tl.uint32) | block
    c1 = tl.load(words_ptr + 1).to(tl.uint32)
    if LEVEL > 0:
        c1 = ((c1 >> 16) << 16) | LEVEL
    c1 = c1 + zero
    c2 = tl.load(words_ptr + 2).to(tl.uint32) + zero
    c3 = tl.load(words_ptr + 3).to(tl.uint32) + zero
    k0 = tl.load(words_ptr + 4).to(tl.uint32)
    k1 = tl.load(words_ptr + 5).to(tl.uint32)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    # element 4*b + 2*p + q is word 2p+q of block b
    return tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK]).to(tl.int64)


@triton.jit
def _count_below(high_ptr, u0, STEPS: tl.constexpr):
    """``#{i : high_i < u0}`` over the padded high words (``2^STEPS + 1`` entries)."""
    pos = tl.zeros(u0.shape, dtype=tl.int64)
    for s in tl.static_range(STEPS):
        half = 1 << (STEPS - 1 - s)
        probe = tl.load(high_ptr + pos + (half - 1))
        pos = tl.where(probe < u0, pos + half, pos)
    return pos


@triton.jit
def _count_at_or_below(high_ptr, mid_ptr, low_ptr, u0, u1, u2, STEPS: tl.constexpr):
    """``#{i : T_i <= (u0, u1, u2)}``: the same search comparing all three words."""
    pos = tl.zeros(u0.shape, dtype=tl.int64)
    for s in tl.static_range(STEPS):
        half = 1 << (STEPS - 1 - s)
        at = pos + (half - 1)
        h = tl.load(high_ptr + at)
        m = tl.load(mid_ptr + at)
        lo = tl.load(low_ptr + at)
        below = (h < u0) | ((h == u0) & ((m < u1) | ((m == u1) & (lo <= u2))))
        pos = tl.where(below, pos + half, pos)
    return pos


@triton.jit
def _sound_start_kernel(img_ptr, img_stride, slot_ptr, words_ptr, out_ptr, out_stride, out_rows_ptr, numel,
                        high_ptr, mid_ptr, low_ptr, k, scale, step, HAS_OUT_ROWS: tl.constexpr,
                        BLOCK: tl.constexpr, STEPS: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    x = tl.load(img_ptr + tl.load(slot_ptr + r) * img_stride + offs, mask=inside)
    row_words = words_ptr + r * 6
    u0 = _level_words(row_words, chunk, 0, BLOCK)
    count = _count_below(high_ptr, u0, STEPS)
    tied = (tl.load(high_ptr + count) == u0) & inside
    if tl.max(tied.to(tl.int32), axis=0) > 0:  # rare: about 2k / 2^32 of the values
        u1 = _level_words(row_words, chunk, 1, BLOCK)
        u2 = _level_words(row_words, chunk, 2, BLOCK)
        count = tl.where(tied, _count_at_or_below(high_ptr, mid_ptr, low_ptr, u0, u1, u2, STEPS), count)
    j = (count - k).to(tl.float32)
    y = scale * (2.0 * ((x + j) * step) - 1.0)
    tl.store(out_ptr + _dest_row(out_rows_ptr, r, HAS_OUT_ROWS) * out_stride + offs, y, mask=inside)


# triton.jit decides at decoration (this module's import) whether a kernel is compiled or interpreted
INTERPRETED = not isinstance(_start_kernel, triton.runtime.JITFunction)


def _launch_config(device: torch.device, numel: int) -> tuple[int, int, dict]:
    """``(BLOCK, chunks, launch options)`` for rows of ``numel`` values."""
    block = max(16, min(1024, triton.next_power_of_2(max(numel, 1))))
    chunks = triton.cdiv(numel, block)
    if chunks > _MAX_CHUNKS:
        raise InputError(f"rows of {numel} values are too long for these kernels (at most {_MAX_CHUNKS * block})")
    libdevice_ok = device.type == "cuda" and not INTERPRETED
    options = {"LIBDEVICE": libdevice_ok}
    if libdevice_ok:
        options["enable_fp_fusion"] = False  # no FMA contraction: the reference rounds every product
    return block, chunks, options


def start_rows(images: torch.Tensor, image_slot: torch.Tensor, words: torch.Tensor, rule: StartRule,
               out: torch.Tensor | None = None, out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`densepure.kernels.rows.start_rows` in one launch (same arguments and result; sound rules:
    :func:`_sound_start_kernel`)."""
    if isinstance(rule, StartRule) and rule.sound:
        return _sound_start_rows(images, image_slot, words, rule, out, out_rows)
    images, image_slot, words, out, out_rows = check_start(images, image_slot, words, rule, out, out_rows)
    rows, numel = image_slot.shape[0], images[0].numel()
    result = out if out is not None else torch.empty((rows, *images.shape[1:]), device=images.device)
    if rows and numel:
        block, chunks, options = _launch_config(images.device, numel)
        a, b = rule.constants()
        _start_kernel[(rows, chunks)](images, images.stride(0), image_slot, words, result, result.stride(0),
                                      out_rows if out_rows is not None else image_slot, numel, a, b,
                                      FORM=_FORMS[rule.form], HAS_OUT_ROWS=out_rows is not None, BLOCK=block,
                                      **options)
    return result


def _sound_start_rows(images: torch.Tensor, image_slot: torch.Tensor, words: torch.Tensor, rule: StartRule,
                     out: torch.Tensor | None = None, out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`start_rows` of a sound rule (:func:`_sound_start_kernel`)."""
    images, image_slot, words, out, out_rows = check_start(images, image_slot, words, rule, out, out_rows)
    rows, numel = image_slot.shape[0], images[0].numel()
    result = out if out is not None else torch.empty((rows, *images.shape[1:]), device=images.device)
    if rows and numel:
        block, chunks, options = _launch_config(images.device, numel)
        options.pop("LIBDEVICE")  # no transcendental function here
        t = rule.table.tensors(images.device)
        scale, step = rule.grid_constants()
        _sound_start_kernel[(rows, chunks)](images, images.stride(0), image_slot, words, result, result.stride(0),
                                            out_rows if out_rows is not None else image_slot, numel,
                                            t.high, t.mid, t.low, rule.table.k, scale, step,
                                            HAS_OUT_ROWS=out_rows is not None, BLOCK=block, STEPS=t.search_steps,
                                            **options)
    return result


def spawn_rows(mean: torch.Tensor, std: torch.Tensor, draw_slot: torch.Tensor, words: torch.Tensor,
               out: torch.Tensor | None = None, out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`densepure.kernels.rows.spawn_rows` in one launch (same arguments and result)."""
    mean, std, draw_slot, words, out, out_rows = check_spawn(mean, std, draw_slot, words, out, out_rows)
    rows, numel = draw_slot.shape[0], mean[0].numel()
    result = out if out is not None else torch.empty((rows, *mean.shape[1:]), device=mean.device)
    if rows and numel:
        block, chunks, options = _launch_config(mean.device, numel)
        _spawn_kernel[(rows, chunks)](mean, mean.stride(0), std, std.stride(0), draw_slot, words, result,
                                      result.stride(0), out_rows if out_rows is not None else draw_slot, numel,
                                      HAS_OUT_ROWS=out_rows is not None, BLOCK=block, **options)
    return result


def step_rows(y: torch.Tensor, eps: torch.Tensor, v: torch.Tensor, coeffs: StepCoefficients,
              keep: KeepRows | None = None, advance: AdvanceRows | None = None) -> None:
    """:func:`densepure.kernels.rows.step_rows`: one launch for the kept rows, one for the advancing rows."""
    y, eps, v, keep, advance = check_step(y, eps, v, coeffs, keep, advance)
    numel = y[0].numel() if y.shape[0] else 0
    if not numel:
        return
    block, chunks, options = _launch_config(y.device, numel)
    c = coeffs
    common = (y, eps, v, y.stride(0), eps.stride(0), v.stride(0), c.sqrt_recip_alphas_cumprod,
              c.sqrt_recipm1_alphas_cumprod, c.coef1, c.coef2, c.log_beta, c.logvar_clipped, c.noise_mask)
    if keep is not None and keep.rows.shape[0]:
        _keep_kernel[(keep.rows.shape[0], chunks)](*common, keep.rows, keep.slots, keep.mean_out,
                                                   keep.mean_out.stride(0), keep.std_out, keep.std_out.stride(0),
                                                   numel, BLOCK=block, **options)
    if advance is not None and advance.rows.shape[0]:
        _advance_kernel[(advance.rows.shape[0], chunks)](*common, advance.rows, advance.slots, advance.words,
                                                         advance.out, advance.out.stride(0), numel, BLOCK=block,
                                                         **options)
