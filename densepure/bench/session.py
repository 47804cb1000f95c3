"""One ``densepure bench`` run from options to report: the output directory checked before anything is
measured, the measurement filling a :class:`~densepure.bench.report.ReportBuilder` as it goes (a listener
hears each figure the moment it is measured), and on Ctrl-C or a failure the numbers measured so far kept
as a report marked ``partial`` (the CLI exits 130 on Ctrl-C; a failure is written, then raised)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from densepure.bench.options import BenchRun
from densepure.bench.output import ReportDirectory
from densepure.bench.report import Listener, Report, ReportBuilder

MEASUREMENTS = {name: f"densepure.bench.{name}" for name in
                ("throughput", "latency", "serve", "sequential", "kernels", "scaling")}
MEASUREMENTS["models"] = "densepure.bench.model_rates"


def run_bench(subcommand: str, run: BenchRun, command: Sequence[str],
              listener: Listener | None = None) -> tuple[Report, list[Path]]:
    """Measure ``subcommand`` with ``run``'s options: the report (``partial`` when interrupted) and the files
    written to ``--output`` (none without it). A measurement that fails after measuring something still
    writes it (partial, the error its last note) before the error is raised."""
    out = ReportDirectory(run.bench.output, run.bench.overwrite) if run.bench.output is not None else None
    if out is not None:
        out.prepare()
    if run.bench.threads:
        import torch

        torch.set_num_threads(run.bench.threads)
    report, error = _measure(subcommand, run, command, out, listener)
    measured = bool(report.metrics or report.series or report.loadgen)
    written = out.write(report) if out is not None and (error is None or measured) else []
    if error is not None:
        raise error
    return report, written


def measure(subcommand: str, run: BenchRun, command: Sequence[str], out: ReportDirectory | None = None,
            listener: Listener | None = None) -> Report:
    """The report of one measurement; a Ctrl-C during it ends it with what was measured so far."""
    report, error = _measure(subcommand, run, command, out, listener)
    if error is not None:
        raise error
    return report


def _measure(subcommand, run, command, out, listener) -> tuple[Report, BaseException | None]:
    builder = ReportBuilder(subcommand, command, run.configuration(), listener)
    partial, error = False, None
    try:
        importlib.import_module(MEASUREMENTS[subcommand]).measure(run, builder, out)
    except KeyboardInterrupt:
        partial = True
        builder.note("interrupted (Ctrl-C): the report holds what was measured until then")
    except Exception as exc:  # noqa: BLE001 - what was measured is kept, then the error goes on
        partial, error = True, exc
        builder.note(f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}): "
                     "the report holds what was measured until then")
    if not builder.environment:
        from densepure.bench.environment import collect_environment

        builder.environment = collect_environment(None)
    return builder.report(partial), error
