"""``densepure bench SUBCOMMAND``: the benchmarks, with certify's model, smoothing, statistics and execution
groups (:mod:`densepure.cli.arguments`) and the benchmark's own; one builder, :meth:`BenchRun.build`, makes
the options of them all. Each subcommand prints its report and with ``--output DIR`` writes it there."""

from __future__ import annotations

import argparse

from densepure.bench.options import PROCEDURES, BenchRun, Scenario
from densepure.cli.arguments import (
    add_data_arguments,
    add_execution_arguments,
    add_model_arguments,
    add_smoothing_arguments,
    add_statistics_arguments,
    options_from_args,
)
from densepure.kernels import CompileMode
from densepure.precision import Precision

_SCENARIOS = {"throughput": (Scenario.OFFLINE,), "latency": (Scenario.SINGLE_STREAM, Scenario.SERVER),
              "serve": tuple(Scenario)}
_CONCURRENCY = {"latency": "closed-loop clients of one engine here, each certifying one image at a time (default: "
                           "none, one image at a time)",
                "serve": "closed-loop client counts (default: 1 4 16)"}
_HELP = {
    "throughput": "images/hour, draws/s, rows per call, MFU of the engine; --baseline official: against the "
                  "published DensePure loop on the same images and seeds",
    "latency": "one image at a time: latency percentiles and draws per image (certify_radius with --radius); "
               "--concurrency: closed-loop clients of one engine, as a server's engine loop",
    "serve": "an Open Inference Protocol v2 server under load: concurrency sweep or LoadGen scenarios",
    "sequential": "draws per decision of the sequential tests on a Bernoulli oracle (no model)",
    "kernels": "each fused kernel checked against its torch reference, then timed beside it (and torch.compile), "
               "on the preset's UNet shapes",
    "models": "each model alone at the engine's rows per call: rows/s with and without CUDA graphs, FLOPs, MFU",
    "scaling": "images/hour of a Ray run with 1, 2, ... workers",
}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: throughput, latency, serve, ... (one report format)",
                       description="Measure densepure on this machine. Every subcommand prints a report and, with "
                                   "--output DIR, writes DIR/report.json (versioned schema), report.md and plots. An "
                                   "unset --seed is 0. Ctrl-C writes what was measured so far, marked partial.")
    p.set_defaults(_func=lambda args: (p.print_help(), 0)[1])
    commands = p.add_subparsers(dest="_bench", metavar="SUBCOMMAND")
    for name in ("throughput", "latency", "scaling"):
        q = _subcommand(commands, name)
        add_model_arguments(q)
        add_data_arguments(q)
        add_smoothing_arguments(q)
        add_statistics_arguments(q, predict=False, also_k=False, anytime=False)
        add_execution_arguments(q)
        if name == "throughput":
            add_throughput_arguments(q)
        elif name == "latency":
            add_random_weights(q.add_argument_group("models"))
        else:
            add_scaling_arguments(q)
        if name in _SCENARIOS:
            add_load_arguments(q, _SCENARIOS[name])
        if name in _CONCURRENCY:
            add_concurrency_arguments(q, _CONCURRENCY[name])
    q = _subcommand(commands, "serve", timed=False)
    q.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    add_data_arguments(q)
    add_serve_arguments(q)
    add_load_arguments(q, _SCENARIOS["serve"])
    add_concurrency_arguments(q, _CONCURRENCY["serve"])
    q = _subcommand(commands, "sequential", timed=False)
    add_simulation_arguments(q)
    q = _subcommand(commands, "kernels")
    add_kernels_arguments(q)
    q.set_defaults(random_weights=True)  # the preset's architecture, never its checkpoint
    q = _subcommand(commands, "models")
    add_model_arguments(q)
    add_execution_arguments(q)
    g = q.add_argument_group("models and MFU")
    add_random_weights(g)
    add_peak_argument(g)
    q = commands.add_parser("compare", help="two reports side by side, with B / A for every metric")
    q.add_argument("reports", nargs=2, metavar="REPORT", help="report.json files (or the directories holding them)")
    q.set_defaults(_func=compare)


def _subcommand(commands, name: str, timed: bool = True) -> argparse.ArgumentParser:
    """A bench subcommand with the report flags, and for those that time models here (``timed``) --repeats
    and --threads."""
    q = commands.add_parser(name, help=_HELP[name], description=_HELP[name], argument_default=argparse.SUPPRESS)
    g = q.add_argument_group("report")
    g.add_argument("--output", help="write report.json, report.md and plots into this directory")
    g.add_argument("--overwrite", action="store_true", help="replace a report already in --output")
    g.add_argument("--progress-json", action="store_true",
                   help='also print each figure on stdout as a JSON line {"partial": {NAME: VALUE}} the moment it is '
                        "measured (a harness that stops the run keeps them)")
    if timed:
        g.add_argument("--repeats", type=int, help="measure this many times (alternating sides; medians) "
                                                   "(default: 1)")
        g.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    q.set_defaults(_func=run, _build=BenchRun.build)
    return q


def add_random_weights(g) -> None:
    g.add_argument("--random-weights", action="store_true",
                   help="cifar10/imagenet256: the preset's UNet and a classifier of the papers' size with seeded "
                        "random weights (no checkpoint; speed only, labels mean nothing)")


def add_throughput_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("baseline and MFU")
    g.add_argument("--baseline", choices=["official"],
                   help="also run the published DensePure loop (K passes, fp32 eager) on the same images and seed")
    g.add_argument("--official-batch", type=int, help="the official loop's draws per batch (default: 100; "
                                                      "imagenet256: 16, as published)")
    g.add_argument("--official-precision", choices=[p.value for p in Precision if p.torch_compute],
                   help="the official loop's precision (default: fp32, exact float32, as published)")
    add_peak_argument(g)
    add_random_weights(g)


def add_peak_argument(g) -> None:
    g.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: the data sheet's for H100, "
                                                     "H200, A100, L4, L40S at the precision; MFU against the matmul "
                                                     "rate measured here is reported beside it)")


def add_load_arguments(p: argparse.ArgumentParser, scenarios: tuple[Scenario, ...]) -> None:
    g = p.add_argument_group("MLPerf LoadGen (pip install mlcommons-loadgen)")
    g.add_argument("--scenario", choices=[s.value for s in scenarios],
                   help="let LoadGen issue the queries: single-stream (one at a time), server (Poisson arrivals at "
                        "--target-qps under --latency-bound), offline (all at once)")
    g.add_argument("--target-qps", type=float, nargs="+",
                   help="server: arrival rates, one LoadGen test each; single-stream: 1 / the expected latency; "
                        "offline: the expected throughput (default: 1)")
    g.add_argument("--latency-bound", dest="latency_bound_s", type=float,
                   help="server: the 99th-percentile latency bound in seconds (default: 60)")
    g.add_argument("--min-duration", dest="min_duration_s", type=float,
                   help="LoadGen's minimum test duration in seconds (default: 10)")
    g.add_argument("--max-duration", dest="max_duration_s", type=float,
                   help="LoadGen's maximum test duration in seconds (default: 0, none)")
    g.add_argument("--min-queries", type=int, help="LoadGen's minimum query count (default: 1)")
    if scenarios != tuple(Scenario):
        g.add_argument("--image-slots", type=int,
                       help="images the local engine holds at once (default: 1 for single-stream, else 64)")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--model", help="the model name on the server (default: digits)")
    g.add_argument("--param", dest="params", action="append",
                   help="a request parameter KEY=VALUE, repeatable: mode=certify n=1000, radius=0.25, ...")
    g.add_argument("--timeout", dest="timeout_s", type=float, help="seconds per request (default: 600)")


def add_concurrency_arguments(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("closed-loop clients")
    g.add_argument("--concurrency", type=int, nargs="+", help=what)
    g.add_argument("--requests", type=int, nargs="+", help="requests per level (default: 2 per client, at least 4)")


def add_simulation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the Bernoulli oracle")
    g.add_argument("--reps", type=int, help="repetitions per cell (default: 1000)")
    g.add_argument("--p", dest="p_values", type=float, nargs="+", help="true p_A values (default: 0.80 ... 0.9999)")
    g.add_argument("--r", dest="radii", type=float, nargs="+", help="radii in units of sigma (default: 1 2)")
    g.add_argument("--n-max", type=int, nargs="+", help="largest estimation draws (default: 10000 100000)")
    g.add_argument("--procedures", nargs="+", choices=PROCEDURES, help="the tests compared (default: all)")
    g.add_argument("--sigma", type=float, help="smoothing noise level (default: 0.25)")
    g.add_argument("--alpha", type=float, help="failure probability (default: 0.001)")
    g.add_argument("--seed", type=int, help="seed of the Bernoulli streams (default: 0)")


def add_kernels_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kernels")
    g.add_argument("--preset", help="the UNet architecture, with seeded random weights (default: digits)")
    g.add_argument("--K", dest="num_chains", type=int, help="chains per draw in the pipeline rate (default: 10)")
    g.add_argument("--batch-size", type=int, help="rows per call (default: 500)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--precision", choices=[p.value for p in Precision],
                   help="the UNet's precision (default: fp32)")
    g.add_argument("--compile", choices=[m.value for m in CompileMode], help="also time torch.compile in this mode")
    g.add_argument("--check-scale", type=float,
                   help="times the dtype's tolerance a kernel may differ from its torch reference before it is "
                        "refused untimed (default: 4; whole UNet forwards: 10 times that)")


def add_scaling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scaling (Ray)")
    g.add_argument("--workers", type=int, nargs="+", help="worker counts measured in turn (default: 1 2)")
    g.add_argument("--worker-threads", type=int, help="torch threads per worker (default: 1)")
    g.add_argument("--single", action=argparse.BooleanOptionalAction,
                   help="also time one process without Ray (default: on)")


def run(args: argparse.Namespace) -> int:
    """Measure, print the report (markdown), say where it was written; 130 when interrupted (partial)."""
    import os
    import sys

    from densepure.bench.render import markdown
    from densepure.bench.session import run_bench

    options = options_from_args(args)
    listener = _print_progress if options.bench.progress_json else None
    report, written = run_bench(args._bench, options, args._argv, listener)
    print(markdown(report))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if report.partial:
        from densepure.bench.loadgen import abandoned

        if abandoned():  # an interrupted LoadGen test cannot be stopped: leave without finalizing (its doc)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    return 0


def _print_progress(figures: dict) -> None:
    from densepure.bench.report import progress_line

    print(progress_line(figures), flush=True)


def compare(args: argparse.Namespace) -> int:
    from densepure.bench.render import compare as side_by_side
    from densepure.bench.report import read_report

    a, b = (read_report(path) for path in args.reports)
    print(side_by_side(a, b, *args.reports))
    return 0
