"""Latency and throughput of `densepure serve` against concurrency: one shared engine vs one request at a time.

Two servers are started in turn on 127.0.0.1 with the same models and settings: ``shared`` (the default,
``--image-slots 64``: every client's images share every UNet and classifier batch) and ``serial``
(``--image-slots 1``: the engine holds one image at a time, so requests are served one after another, as
by a server without step-level batching). For each concurrency c, c client threads send single-image
certify_radius requests (r = sigma by default) back to back, a closed loop, until ``--requests`` are
answered; each request is a different digits test image, the same sequence for both servers. Reported:
throughput (requests/s), latency p50/p95/p99 from sending to the answer, mean draws per request, and from
the server's own metrics the mean UNet rows per call and UNet rows/s: sharing fills the batches, and how
much more a fuller batch runs per second is the device's, which bounds what sharing can gain.
Loopback only; bounded by ``--requests`` per level and ``--timeout`` per request.

Usage: python benchmarks/serve.py [--concurrency 1 4 16] [--requests 8 16 32] [--threads 1]
       [--server-args "--K 10 --b 2"] [--radius R] [--servers shared serial] [--partial]
The last line printed is a JSON object with every number (``--partial``: each level's also as measured).
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
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, pythonpath

from densepure.models.digits import load_digits_test_split
from densepure.serve.client import Client

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {"shared": ("--image-slots", "64"), "serial": ("--image-slots", "1")}
UNET_ROWS, UNET_CALLS = "densepure_denoiser_rows_total", "densepure_batch_rows_count"


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over every ``device`` of the server)."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(value for key, value in samples.items()
               if key.split("{")[0] == name and all(w in key for w in want))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": pythonpath(str(ROOT)), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, "-m", "densepure.cli", "serve", "--port", str(self.port),
                                      "--no-access-log", "--log-level", "warning", *args], env=env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Server:
        with Client(self.url) as client:
            client.wait_ready(timeout=300)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def closed_loop(url: str, images: np.ndarray, clients: int, requests: int, params: dict, timeout: float) -> dict:
    """``clients`` threads send ``requests`` single-image requests back to back; latencies and wall time."""
    lock, latencies, draws, certified = threading.Lock(), [], [], []
    next_index = [0]

    def worker() -> None:
        with Client(url, timeout=timeout) as client:
            while True:
                with lock:
                    i = next_index[0]
                    if i >= requests:
                        return
                    next_index[0] += 1
                start = time.perf_counter()
                result = client.infer(images[i % len(images)], **params)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    draws.append(int(result.draws[0]))
                    certified.append(bool(result.certified[0]) if result.certified is not None else False)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    with Client(url) as client:
        before = client.metrics()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    with Client(url) as client:
        after = client.metrics()
    unet_rows = total(after, UNET_ROWS) - total(before, UNET_ROWS)
    unet_calls = total(after, UNET_CALLS, model="denoiser") - total(before, UNET_CALLS, model="denoiser")
    lat = np.array(latencies)
    return {"clients": clients, "requests": len(lat), "wall_s": wall, "throughput_rps": len(lat) / wall,
            "unet_rows_per_call": unet_rows / max(unet_calls, 1), "unet_rows_per_s": unet_rows / wall,
            "draws_per_s": float(np.sum(draws)) / wall,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "p99_s": float(np.percentile(lat, 99)), "mean_draws": float(np.mean(draws)),
            "certified": float(np.mean(certified))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, nargs="+", default=None,
                    help="requests per concurrency level (default: 2 per client, at least 4)")
    ap.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS)")
    ap.add_argument("--server-args", default="", help="more `densepure serve` flags (models, K, b, n0, n, device)")
    ap.add_argument("--radius", type=float, default=None, help="certify_radius radius (default: the server's sigma)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request at most")
    ap.add_argument("--partial", action="store_true", help="also print each level's numbers as a JSON line as measured")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # machine() reports the server's thread count
    counts = args.requests or [max(4, 2 * c) for c in args.concurrency]
    if len(counts) != len(args.concurrency):
        ap.error("give one --requests count per --concurrency level")
    images = load_digits_test_split()[0].numpy()
    params = {"mode": "certify_radius", **({"radius": args.radius} if args.radius is not None else {})}
    extra = shlex.split(args.server_args)
    results: dict[str, list[dict]] = {}
    for name in args.servers:
        with Server([*extra, *SERVERS[name]], args.threads) as server:
            with Client(server.url) as client:
                client.infer(images[-1], **params)  # one request first: the first batches of each size
                meta = client.model_metadata()["parameters"]
            results[name] = []
            for clients, requests in zip(args.concurrency, counts, strict=True):
                row = closed_loop(server.url, images, clients, requests, params, args.timeout)
                results[name].append(row)
                if args.partial:
                    print(json.dumps({"partial": {f"{name} c={clients}": row}}), flush=True)
                print(f"{name:6s} c={clients:3d} {row['requests']:4d} req {row['throughput_rps']:7.3f} req/s "
                      f"{row['draws_per_s']:7.1f} draws/s  "
                      f"p50 {row['p50_s']:7.2f} s  p95 {row['p95_s']:7.2f} s  p99 {row['p99_s']:7.2f} s  "
                      f"draws/req {row['mean_draws']:7.1f}  certified {row['certified']:.2f}  "
                      f"UNet {row['unet_rows_per_call']:6.1f} rows/call {row['unet_rows_per_s']:7.1f} rows/s",
                      flush=True)
    smoothing = meta["smoothing"]
    print(f"\ndigits, {smoothing['smoothing']} K={smoothing['K']} b={smoothing['b']} sigma={smoothing['sigma']}, "
          f"certify_radius r={params.get('radius', smoothing['sigma'])}, n0={meta['defaults']['n0']} "
          f"n_max={meta['defaults']['n']}; {machine()}")
    print("| server | clients | requests | req/s | draws/s | p50 s | p95 s | p99 s | draws/req | UNet rows/call "
          "| UNet rows/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for r in rows:
            print(f"| {name} | {r['clients']} | {r['requests']} | {r['throughput_rps']:.3f} | {r['draws_per_s']:.1f} | "
                  f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} | {r['mean_draws']:.0f} | "
                  f"{r['unet_rows_per_call']:.1f} | {r['unet_rows_per_s']:.0f} |")
    summary = {"machine": machine(), "server_args": extra, "threads": args.threads, "smoothing": smoothing,
               "params": params, "results": results}
    if {"shared", "serial"} <= set(results):
        top = max(args.concurrency)
        shared = next(r for r in results["shared"] if r["clients"] == top)
        serial = next(r for r in results["serial"] if r["clients"] == top)
        ratio = shared["throughput_rps"] / serial["throughput_rps"]
        fill = shared["unet_rows_per_call"] / serial["unet_rows_per_call"]
        rate = shared["unet_rows_per_s"] / serial["unet_rows_per_s"]
        summary["ratio"] = {"clients": top, "throughput": ratio, "draws_per_s": shared["draws_per_s"] /
                            serial["draws_per_s"], "p50_shared_s": shared["p50_s"], "p50_serial_s": serial["p50_s"],
                            "unet_rows_per_call": fill, "unet_rows_per_s": rate}
        print(f"\n{top} clients: shared / serial throughput {ratio:.2f}x requests/s, "
              f"{summary['ratio']['draws_per_s']:.2f}x draws/s; p50 {shared['p50_s']:.2f} s shared vs "
              f"{serial['p50_s']:.2f} s serial")
        print(f"UNet batches {fill:.2f}x fuller shared ({shared['unet_rows_per_call']:.1f} vs "
              f"{serial['unet_rows_per_call']:.1f} rows/call); the device ran {rate:.2f}x the UNet rows/s with them")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
