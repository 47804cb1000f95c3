"""One ``densepure bench`` run from options to report: the output directory checked before anything is
measured, the measurement filling a :class:`~densepure.bench.report.ReportBuilder` as it goes, and on
Ctrl-C the numbers measured so far kept as a report marked ``partial`` (the CLI exits 130)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from densepure.bench.options import BenchRun
from densepure.bench.output import ReportDirectory
from densepure.bench.report import Report, ReportBuilder

MEASUREMENTS = {name: f"densepure.bench.{name}" for name in
                ("throughput", "latency", "serve", "sequential", "kernels", "scaling")}


def run_bench(subcommand: str, run: BenchRun, command: Sequence[str]) -> tuple[Report, list[Path]]:
    """Measure ``subcommand`` with ``run``'s options: the report (``partial`` when interrupted) and the files
    written to ``--output`` (none without it)."""
    out = ReportDirectory(run.bench.output, run.bench.overwrite) if run.bench.output is not None else None
    if out is not None:
        out.prepare()
    if run.bench.threads:
        import torch

        torch.set_num_threads(run.bench.threads)
    report = measure(subcommand, run, command, out)
    return report, (out.write(report) if out is not None else [])


def measure(subcommand: str, run: BenchRun, command: Sequence[str], out: ReportDirectory | None = None) -> Report:
    """The report of one measurement; a Ctrl-C during it ends it with what was measured so far."""
    builder = ReportBuilder(subcommand, command, run.configuration())
    partial = False
    try:
        importlib.import_module(MEASUREMENTS[subcommand]).measure(run, builder, out)
    except KeyboardInterrupt:
        partial = True
        builder.note("interrupted (Ctrl-C): the report holds what was measured until then")
    if not builder.environment:
        from densepure.bench.environment import collect_environment

        builder.environment = collect_environment(None)
    return builder.report(partial)
