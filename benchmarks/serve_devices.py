"""One engine loop against two behind the same endpoint (`densepure serve --devices`), on CPU here.

The same closed-loop load as benchmarks/serve.py (its ``Server`` and ``closed_loop``: c client threads send
single-image certify_radius requests back to back, a different digits test image each, until the level's
requests are answered) against ``one`` (``--devices cpu --device-threads 1 --pin-cores``: one engine loop,
one torch thread, on core 0) and ``two`` (``--devices cpu,cpu --device-threads 1 --pin-cores``: two
engine loops, one torch thread each, each on a core of its own), and the same two unpinned
(``one-free``, ``two-free``: the OS places the threads). Reported per level: requests/s, latency p50/p95
(sending to answer), draws/s and UNet rows per call; then the two/one ratios. On a GPU machine,
``--configs`` names device lists instead (``cuda:0 cuda:0,cuda:1``: each is ``--devices LIST``).

Usage: python benchmarks/serve_devices.py [--concurrency 1 4 16] [--requests 4 8 32] [--server-args "--K 3"]
The last line printed is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import shlex

import torch
from common import machine
from serve import Server, closed_loop

from densepure.models.digits import load_digits_test_split
from densepure.serve.client import Client

CONFIGS = {"one": ("--devices", "cpu", "--device-threads", "1", "--pin-cores"),
           "two": ("--devices", "cpu,cpu", "--device-threads", "1", "--pin-cores"),
           "one-free": ("--devices", "cpu", "--device-threads", "1"),
           "two-free": ("--devices", "cpu,cpu", "--device-threads", "1")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, nargs="+", default=None,
                    help="requests per concurrency level (default: 2 per client, at least 4)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS),
                    help=f"{', '.join(CONFIGS)}, or device lists such as cuda:0 cuda:0,cuda:1 (each: --devices LIST)")
    ap.add_argument("--server-args", default="", help="more `densepure serve` flags (models, K, b, n0, n)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per request at most")
    args = ap.parse_args()
    torch.set_num_threads(1)  # machine() reports the loops' thread count
    counts = args.requests or [max(4, 2 * c) for c in args.concurrency]
    if len(counts) != len(args.concurrency):
        ap.error("give one --requests count per --concurrency level")
    images = load_digits_test_split()[0].numpy()
    params = {"mode": "certify_radius"}
    extra = shlex.split(args.server_args)
    results: dict[str, list[dict]] = {}
    for name in args.configs:
        flags = CONFIGS.get(name, ("--devices", name))
        with Server([*extra, *flags, "--split-min-draws", "0"], threads=1) as server:
            with Client(server.url) as client:
                client.infer(images[-1], **params)  # one request first: the first batches of each size
                meta = client.model_metadata()["parameters"]
            results[name] = []
            for clients, requests in zip(args.concurrency, counts, strict=True):
                row = closed_loop(server.url, images, clients, requests, params, args.timeout)
                results[name].append(row)
                print(f"{name:4s} c={clients:3d} {row['requests']:4d} req {row['throughput_rps']:7.3f} req/s  "
                      f"p50 {row['p50_s']:7.2f} s  p95 {row['p95_s']:7.2f} s  {row['draws_per_s']:7.1f} draws/s  "
                      f"UNet {row['unet_rows_per_call']:6.1f} rows/call", flush=True)
    smoothing = meta["smoothing"]
    print(f"\ndigits, {smoothing['smoothing']} K={smoothing['K']} b={smoothing['b']} sigma={smoothing['sigma']}, "
          f"certify_radius r={smoothing['sigma']}, n0={meta['defaults']['n0']} n_max={meta['defaults']['n']}; "
          f"{machine()} per engine loop")
    print("| loops | clients | requests | req/s | p50 s | p95 s | draws/s | draws/req | UNet rows/call |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for r in rows:
            print(f"| {name} | {r['clients']} | {r['requests']} | {r['throughput_rps']:.3f} | {r['p50_s']:.2f} | "
                  f"{r['p95_s']:.2f} | {r['draws_per_s']:.1f} | {r['mean_draws']:.0f} | "
                  f"{r['unet_rows_per_call']:.1f} |")
    summary = {"machine": machine(), "server_args": extra, "smoothing": smoothing, "params": params,
               "results": results}
    summary["ratio"] = {}
    for one, two in (("one", "two"), ("one-free", "two-free")):
        if {one, two} <= set(results):
            ratios = summary["ratio"][f"{two}/{one}"] = {}
            for a, b in zip(results[one], results[two], strict=True):
                ratios[a["clients"]] = {"throughput": b["throughput_rps"] / a["throughput_rps"],
                                        "p50": b["p50_s"] / a["p50_s"], "p95": b["p95_s"] / a["p95_s"]}
                print(f"{a['clients']:3d} clients: {two} / {one}: {ratios[a['clients']]['throughput']:.2f}x "
                      f"requests/s, p50 {b['p50_s']:.2f} vs {a['p50_s']:.2f} s, p95 {b['p95_s']:.2f} vs "
                      f"{a['p95_s']:.2f} s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
