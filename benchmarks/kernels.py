"""densepure.kernels: each fused kernel against torch eager (its reference) and torch.compile.

On CUDA, for a batch of ``--rows`` rows of the chosen architecture:

* the row kernels (keyed Philox noise fused with the start point, the spawn of a chain from the shared
  first step, the reverse step that keeps ``(mean, std)`` and the one that advances with fresh noise)
  and GroupNorm + scale-shift + SiLU on the UNet's activation shapes: microseconds per call (host
  launch included, as the engine pays it), the bytes each call must move at least, and that rate
  as a fraction of the device-to-device copy bandwidth measured here (the roofline);
* the UNet forward with the modules' norms, with the fused norms and compiled;
* the engine's UNet-side pipeline for DensePure with ``--K`` chains and b=2 (per draw one start row
  through start + UNet + kept step, and K chain rows through spawn + UNet + advancing step), in
  draws/s. It leaves out the classifier, the scheduler and early exit: it is the kernels' effect on
  the part of a draw they touch, not the engine's end-to-end rate (benchmarks/throughput.py).

Before any implementation other than the torch reference is timed, its output is checked against the
reference's on the same inputs (a dtype-aware tolerance: ``densepure.kernels.groupnorm.TOLERANCE``
scaled by ``--check-scale`` and by the largest reference value); one that fails is reported with its
error and not timed. cuDNN autotuning stays off, as in the engine.

On the CPU (``--device cpu``, a smoke run): Triton runs in its interpreter when ``TRITON_INTERPRET=1``
is set, so its times say nothing about speed; the run checks that every path executes and prints
both numbers and their ratio. torch.compile is skipped on the CPU unless ``--compile`` is given.

Usage: python benchmarks/kernels.py [--device cuda|cpu] [--arch cifar10|imagenet|tiny] [--rows 512]
       [--precision fp16|bf16|fp32] [--repeats 5] [--compile | --no-compile]
The last line printed is a JSON object with every number (``--partial``: each table also as measured).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from common import machine

from densepure.diffusion import GridTables, NoiseSchedule, StartKind, build_reverse_grid, t_star
from densepure.errors import BackendError
from densepure.kernels import (
    AdvanceRows,
    KeepRows,
    StartRule,
    compile_module,
    resolve_kernels,
)
from densepure.kernels.groupnorm import TOLERANCE
from densepure.models import UNetConfig, UNetModel
from densepure.models.presets import get_preset
from densepure.noise import NoiseKeys, row_words
from densepure.precision import float32_math, tf32_flags

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY = UNetConfig(image_size=8, in_channels=1, model_channels=16, num_res_blocks=1, attention_resolutions=(4,),
                  channel_mult=(1, 2), num_heads=2, num_groups=4)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", choices=["cifar10", "imagenet", "tiny"], default="cifar10")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--precision", choices=list(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--K", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile (default: on CUDA only)")
    p.add_argument("--partial", action="store_true", help="also print each table as a JSON line as it is measured")
    p.add_argument("--check-scale", type=float, default=4.0,
                   help="multiply the reference tolerance (row kernels and norms x1, whole UNet forwards x10)")
    return p.parse_args()


def _outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in _outputs(item)] if isinstance(value, (tuple, list)) else []


def check(reference, candidate, scale: float) -> str | None:
    """None if ``candidate()`` gives ``reference()``'s outputs within the dtype's tolerance (times
    ``scale``, absolute part relative to the largest reference value), else what differs."""
    produced = _outputs(reference())
    dtypes, want = [t.dtype for t in produced], [t.detach().float().clone() for t in produced]
    made = _outputs(candidate())
    got = [t.detach().float() for t in made]
    if len(got) != len(want):
        return f"returned {len(got)} tensors, the reference {len(want)}"
    for i, (g, w, dtype, other) in enumerate(zip(got, want, dtypes, (t.dtype for t in made), strict=True)):
        tols = [TOLERANCE.get(d, TOLERANCE[torch.float32]) for d in (dtype, other)]  # the coarser dtype's
        rtol, atol = (scale * max(pair) for pair in zip(*tols, strict=True))
        bound = atol * float(w.abs().max()) + rtol * w.abs()
        if g.shape != w.shape or not bool(((g - w).abs() <= bound).all()) or not bool(torch.isfinite(g).all()):
            worst = float((g - w).abs().max()) if g.shape == w.shape else float("nan")
            return (f"output {i} differs from the reference: max |diff| {worst:.3g} "
                    f"(rtol {rtol:.1g}, atol {atol:.1g} x max)")
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device, repeats: int, budget: float = 0.2) -> float:
    """Median seconds per call: warm-up, then ``repeats`` timings of enough calls to fill ``budget`` s."""
    sync(device)
    t0 = time.perf_counter()
    fn()  # warm-up (compiles, autotunes)
    sync(device)
    if time.perf_counter() - t0 < budget:  # time one warm call to size the inner loop
        t0 = time.perf_counter()
        fn()
        sync(device)
    inner = max(1, min(200, int(budget / max(time.perf_counter() - t0, 1e-6))))
    runs = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        runs.append((time.perf_counter() - t0) / inner)
    return statistics.median(runs)


def copy_bandwidth(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (read + write), 1 GiB buffers; None on the CPU."""
    if device.type != "cuda":
        return None
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / seconds(lambda: dst.copy_(src), device, 5)


def model_for(arch: str, device: torch.device, dtype: torch.dtype) -> tuple[UNetModel, NoiseSchedule]:
    torch.manual_seed(0)
    if arch == "tiny":
        cfg, schedule = TINY, NoiseSchedule("cosine", 4000)
    else:
        preset = get_preset("cifar10" if arch == "cifar10" else "imagenet256")
        cfg, schedule = UNetConfig.from_flags(preset.flags), preset.schedule
    model = UNetModel(cfg).eval()
    with torch.no_grad():  # zero-initialized output convs would make every output 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model = model.to(device).set_precision(dtype)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, schedule


class RowInputs:
    """A batch of ``rows`` rows of ``shape`` with the engine's pools, words and per-row coefficients."""

    def __init__(self, rows: int, shape: tuple[int, int, int], schedule: NoiseSchedule, device: torch.device):
        g = torch.Generator().manual_seed(1)
        self.shape, n = shape, rows

        def words(stream: int, step: int) -> torch.Tensor:
            keys = NoiseKeys.from_arrays(7, image=torch.arange(n) % 97, phase=1, draw=torch.arange(n),
                                         chain=torch.arange(n) % 10, step=step, stream=stream)
            return row_words(keys, device)

        self.delta, self.chain, self.chain1 = words(0, 0), words(1, 0), words(1, 1)
        self.slots = torch.randperm(n, generator=g).to(device)
        self.images = torch.rand((n, *shape), generator=g).to(device)
        # mean, std pools hold values (the spawn reads them); the others are outputs
        self.pools = [torch.randn((n, *shape), generator=g).to(device),
                      torch.randn((n, *shape), generator=g).to(device),
                      torch.rand((n, *shape), generator=g).to(device) + 0.1, torch.zeros((n, *shape), device=device)]
        self.y = torch.randn((n, *shape), generator=g).to(device)
        out = torch.randn((n, 2 * shape[0], *shape[1:]), generator=g).to(device)
        self.eps, self.v = out[:, : shape[0]], out[:, shape[0]:].clamp(-1, 1)
        tables = GridTables(build_reverse_grid(schedule, t_star(0.5, schedule), 3), device)
        self.first = tables.gather(torch.zeros(n, dtype=torch.int64, device=device))
        self.middle = tables.gather(torch.ones(n, dtype=torch.int64, device=device))  # a noisy step
        self.rule = StartRule(StartKind.DENSEPURE, sigma=0.5)
        self.all = torch.arange(n, device=device)
        self.kept = (torch.zeros((n, *shape), device=device), torch.zeros((n, *shape), device=device))

    def calls(self, k) -> dict[str, tuple[callable, int]]:
        """name -> (call, minimal bytes moved), bytes per element: start 4+4, spawn 8+4, keep 12+8, advance 12+4."""
        numel = self.all.shape[0] * self.images[0].numel()
        return {
            "start (noise + start point)": (lambda: k.start_rows(self.images, self.slots, self.delta, self.rule,
                                                                 self.pools[0], self.all), 8 * numel),
            "spawn (noise + mean + std z)": (lambda: k.spawn_rows(self.pools[1], self.pools[2], self.slots,
                                                                  self.chain, self.pools[0], self.all), 12 * numel),
            "step, keep (mean, std)": (lambda: (k.step_rows(self.y, self.eps, self.v, self.first, keep=KeepRows(
                self.all, self.slots, self.kept[0], self.kept[1])), self.kept), 20 * numel),
            "step, advance (+ noise)": (lambda: (k.step_rows(self.y, self.eps, self.v, self.middle, advance=AdvanceRows(
                self.all, self.slots, self.chain1, self.pools[3])), self.pools[3]), 16 * numel),
        }


def norm_calls(model: UNetModel, rows: int, device: torch.device, dtype: torch.dtype, k):
    """GroupNorm+SiLU at the UNet's distinct (channels, size) with scale-shift: name -> (call, bytes)."""
    cfg, g = model.config, torch.Generator().manual_seed(2)
    shapes = sorted({(int(m * cfg.model_channels), cfg.image_size // 2**i) for i, m in enumerate(cfg.channel_mult)})
    out = {}
    for channels, size in shapes[-2:]:
        x = torch.randn((rows, channels, size, size), generator=g).to(device, dtype)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = (torch.randn(channels, generator=g).to(device) for _ in range(2))  # every implementation: same inputs
        scale, shift = (torch.randn((rows, 2 * channels, 1, 1), generator=g) * 0.1).to(device, dtype).chunk(2, dim=1)
        groups = min(cfg.num_groups, channels)
        out[f"groupnorm+silu {channels}x{size}x{size}"] = (
            lambda x=x, w=w, b=b, s=scale, t=shift, n=groups: k.group_norm_silu(x, w, b, n, 1e-5, s, t),
            2 * x.numel() * x.element_size())
    return out


def table(title: str, calls_by_impl: dict[str, dict], device, repeats: int, bandwidth: float | None,
          check_scale: float) -> dict:
    """Check every implementation against the first (the reference), then time those that pass; print one
    line per call; returns the numbers."""
    print(title)
    impls = list(calls_by_impl)
    result = {}
    for name in calls_by_impl[impls[0]]:
        row, line = {}, f"  {name:34s}"
        for impl in impls:
            fn, nbytes = calls_by_impl[impl][name]
            try:
                wrong = None if impl == impls[0] else check(calls_by_impl[impls[0]][name][0], fn, check_scale)
                if wrong is not None:
                    row[impl] = {"error": f"not timed: {wrong}", "checked": False}
                    line += f" | {impl}: WRONG, not timed ({wrong[:60]})"
                    continue
                s = seconds(fn, device, repeats)
            except Exception as exc:  # noqa: BLE001 - report, e.g. a compile failure, and go on
                row[impl] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
                line += f" | {impl}: failed ({row[impl]['error'][:60]})"
                continue
            row[impl] = {"us": s * 1e6, "GB_per_s": nbytes / s / 1e9, "checked": impl != impls[0]}
            if bandwidth:
                row[impl]["roofline"] = nbytes / s / bandwidth
            line += f" | {impl} {s * 1e6:9.1f} us" + (f" ({nbytes / s / bandwidth:5.1%})" if bandwidth else "")
        base = row.get(impls[0], {}).get("us")
        for impl in impls[1:]:
            if base and "us" in row.get(impl, {}):
                row[impl]["speedup_vs_eager"] = base / row[impl]["us"]
                line += f" | {impls[0]}/{impl} {base / row[impl]['us']:.2f}x"
        print(line)
        result[name] = row
    return result


def compiled(calls: dict) -> dict:
    return {name: (torch.compile(fn, dynamic=False), nbytes) for name, (fn, nbytes) in calls.items()}


def pipeline(model, inputs: RowInputs, kernels, K: int, device, repeats) -> float:
    """Draws/s of the UNet side of DensePure (b=2): a start batch, then K chain batches per draw."""
    t = inputs.first.model_time

    def start_batch():
        y = kernels.start_rows(inputs.images, inputs.slots, inputs.delta, inputs.rule)
        eps, v = model.eps_and_var(y, t)
        kernels.step_rows(y, eps, v, inputs.first, keep=KeepRows(inputs.all, inputs.slots, inputs.pools[1],
                                                                 inputs.pools[2]))

    def chain_batch():
        y = kernels.spawn_rows(inputs.pools[1], inputs.pools[2], inputs.slots, inputs.chain)
        eps, v = model.eps_and_var(y, t)
        kernels.step_rows(y, eps, v, inputs.middle, advance=AdvanceRows(inputs.all, inputs.slots, inputs.chain1,
                                                                        inputs.pools[3]))

    with torch.inference_mode():
        s = seconds(start_batch, device, repeats) + K * seconds(chain_batch, device, repeats)
    return inputs.all.shape[0] / s


def kernel_tables(args, model, inputs: RowInputs, eager, fused, device, bandwidth, use_compile) -> dict:
    """The row-kernel and GroupNorm+SiLU tables: eager reference | triton | compiled reference."""
    dtype = DTYPES[args.precision]
    impls = {"torch": inputs.calls(eager)} | ({"triton": inputs.calls(fused)} if fused else {})
    norms = {"torch": norm_calls(model, args.rows, device, dtype, eager)}
    if fused:
        norms["triton"] = norm_calls(model, args.rows, device, dtype, fused)
    if use_compile:
        impls["compile"] = compiled(inputs.calls(eager))
        norms["compile"] = compiled(norm_calls(model, args.rows, device, dtype, eager))
    columns = " | ".join(["torch eager reference"] + ["triton"] * bool(fused) + ["torch.compile of it"] * use_compile)
    with torch.inference_mode():
        return {"row_kernels": table(f"row kernels ({columns})", impls, device, args.repeats, bandwidth,
                                     args.check_scale),
                "norms": table(f"GroupNorm + scale-shift + SiLU ({columns})", norms, device, args.repeats, bandwidth,
                               args.check_scale)}


def unet_table(args, model, inputs: RowInputs, eager, fused, device, use_compile) -> dict:
    """UNet forwards and pipeline draws/s for the modules, fused norms and compiled variants."""
    variants = {"modules": (copy.deepcopy(model), eager)}
    if fused:
        variants["fused norms"] = (copy.deepcopy(model).set_kernels(fused), fused)
    if use_compile:
        variants["compiled"] = (compile_module(copy.deepcopy(model)), eager)
        if fused:
            variants["compiled + fused norms"] = (compile_module(copy.deepcopy(model).set_kernels(fused)), fused)
    x, t = torch.randn((args.rows, *inputs.shape), device=device), inputs.first.model_time
    print(f"UNet forward, {args.rows} rows; and the UNet side of DensePure (K={args.K}, b=2) in draws/s")
    out = {}
    reference = variants["modules"][0]
    for name, (net, kernels) in variants.items():
        with torch.inference_mode():
            wrong = None if name == "modules" else check(lambda: reference.eps_and_var(x, t),
                                                         lambda net=net: net.eps_and_var(x, t), 10 * args.check_scale)
            if wrong is not None:
                out[name] = {"error": f"not timed: {wrong}", "checked": False}
                print(f"  {name:24s} WRONG, not timed: {wrong}")
                continue
            s = seconds(lambda net=net: net.eps_and_var(x, t), device, args.repeats)
        draws = pipeline(net, inputs, kernels, args.K, device, args.repeats)
        out[name] = {"forward_ms": s * 1e3, "rows_per_s": args.rows / s, "draws_per_s": draws,
                     "row_kernels": kernels.name, "checked": name != "modules",
                     "draws_vs_modules": draws / out["modules"]["draws_per_s"] if out else 1.0}
        print(f"  {name:24s} forward {s * 1e3:8.2f} ms ({args.rows / s:9.0f} rows/s) | "
              f"pipeline with {kernels.name} row kernels: {draws:9.1f} draws/s ({out[name]['draws_vs_modules']:.2f}x)")
    return out


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    args.precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    use_compile = args.compile if args.compile is not None else device.type == "cuda"
    eager, fused, why = resolve_kernels("torch", device), None, ""
    try:
        fused = resolve_kernels("triton", device)
    except BackendError as err:  # e.g. the CPU without TRITON_INTERPRET=1: torch columns only
        why = f"triton unavailable: {err}"
    model, schedule = model_for(args.arch, device, DTYPES[args.precision])
    shape = (model.config.in_channels, model.config.image_size, model.config.image_size)
    bandwidth = copy_bandwidth(device)
    print(f"{args.arch} on {machine(device)}: {args.rows} rows of {shape}, UNet in {args.precision}; "
          f"kernels: {fused.describe() if fused else why}")
    if bandwidth:
        print(f"  measured device-to-device copy: {bandwidth / 1e9:.0f} GB/s (the roofline in parentheses)")
    if not use_compile:
        print("  torch.compile: skipped" + (" on the CPU (pass --compile)" if device.type == "cpu" else ""))
    result = {"arch": args.arch, "device": machine(device), "rows": args.rows, "precision": args.precision,
              "kernels": fused.describe() if fused else why, "compile": use_compile,
              "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "cuda_graphs": False,
              "weights": "random: torch.manual_seed(0) init + N(0, 0.02^2) on every parameter",
              "check": f"against the torch reference, TOLERANCE x {args.check_scale:g} "
                       f"(UNet x {10 * args.check_scale:g})",
              "copy_GB_per_s": bandwidth / 1e9 if bandwidth else None}
    inputs = RowInputs(args.rows, shape, schedule, device)
    with float32_math(False):  # fp32 is exact float32, as in the engine (densepure.precision)
        result["tf32_flags"] = tf32_flags()
        partial(args, result)
        result |= partial(args, kernel_tables(args, model, inputs, eager, fused, device, bandwidth, use_compile))
        unet = unet_table(args, model, inputs, eager, fused, device, use_compile)
        result["unet"] = partial(args, {"unet": unet})["unet"]
    print(json.dumps(result))


def partial(args, figures: dict) -> dict:
    """Print ``figures`` as a partial-result line when asked (``--partial``); returns them."""
    if args.partial:
        print(json.dumps({"partial": figures}), flush=True)
    return figures


if __name__ == "__main__":
    main()
