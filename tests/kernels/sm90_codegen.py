"""Compile densepure's Triton kernels ahead of time for sm_90 (H100/H200) and report on their PTX.

Run as a script in a process without ``TRITON_INTERPRET`` (test_cuda_codegen.py does): Triton's wheel
carries ptxas, so no GPU is needed. Prints one JSON object: per kernel variant, whether it compiled,
its count of float32 FMAs with and without FMA contraction, and markers of the instructions it uses.
"""

from __future__ import annotations

import json
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from densepure.kernels import groupnorm_triton as gn
from densepure.kernels import rows_triton as rows

H200 = GPUTarget("cuda", 90, 32)
F32, I64 = "*fp32", "*i64"
ROW = dict(numel="i32", BLOCK="constexpr", LIBDEVICE="constexpr")
STEP = dict(y_ptr=F32, eps_ptr=F32, v_ptr=F32, y_stride="i32", eps_stride="i32", v_stride="i32", sra_ptr=F32,
            srm1_ptr=F32, coef1_ptr=F32, coef2_ptr=F32, log_beta_ptr=F32, logvar_ptr=F32, mask_ptr=F32,
            rows_ptr=I64, slots_ptr=I64)
FMA32 = re.compile(r"\bfma\.r[nmpz](\.ftz)?\.f32\b")


def ptx(fn, signature: dict, constexprs: dict, fusion: bool) -> str:
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=H200, options={"enable_fp_fusion": fusion}).asm["ptx"]


def variants() -> dict[str, tuple]:
    start = dict(img_ptr=F32, img_stride="i32", slot_ptr=I64, words_ptr=I64, out_ptr=F32, out_stride="i32",
                 out_rows_ptr=I64, coef_a="fp32", coef_b="fp32", FORM="constexpr", HAS_OUT_ROWS="constexpr", **ROW)
    spawn = dict(mean_ptr=F32, mean_stride="i32", std_ptr=F32, std_stride="i32", slot_ptr=I64, words_ptr=I64,
                 out_ptr=F32, out_stride="i32", out_rows_ptr=I64, HAS_OUT_ROWS="constexpr", **ROW)
    keep = dict(STEP, mean_out_ptr=F32, mean_stride="i32", std_out_ptr=F32, std_stride="i32", **ROW)
    advance = dict(STEP, words_ptr=I64, out_ptr=F32, out_stride="i32", **ROW)
    lib = dict(BLOCK=1024, LIBDEVICE=True)
    out = {f"start_form{f}": (rows._start_kernel, start, dict(lib, FORM=f, HAS_OUT_ROWS=f == 0)) for f in range(3)}
    out["spawn"] = (rows._spawn_kernel, spawn, dict(lib, HAS_OUT_ROWS=False))
    sound_start = dict(img_ptr=F32, img_stride="i32", slot_ptr=I64, words_ptr=I64, out_ptr=F32, out_stride="i32",
                       out_rows_ptr=I64, numel="i32", high_ptr=I64, mid_ptr=I64, low_ptr=I64, k="i32",
                       scale="fp32", step="fp32", HAS_OUT_ROWS="constexpr", BLOCK="constexpr", STEPS="constexpr")
    out["sound_start"] = (rows._sound_start_kernel, sound_start, dict(HAS_OUT_ROWS=True, BLOCK=1024, STEPS=11))
    out["keep"] = (rows._keep_kernel, keep, lib)
    out["advance"] = (rows._advance_kernel, advance, lib)
    for dtype in ("fp32", "fp16", "bf16"):
        x = f"*{dtype}"
        signature = dict(x_ptr=x, out_ptr=x, w_ptr=F32, b_ptr=F32, scale_ptr=x, shift_ptr=x, groups="i32",
                         group_ch="i32", hw_size="i32", sxb="i32", sxc="i32", sxhw="i32", sob="i32", soc="i32",
                         sohw="i32", ss_b="i32", ss_c="i32", eps="fp32", SCALE_SHIFT="constexpr",
                         BLOCK_C="constexpr", BLOCK_HW="constexpr")
        out[f"groupnorm_{dtype}"] = (gn._gn_silu_kernel, signature, dict(SCALE_SHIFT=True, BLOCK_C=8, BLOCK_HW=512))
    return out


def main() -> None:
    report = {}
    for name, (fn, signature, constexprs) in variants().items():
        # as launched: the row kernels without FMA contraction, GroupNorm (tolerance-checked) with it
        exact = ptx(fn, signature, constexprs, fusion=name.startswith("groupnorm"))
        fused = ptx(fn, signature, constexprs, fusion=True) if name in ("keep", "advance") else exact
        report[name] = {"fma32": len(FMA32.findall(exact)), "fma32_with_fusion": len(FMA32.findall(fused)),
                        "ex2_approx": "ex2.approx" in exact, "sqrt_rn_f64": "sqrt.rn.f64" in exact,
                        "entry": f".entry {fn.__name__}" in exact}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
