"""`densepure serve` in several configurations under the same closed-loop load, compared: a thin entry point
over `densepure bench serve`, which does the measuring; this script starts each server in turn on
127.0.0.1, points `bench serve` at it, and sets the reports side by side (`densepure bench compare`).

Configurations (``--configs``, each a server's extra flags):

* ``shared`` (``--image-slots 64``: every client's images share every UNet and classifier batch) and
  ``serial`` (``--image-slots 1``: one image at a time, as a server without step-level batching);
* ``one`` / ``two`` (``--devices cpu`` / ``cpu,cpu``, one torch thread per engine loop, each loop pinned to a
  core of its own) and ``one-free`` / ``two-free`` (the same, placed by the OS); or a device list such as
  ``cuda:0,cuda:1`` (``--devices LIST``).

Every other flag goes to `densepure bench serve` (``--concurrency 1 4 16``, ``--requests``, ``--param``,
``--timeout``, ...); the requests default to single-image certify_radius at the server's sigma
(``--param mode=certify_radius``). What is measured, and how errors are kept out of the latencies: see
``densepure bench serve --help`` and :mod:`densepure.bench.serve`. With ``--out DIR`` each configuration's
report is written to DIR/NAME (report.json, report.md, plots).

Usage: python benchmarks/serve.py [--configs shared serial] [--server-args "--K 10 --b 2"] [--threads 1]
       [--out DIR] [bench serve flags]
The last line printed is a JSON object: every configuration's metrics and each one's ratios to the first.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from common import LocalServer, machine

CONFIGS = {"shared": ("--image-slots", "64"), "serial": ("--image-slots", "1"),
           "one": ("--devices", "cpu", "--device-threads", "1", "--pin-cores"),
           "two": ("--devices", "cpu,cpu", "--device-threads", "1", "--pin-cores"),
           "one-free": ("--devices", "cpu", "--device-threads", "1"),
           "two-free": ("--devices", "cpu,cpu", "--device-threads", "1")}
RATIOS = ("requests_per_s", "p50_s", "p95_s", "draws_per_s", "server_unet_rows_per_call")


def parser(default_configs: list[str]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Any other flag is passed to `densepure bench serve`.")
    ap.add_argument("--configs", nargs="+", default=default_configs,
                    help=f"{', '.join(CONFIGS)}, or device lists such as cuda:0,cuda:1 (each: --devices LIST)")
    ap.add_argument("--server-args", default="", help="more `densepure serve` flags (models, K, b, n0, n, device)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS)")
    ap.add_argument("--out", help="write each configuration's report to OUT/NAME")
    return ap


def measure(url: str, bench_args: list[str], output: str | None):
    """`densepure bench serve URL BENCH_ARGS` in this process (the CLI's own parser and options): its report."""
    from densepure.bench.session import run_bench
    from densepure.cli import build_parser
    from densepure.cli.arguments import options_from_args

    params = [] if "--param" in bench_args else ["--param", "mode=certify_radius"]
    argv = ["bench", "serve", url, *params, *bench_args, *(["--output", output, "--overwrite"] if output else [])]
    report, _ = run_bench("serve", options_from_args(build_parser().parse_args(argv)), ["densepure", *argv])
    return report


def main(default_configs: list[str] | None = None, more_server_args: tuple[str, ...] = (),
         pairs: tuple[tuple[str, str], ...] | None = None) -> None:
    """Measure each configuration; ``pairs`` (a, b): compare b with a (default: each with the first)."""
    from densepure.bench.render import compare, markdown

    args, bench_args = parser(default_configs or ["shared", "serial"]).parse_known_args()
    reports = {}
    for name in args.configs:
        flags = CONFIGS.get(name, ("--devices", name))
        server_args = [*shlex.split(args.server_args), *flags, *more_server_args]
        with LocalServer(server_args, args.threads) as server:
            print(f"== {name}: densepure serve {shlex.join(server_args)}", file=sys.stderr, flush=True)
            reports[name] = measure(server.url, bench_args, f"{args.out}/{name}" if args.out else None)
        print(markdown(reports[name]))
    first = next(iter(reports))
    pairs = [(a, b) for a, b in (pairs or [(first, name) for name in list(reports)[1:]]) if {a, b} <= set(reports)]
    for a, b in pairs:
        print(compare(reports[a], reports[b], a, b))
    print(f"servers: {args.threads} torch thread(s) each; client: {machine()}")
    print(json.dumps(summary(reports, pairs)))


def summary(reports: dict, pairs: list[tuple[str, str]]) -> dict:
    """Every configuration's metrics, and per pair (a, b) the ratios b / a of each level's requests/s,
    latencies, draws/s and rows per call."""
    values = {name: {k: m.value for k, m in report.metrics.items()} for name, report in reports.items()}
    ratios = {f"{b}/{a}": {k: values[b][k] / values[a][k] for k in values[a]
                           if k.split(".")[-1] in RATIOS and values[a][k] and k in values[b]} for a, b in pairs}
    return {"configs": values, "ratios": ratios}


if __name__ == "__main__":
    main()
