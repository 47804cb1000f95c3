"""``densepure bench kernels``: each fused kernel against torch eager (its reference) and torch.compile.

For a batch of ``--batch-size`` rows of the preset's UNet architecture (seeded random weights, every
parameter perturbed: speed depends on the shapes, and no output is trivially 0):

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

**Reference first.** Before any implementation other than the torch reference is timed, its outputs are
checked against the reference's on the same inputs, with a dtype-aware tolerance
(:data:`densepure.kernels.groupnorm.TOLERANCE` of the coarser of the two dtypes, times ``--check-scale``;
the absolute part relative to the largest reference value; whole UNet forwards at 10 times that). One
that disagrees is reported with its error (a note, and ``...checked`` = 0) and never timed. fp32 runs as
exact float32 (TF32 off, as in the engine; the flags are recorded) and cuDNN autotuning stays off, as in
the engine.

Triton runs on CUDA; on the CPU only in its interpreter (``TRITON_INTERPRET=1``), whose times say nothing
about speed: such a run checks that every path executes and agrees. torch.compile is timed with
``--compile MODE``. Each row's numbers enter the report as soon as they are measured.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import torch

from densepure.bench.common import copy_bandwidth, seconds
from densepure.bench.kernel_inputs import RowInputs, norm_calls, unet_for
from densepure.bench.models import RANDOM_UNET_WEIGHTS
from densepure.bench.options import BenchRun
from densepure.bench.report import ReportBuilder, Unit
from densepure.errors import BackendError
from densepure.kernels import compile_module, resolve_kernels
from densepure.kernels.groupnorm import TOLERANCE
from densepure.models import get_preset

UNET_CHECK_FACTOR = 10  # a whole forward accumulates the rounding of dozens of ops


def _outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in _outputs(item)] if isinstance(value, (tuple, list)) else []


def check(reference: Callable, candidate: Callable, scale: float) -> str | None:
    """None if ``candidate()`` gives ``reference()``'s outputs within tolerance, else what differs.

    Per output: ``|got - want| <= atol * max|want| + rtol * |want|`` elementwise, with ``(rtol, atol)`` the
    coarser of the two dtypes' :data:`TOLERANCE` times ``scale``; shapes must match and outputs be finite.
    The reference's outputs are copied before the candidate runs (both may write the same buffers)."""
    produced = _outputs(reference())
    dtypes, want = [t.dtype for t in produced], [t.detach().float().clone() for t in produced]
    made = _outputs(candidate())
    got = [t.detach().float() for t in made]
    if len(got) != len(want):
        return f"returned {len(got)} tensors, the reference {len(want)}"
    for i, (g, w, dtype, other) in enumerate(zip(got, want, dtypes, (t.dtype for t in made), strict=True)):
        tols = [TOLERANCE.get(d, TOLERANCE[torch.float32]) for d in (dtype, other)]
        rtol, atol = (scale * max(pair) for pair in zip(*tols, strict=True))
        if g.shape != w.shape:
            return f"output {i} has shape {tuple(g.shape)}, the reference {tuple(w.shape)}"
        bound = atol * float(w.abs().max()) + rtol * w.abs()
        if not bool(((g - w).abs() <= bound).all()) or not bool(torch.isfinite(g).all()):
            return (f"output {i} differs from the reference: max |diff| {float((g - w).abs().max()):.3g} "
                    f"(rtol {rtol:.1g}, atol {atol:.1g} x max)")
    return None


def table(calls_by_impl: dict[str, dict], device, repeats: int, bandwidth: float | None, check_scale: float,
          on_row: Callable[[str, dict], None] = lambda name, row: None) -> dict:
    """Check every implementation against the first (the reference), then time those that agree:
    ``{call: {impl: {us, GB_per_s, roofline, speedup_vs_eager, checked}}}``. One that disagrees is
    ``{"error": "not timed: ...", "checked": False}``; one that fails (e.g. a compile error) ``{"error": ...}``;
    the rest go on. ``on_row(call, row)`` hears each row as soon as it is measured."""
    impls = list(calls_by_impl)
    result = {}
    for name in calls_by_impl[impls[0]]:
        row = {}
        for impl in impls:
            fn, nbytes = calls_by_impl[impl][name]
            try:
                wrong = None if impl == impls[0] else check(calls_by_impl[impls[0]][name][0], fn, check_scale)
                if wrong is not None:
                    row[impl] = {"error": f"not timed: {wrong}", "checked": False}
                    continue
                s = seconds(fn, device, repeats)
            except Exception as exc:  # noqa: BLE001 - report it and go on
                row[impl] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
                continue
            row[impl] = {"us": s * 1e6, "GB_per_s": nbytes / s / 1e9, "checked": impl != impls[0]}
            if bandwidth:
                row[impl]["roofline"] = nbytes / s / bandwidth
        base = row.get(impls[0], {}).get("us")
        for impl in impls[1:]:
            if base and "us" in row.get(impl, {}):
                row[impl]["speedup_vs_eager"] = base / row[impl]["us"]
        result[name] = row
        on_row(name, row)
    return result


def compiled(calls: dict, mode: str) -> dict:
    return {name: (torch.compile(fn, mode=mode, dynamic=False), nbytes) for name, (fn, nbytes) in calls.items()}


def pipeline(model, inputs: RowInputs, kernels, K: int, device, repeats) -> float:
    """Draws/s of the UNet side of DensePure (b=2): a start batch, then K chain batches per draw."""
    from densepure.kernels import AdvanceRows, KeepRows

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


class KernelBench:
    """The tables of one run: ``model`` (the preset's UNet at ``dtype``) on ``device``, ``rows`` per call;
    ``on_row(group, call, row)`` hears each row as it is measured."""

    def __init__(self, model, inputs: RowInputs, rows: int, device, repeats: int, check_scale: float,
                 compile_mode: str | None, on_row: Callable[[str, str, dict], None]):
        self.model, self.inputs, self.rows, self.device = model, inputs, rows, device
        self.repeats, self.check_scale, self.compile_mode, self.on_row = repeats, check_scale, compile_mode, on_row
        self.eager, self.fused, self.why = resolve_kernels("torch", device), None, ""
        try:
            self.fused = resolve_kernels("triton", device)
        except BackendError as err:  # e.g. the CPU without TRITON_INTERPRET=1: torch columns only
            self.why = f"triton unavailable: {err}"
        self.bandwidth = copy_bandwidth(device)

    def kernel_tables(self, dtype: torch.dtype) -> dict:
        """The row-kernel and GroupNorm+SiLU tables: eager reference | triton | compiled reference."""
        inputs, model, rows, device = self.inputs, self.model, self.rows, self.device
        impls = {"torch": inputs.calls(self.eager)} | ({"triton": inputs.calls(self.fused)} if self.fused else {})
        norms = {"torch": norm_calls(model, rows, device, dtype, self.eager)}
        if self.fused:
            norms["triton"] = norm_calls(model, rows, device, dtype, self.fused)
        if self.compile_mode:
            impls["compile"] = compiled(inputs.calls(self.eager), self.compile_mode)
            norms["compile"] = compiled(norm_calls(model, rows, device, dtype, self.eager), self.compile_mode)
        out = {}
        with torch.inference_mode():
            for group, calls in (("row_kernels", impls), ("norms", norms)):
                out[group] = table(calls, device, self.repeats, self.bandwidth, self.check_scale,
                                   lambda name, row, group=group: self.on_row(group, name, row))
        return out

    def unet_table(self, K: int) -> dict:
        """UNet forwards and pipeline draws/s for the modules, fused norms and compiled variants, each checked
        against the modules' forward first."""
        model, fused, mode = self.model, self.fused, self.compile_mode
        variants = {"modules": (copy.deepcopy(model), self.eager)}
        if fused:
            variants["fused norms"] = (copy.deepcopy(model).set_kernels(fused), fused)
        if mode:
            variants["compiled"] = (compile_module(copy.deepcopy(model), mode), self.eager)
            if fused:
                variants["compiled + fused norms"] = (compile_module(copy.deepcopy(model).set_kernels(fused), mode),
                                                      fused)
        x, t = torch.randn((self.rows, *self.inputs.shape), device=self.device), self.inputs.first.model_time
        reference, out = variants["modules"][0], {}
        for name, (net, kernels) in variants.items():
            with torch.inference_mode():
                wrong = None if name == "modules" else check(lambda: reference.eps_and_var(x, t),
                                                             lambda net=net: net.eps_and_var(x, t),
                                                             UNET_CHECK_FACTOR * self.check_scale)
                if wrong is not None:
                    out[name] = {"error": f"not timed: {wrong}", "checked": False}
                    self.on_row("unet", name, out[name])
                    continue
                s = seconds(lambda net=net: net.eps_and_var(x, t), self.device, self.repeats)
            draws = pipeline(net, self.inputs, kernels, K, self.device, self.repeats)
            out[name] = {"forward_ms": s * 1e3, "rows_per_s": self.rows / s, "draws_per_s": draws,
                         "row_kernels": kernels.name, "checked": name != "modules",
                         "draws_vs_modules": draws / out["modules"]["draws_per_s"] if "modules" in out else 1.0}
            self.on_row("unet", name, out[name])
        return out


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    """The kernel tables of the job's preset, precision, rows and K, as report metrics (each row as measured)."""
    from densepure.bench.environment import collect_environment
    from densepure.engine.device import resolve_device
    from densepure.precision import float32_math, tf32_flags

    job = run.job
    device = resolve_device(job.execution.device)
    builder.environment = collect_environment(device)
    preset = get_preset(job.models.preset)
    dtype, rows, scale = job.execution.precision.dtype, job.execution.batch_size, run.kernels.check_scale
    compile_mode = job.execution.compile.value if job.execution.compile is not None else None
    torch.backends.cudnn.benchmark = False  # as in the engine: no autotuning between the checked and the timed
    with float32_math(False):  # fp32 is exact float32, as in the engine (densepure.precision)
        model, inputs = unet_for(preset.unet_config, device, dtype), RowInputs(rows, _shape(preset), preset.schedule,
                                                                                 device)
        bench = KernelBench(model, inputs, rows, device, run.bench.repeats, scale, compile_mode,
                            lambda group, name, row: record_row(builder, group, name, row))
        builder.configuration.update(
            kernels_resolved=bench.fused.describe() if bench.fused else bench.why, tf32_flags=tf32_flags(),
            cudnn_benchmark=False, cuda_graphs=False, weights=RANDOM_UNET_WEIGHTS,
            check=f"against the torch reference, TOLERANCE x {scale:g} (UNet x {UNET_CHECK_FACTOR * scale:g})")
        if bench.bandwidth:
            builder.metric("device.copy_GB_per_s", bench.bandwidth / 1e9, Unit.GB_PER_S,
                           "device-to-device copy bandwidth (the roofline)")
        if bench.fused and "interpret" in bench.fused.describe().lower():
            builder.note("Triton ran in its interpreter: its times say nothing about speed")
        bench.kernel_tables(dtype)
        bench.unet_table(job.smoothing.num_chains or 10)


def _shape(preset) -> tuple[int, int, int]:
    config = preset.unet_config
    return config.in_channels, config.image_size, config.image_size


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9+]+", "_", text.lower()).strip("_")


_UNITS = {"us": (Unit.MICROSECONDS, "per call"), "GB_per_s": (Unit.GB_PER_S, "bytes it must move, per second"),
          "roofline": (Unit.FRACTION, "of the copy bandwidth"), "speedup_vs_eager": (Unit.RATIO, "torch eager / it")}


def record_row(builder: ReportBuilder, group: str, name: str, row: dict) -> None:
    """One measured row as metrics: ``row_kernels.NAME.IMPL.us`` and the like, ``unet.VARIANT.rows_per_s``;
    every checked implementation has ``...checked`` (1 agreed with the reference, 0 did not: not timed)."""
    if group == "unet":
        return _record_unet(builder, name, row)
    for impl, numbers in row.items():
        if "error" in numbers:
            builder.note(f"{group} {name} {impl}: {numbers['error']}")
        for key, value in numbers.items():
            if key in _UNITS:
                unit, what = _UNITS[key]
                builder.metric(f"{group}.{_slug(name)}.{impl}.{key}", value, unit, f"{name}, {impl}: {what}")
        if impl != "torch" and "checked" in numbers:
            builder.metric(f"{group}.{_slug(name)}.{impl}.checked", int(numbers["checked"]), Unit.COUNT,
                           f"{name}, {impl}: 1 if it agreed with the torch reference (then timed), 0 if not")


def _record_unet(builder: ReportBuilder, variant: str, numbers: dict) -> None:
    prefix = f"unet.{_slug(variant)}"
    if "error" in numbers:
        builder.note(f"UNet {variant}: {numbers['error']}")
        builder.metric(f"{prefix}.checked", 0, Unit.COUNT, f"UNet {variant} disagreed with the modules: not timed")
        return
    if numbers["checked"]:
        builder.metric(f"{prefix}.checked", 1, Unit.COUNT, f"UNet {variant} agreed with the modules' forward")
    builder.metric(f"{prefix}.forward_s", numbers["forward_ms"] / 1e3, Unit.SECONDS, f"UNet forward, {variant}")
    builder.metric(f"{prefix}.rows_per_s", numbers["rows_per_s"], Unit.ROWS_PER_S, f"UNet rows/s, {variant}")
    builder.metric(f"{prefix}.pipeline_draws_per_s", numbers["draws_per_s"], Unit.DRAWS_PER_S,
                   f"UNet-side DensePure pipeline, {variant}, {numbers['row_kernels']} row kernels")
    builder.metric(f"{prefix}.pipeline_vs_modules", numbers["draws_vs_modules"], Unit.RATIO,
                   "pipeline draws/s against the modules' norms")
