"""``densepure bench kernels``: each fused kernel against torch eager (its reference) and torch.compile.

For a batch of ``--batch-size`` rows of the preset's UNet architecture (seeded random weights: speed
depends on the shapes):

* the row kernels (keyed Philox noise fused with the start point, the spawn of a chain from the shared
  first step, the reverse step that keeps ``(mean, std)`` and the one that advances with fresh noise)
  and GroupNorm + scale-shift + SiLU on the UNet's activation shapes: microseconds per call (host
  launch included, as the engine pays it), the bytes each call must move at least, and on CUDA that
  rate as a fraction of the device-to-device copy bandwidth measured here (the roofline);
* the UNet forward with the modules' norms, with the fused norms and compiled;
* the engine's UNet-side pipeline for DensePure with ``--K`` chains and b=2 (per draw one start row
  through start + UNet + kept step, and K chain rows through spawn + UNet + advancing step), in
  draws/s. It leaves out the classifier, the scheduler and early exit: it is the kernels' effect on
  the part of a draw they touch, not the engine's end-to-end rate (``bench throughput``).

Triton runs on CUDA; on the CPU only in its interpreter (``TRITON_INTERPRET=1``), whose times say nothing
about speed: such a run checks that every path executes. torch.compile is timed with ``--compile MODE``.
"""

from __future__ import annotations

import copy
import re
import statistics
import time

import torch

from densepure.bench.models import random_unet
from densepure.bench.options import BenchRun
from densepure.bench.report import ReportBuilder, Unit
from densepure.diffusion import GridTables, NoiseSchedule, StartKind, build_reverse_grid, t_star
from densepure.errors import BackendError
from densepure.kernels import AdvanceRows, KeepRows, StartRule, compile_module, resolve_kernels
from densepure.models import UNetConfig, UNetModel, get_preset
from densepure.noise import NoiseKeys, row_words


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


def unet_for(config: UNetConfig, device: torch.device, dtype: torch.dtype) -> UNetModel:
    """The UNet of ``config`` with seeded random weights, in ``dtype`` (channels-last on CUDA)."""
    model = random_unet(config, torch.device("cpu")).to(device).set_precision(dtype)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


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
        self.pools = [torch.empty((n, *shape), device=device) for _ in range(4)]
        self.y = torch.randn((n, *shape), generator=g).to(device)
        out = torch.randn((n, 2 * shape[0], *shape[1:]), generator=g).to(device)
        self.eps, self.v = out[:, : shape[0]], out[:, shape[0]:].clamp(-1, 1)
        tables = GridTables(build_reverse_grid(schedule, t_star(0.5, schedule), 3), device)
        self.first = tables.gather(torch.zeros(n, dtype=torch.int64, device=device))
        self.middle = tables.gather(torch.ones(n, dtype=torch.int64, device=device))  # a noisy step
        self.rule = StartRule(StartKind.DENSEPURE, sigma=0.5)
        self.all = torch.arange(n, device=device)

    def calls(self, k) -> dict[str, tuple[callable, int]]:
        """name -> (call, minimal bytes moved), bytes per element: start 4+4, spawn 8+4, keep 12+8, advance 12+4."""
        numel = self.all.shape[0] * self.images[0].numel()
        return {
            "start (noise + start point)": (lambda: k.start_rows(self.images, self.slots, self.delta, self.rule,
                                                                 self.pools[0], self.all), 8 * numel),
            "spawn (noise + mean + std z)": (lambda: k.spawn_rows(self.pools[1], self.pools[2], self.slots,
                                                                  self.chain, self.pools[0], self.all), 12 * numel),
            "step, keep (mean, std)": (lambda: k.step_rows(self.y, self.eps, self.v, self.first, keep=KeepRows(
                self.all, self.slots, self.pools[1], self.pools[2])), 20 * numel),
            "step, advance (+ noise)": (lambda: k.step_rows(self.y, self.eps, self.v, self.middle, advance=AdvanceRows(
                self.all, self.slots, self.chain1, self.pools[3])), 16 * numel),
        }


def norm_calls(model: UNetModel, rows: int, device: torch.device, dtype: torch.dtype, k):
    """GroupNorm+SiLU at the UNet's two largest distinct (channels, size) with scale-shift: name -> (call, bytes)."""
    cfg, g = model.config, torch.Generator().manual_seed(2)
    shapes = sorted({(int(m * cfg.model_channels), cfg.image_size // 2**i) for i, m in enumerate(cfg.channel_mult)})
    out = {}
    for channels, size in shapes[-2:]:
        x = torch.randn((rows, channels, size, size), generator=g).to(device, dtype)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(channels, device=device), torch.randn(channels, device=device)
        scale, shift = (torch.randn((rows, 2 * channels, 1, 1), generator=g) * 0.1).to(device, dtype).chunk(2, dim=1)
        groups = min(cfg.num_groups, channels)
        out[f"groupnorm+silu {channels}x{size}x{size}"] = (
            lambda x=x, w=w, b=b, s=scale, t=shift, n=groups: k.group_norm_silu(x, w, b, n, 1e-5, s, t),
            2 * x.numel() * x.element_size())
    return out


def table(calls_by_impl: dict[str, dict], device, repeats: int, bandwidth: float | None) -> dict:
    """Time every call of every implementation: ``{call: {impl: {us, GB_per_s, roofline, speedup_vs_eager}}}``
    (a failure, e.g. a compile error, is recorded as ``{"error": ...}`` and the rest go on)."""
    impls = list(calls_by_impl)
    result = {}
    for name in calls_by_impl[impls[0]]:
        row = {}
        for impl in impls:
            fn, nbytes = calls_by_impl[impl][name]
            try:
                s = seconds(fn, device, repeats)
            except Exception as exc:  # noqa: BLE001 - report it and go on
                row[impl] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
                continue
            row[impl] = {"us": s * 1e6, "GB_per_s": nbytes / s / 1e9}
            if bandwidth:
                row[impl]["roofline"] = nbytes / s / bandwidth
        base = row.get(impls[0], {}).get("us")
        for impl in impls[1:]:
            if base and "us" in row.get(impl, {}):
                row[impl]["speedup_vs_eager"] = base / row[impl]["us"]
        result[name] = row
    return result


def compiled(calls: dict, mode: str) -> dict:
    return {name: (torch.compile(fn, mode=mode, dynamic=False), nbytes) for name, (fn, nbytes) in calls.items()}


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


def kernel_tables(model, inputs: RowInputs, rows: int, dtype: torch.dtype, eager, fused, device, bandwidth,
                  compile_mode, repeats: int) -> dict:
    """The row-kernel and GroupNorm+SiLU tables: eager reference | triton | compiled reference."""
    impls = {"torch": inputs.calls(eager)} | ({"triton": inputs.calls(fused)} if fused else {})
    norms = {"torch": norm_calls(model, rows, device, dtype, eager)}
    if fused:
        norms["triton"] = norm_calls(model, rows, device, dtype, fused)
    if compile_mode:
        impls["compile"] = compiled(inputs.calls(eager), compile_mode)
        norms["compile"] = compiled(norm_calls(model, rows, device, dtype, eager), compile_mode)
    with torch.inference_mode():
        return {"row_kernels": table(impls, device, repeats, bandwidth),
                "norms": table(norms, device, repeats, bandwidth)}


def unet_table(model, inputs: RowInputs, rows: int, K: int, eager, fused, device, compile_mode, repeats) -> dict:
    """UNet forwards and pipeline draws/s for the modules, fused norms and compiled variants."""
    variants = {"modules": (copy.deepcopy(model), eager)}
    if fused:
        variants["fused norms"] = (copy.deepcopy(model).set_kernels(fused), fused)
    if compile_mode:
        variants["compiled"] = (compile_module(copy.deepcopy(model), compile_mode), eager)
        if fused:
            variants["compiled + fused norms"] = (compile_module(copy.deepcopy(model).set_kernels(fused), compile_mode),
                                                  fused)
    x, t = torch.randn((rows, *inputs.shape), device=device), inputs.first.model_time
    out = {}
    for name, (net, kernels) in variants.items():
        with torch.inference_mode():
            s = seconds(lambda net=net: net.eps_and_var(x, t), device, repeats)
        draws = pipeline(net, inputs, kernels, K, device, repeats)
        out[name] = {"forward_ms": s * 1e3, "rows_per_s": rows / s, "draws_per_s": draws, "row_kernels": kernels.name,
                     "draws_vs_modules": draws / out["modules"]["draws_per_s"] if out else 1.0}
    return out


def kernel_benchmark(config: UNetConfig, schedule: NoiseSchedule, device: torch.device, rows: int,
                     dtype: torch.dtype, K: int, repeats: int, compile_mode: str | None) -> dict:
    """Every table of the module doc as one JSON-able dict (``kernels``: what Triton resolved to, or why not)."""
    torch.backends.cudnn.benchmark = True
    eager, fused, why = resolve_kernels("torch", device), None, ""
    try:
        fused = resolve_kernels("triton", device)
    except BackendError as err:  # e.g. the CPU without TRITON_INTERPRET=1: torch columns only
        why = f"triton unavailable: {err}"
    model = unet_for(config, device, dtype)
    shape = (config.in_channels, config.image_size, config.image_size)
    bandwidth = copy_bandwidth(device)
    result = {"rows": rows, "kernels": fused.describe() if fused else why, "compile": compile_mode,
              "copy_GB_per_s": bandwidth / 1e9 if bandwidth else None}
    inputs = RowInputs(rows, shape, schedule, device)
    result |= kernel_tables(model, inputs, rows, dtype, eager, fused, device, bandwidth, compile_mode, repeats)
    result["unet"] = unet_table(model, inputs, rows, K, eager, fused, device, compile_mode, repeats)
    return result


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9+]+", "_", text.lower()).strip("_")


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    """The kernel tables of the job's preset, precision, rows and K, as report metrics."""
    from densepure.bench.environment import collect_environment
    from densepure.engine.device import resolve_device

    job = run.job
    device = resolve_device(job.execution.device)
    builder.environment = collect_environment(device)
    preset = get_preset(job.models.preset)
    compile_mode = job.execution.compile.value if job.execution.compile is not None else None
    result = kernel_benchmark(preset.unet_config, preset.schedule, device, job.execution.batch_size,
                              job.execution.precision.dtype, job.smoothing.num_chains or 10, run.bench.repeats,
                              compile_mode)
    record(builder, result)


def record(builder: ReportBuilder, result: dict) -> None:
    """:func:`kernel_benchmark`'s dict as metrics: ``row_kernels.NAME.IMPL.us`` and the like."""
    builder.configuration["kernels_resolved"] = result["kernels"]
    if result["copy_GB_per_s"]:
        builder.metric("device.copy_GB_per_s", result["copy_GB_per_s"], Unit.GB_PER_S,
                       "device-to-device copy bandwidth (the roofline)")
    units = {"us": (Unit.MICROSECONDS, "per call"), "GB_per_s": (Unit.GB_PER_S, "bytes it must move, per second"),
             "roofline": (Unit.FRACTION, "of the copy bandwidth"), "speedup_vs_eager": (Unit.RATIO, "torch eager / it")}
    for group in ("row_kernels", "norms"):
        for name, row in result[group].items():
            for impl, numbers in row.items():
                if "error" in numbers:
                    builder.note(f"{group} {name} {impl}: {numbers['error']}")
                for key, value in numbers.items():
                    if key in units:
                        unit, what = units[key]
                        builder.metric(f"{group}.{_slug(name)}.{impl}.{key}", value, unit, f"{name}, {impl}: {what}")
    for variant, numbers in result["unet"].items():
        prefix = f"unet.{_slug(variant)}"
        builder.metric(f"{prefix}.forward_s", numbers["forward_ms"] / 1e3, Unit.SECONDS, f"UNet forward, {variant}")
        builder.metric(f"{prefix}.rows_per_s", numbers["rows_per_s"], Unit.ROWS_PER_S, f"UNet rows/s, {variant}")
        builder.metric(f"{prefix}.pipeline_draws_per_s", numbers["draws_per_s"], Unit.DRAWS_PER_S,
                       f"UNet-side DensePure pipeline, {variant}, {numbers['row_kernels']} row kernels")
        builder.metric(f"{prefix}.pipeline_vs_modules", numbers["draws_vs_modules"], Unit.RATIO,
                       "pipeline draws/s against the modules' norms")
    if "interpret" in str(result["kernels"]).lower() or "TRITON_INTERPRET" in str(result["kernels"]):
        builder.note("Triton ran in its interpreter: its times say nothing about speed")
