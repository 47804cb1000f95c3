"""One ``densepure bench`` run from options to report: the output directory checked before anything is
measured, the measurement filling a :class:`~densepure.bench.report.ReportBuilder` as it goes, and on
Ctrl-C the numbers measured so far written as a report marked ``partial`` (exit status 130)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from densepure.bench.options import BenchRun
from densepure.bench.output import ReportDirectory
from densepure.bench.render import markdown
from densepure.bench.report import Report, ReportBuilder

MEASUREMENTS = {name: f"densepure.bench.{name}" for name in
                ("throughput", "latency", "serve", "sequential", "kernels", "scaling")}
INTERRUPTED = 130


def run_bench(subcommand: str, run: BenchRun, command: Sequence[str]) -> int:
    """Measure ``subcommand`` with ``run``'s options; print the report, write it to ``--output``; the exit
    status (130 when interrupted)."""
    out = ReportDirectory(run.bench.output, run.bench.overwrite) if run.bench.output is not None else None
    if out is not None:
        out.prepare()
    if run.bench.threads:
        import torch

        torch.set_num_threads(run.bench.threads)
    report = measure(subcommand, run, command, out)
    print(markdown(report))
    if out is not None:
        for path in out.write(report):
            print(f"wrote {path}", file=sys.stderr)
    return INTERRUPTED if report.partial else 0


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
