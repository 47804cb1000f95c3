"""`densepure serve` with one shared engine against one request at a time: two servers, one `densepure bench serve`.

A thin entry point over ``densepure bench serve`` (densepure/bench/serve.py measures): two servers are started
in turn on 127.0.0.1 with the same models and settings, ``shared`` (``--image-slots 64``: every client's
images share every UNet and classifier batch) and ``serial`` (``--image-slots 1``: one image at a time, as
a server without step-level batching), and the same closed-loop concurrency sweep of certify_radius
requests runs against each. ``--out DIR`` keeps both reports (DIR/shared, DIR/serial); the last line
printed is a JSON object with both sweeps and the shared / serial ratios at the highest concurrency.

Usage: python benchmarks/serve.py [--concurrency 1 4 16] [--requests 8 16 32] [--threads 1]
       [--server-args "--K 10 --b 2"] [--radius R] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from densepure.bench.render import compare
from densepure.bench.report import read_report

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {"shared": ("--image-slots", "64"), "serial": ("--image-slots", "1")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_against(server_args: list[str], bench_args: list[str], threads: int, out: Path) -> None:
    """Start a server with ``server_args``, run ``densepure bench serve`` against it into ``out``, stop it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    server = subprocess.Popen([sys.executable, "-m", "densepure.cli", "serve", "--port", str(port), "--no-access-log",
                               "--log-level", "warning", *server_args], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait = [sys.executable, "-c", "from densepure.serve.client import Client; "
                f"Client('http://127.0.0.1:{port}').wait_ready(timeout=300)"]
        subprocess.run(wait, env=env, cwd=ROOT, check=True)
        subprocess.run([sys.executable, "-m", "densepure.cli", "bench", "serve", f"http://127.0.0.1:{port}",
                        "--output", str(out), "--overwrite", *bench_args], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def sweep_rows(report) -> list[dict]:
    series = report.series["concurrency"]
    names = [name for name, _ in series.columns]
    return [dict(zip(names, row, strict=True)) for row in series.rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, nargs="+", default=None)
    ap.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS)")
    ap.add_argument("--server-args", default="", help="more `densepure serve` flags (models, K, b, n0, n, device)")
    ap.add_argument("--radius", type=float, default=None, help="certify_radius radius (default: the server's sigma)")
    ap.add_argument("--out", default=None, help="keep both reports here (default: a temporary directory)")
    args = ap.parse_args()
    bench = ["--concurrency", *map(str, args.concurrency), "--param", "mode=certify_radius"]
    bench += ["--requests", *map(str, args.requests)] if args.requests else []
    bench += ["--param", f"radius={args.radius}"] if args.radius is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for name in args.servers:
            bench_against([*shlex.split(args.server_args), *SERVERS[name]], bench, args.threads, root / name)
        reports = {name: read_report(root / name) for name in args.servers}
    summary = {"server_args": shlex.split(args.server_args), "threads": args.threads,
               "results": {name: sweep_rows(r) for name, r in reports.items()}}
    if {"shared", "serial"} <= set(reports):
        print(compare(reports["serial"], reports["shared"], "serial", "shared"))
        shared, serial = summary["results"]["shared"][-1], summary["results"]["serial"][-1]
        summary["ratio"] = {"clients": shared["clients"],
                            "throughput": shared["requests_per_s"] / serial["requests_per_s"],
                            "p50_shared_s": shared["p50_s"], "p50_serial_s": serial["p50_s"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
