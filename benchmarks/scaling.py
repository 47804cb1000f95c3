"""Images per hour of a cluster run with 1, 2, ... Ray workers (issue 17 target: 2 workers >= 1.8x one).

Each run certifies the same digits test images with the shipped models (DensePure, Cohen's CERTIFY) on a
local Ray instance, into a fresh result file. The rate is measured from the moment every worker has
loaded its models to the last image written (steady state: loading is paid once per run, which takes
hours at real N); the wall time with the start-up is reported beside it. Worker counts alternate over
``--repeats`` and medians are reported. A single process (no Ray, the same torch threads as one worker)
gives the overhead of the cluster path. Every run's certificates are checked equal to the first run's
(the results do not depend on the number of workers).

CPU (default): each worker runs ``--threads`` torch threads, so N workers use N x threads cores.
GPU: ``--device cuda``: one GPU per worker, or equal shares of the GPUs when workers outnumber them.

Usage: python benchmarks/scaling.py [--workers 1 2] [--images 16] [--n 1000] [--K 10] [--device cpu]
The last line printed is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from densepure.certify.job import JobOptions, prepare, run
from densepure.distributed import connect, prepare_cluster_job, run_cluster_job


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a local process (Linux /proc), 0 where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Observer: when the workers were ready, when the last image was written, and the CPU time the
    (local) worker processes spent in between."""

    def __init__(self, total: int):
        self.ready = self.last = None
        self.images, self.total, self.cpu = 0, total, 0.0

    def started(self, images, plan, workers):
        self.ready, self.plan, self.pids = time.perf_counter(), plan, [w.pid for w in workers]
        self.cpu = -sum(cpu_seconds(pid) for pid in self.pids)

    def progressed(self, draws):
        pass

    def image_done(self, record):
        self.images, self.last = self.images + 1, time.perf_counter()
        if self.images == self.total:  # before the workers are stopped
            self.cpu += sum(cpu_seconds(pid) for pid in self.pids)

    def worker_lost(self, message, workers_left):
        raise RuntimeError(f"a worker was lost during the benchmark: {message}")


def certificates(path: Path) -> list[tuple[str, ...]]:
    """The TSV rows without the time column, sorted by index."""
    return sorted(tuple(line.split("\t")[:5]) for line in path.read_text().splitlines()[1:])


def options(args, output: Path, **extra) -> JobOptions:
    return JobOptions.build(sigma=args.sigma, n0=args.n0, n=args.n, num_chains=args.K, steps=args.b, seed=args.seed,
                      device=args.device, skip=args.skip, max=args.images, output=str(output), overwrite=True,
                      batch_size=args.rows, **extra)


def cluster_run(args, workers: int, output: Path) -> dict:
    clock = Clock(args.images)
    start = time.perf_counter()
    job = prepare_cluster_job(options(args, output, ray="local", workers=workers, split_draws=args.split_draws))
    run_cluster_job(job, clock, threads=args.threads, start_timeout_s=600, timeout_s=args.timeout)
    steady = clock.last - clock.ready
    return {"workers": workers, "steady_s": steady, "wall_s": time.perf_counter() - start,
            "images_per_hour": clock.images / steady * 3600, "plan": clock.plan,
            "worker_cpu_s_per_image": clock.cpu / clock.images,
            "cpu_utilisation": clock.cpu / (steady * workers * args.threads)}


def single_run(args, output: Path) -> dict:
    torch.set_num_threads(args.threads)
    job = prepare(options(args, output))
    start = time.perf_counter()
    run(job)
    seconds = time.perf_counter() - start
    return {"steady_s": seconds, "images_per_hour": args.images / seconds * 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--skip", type=int, default=28)
    ap.add_argument("--n0", type=int, default=50)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--b", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=500, help="engine rows per model call (--batch-size)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (and of the single process)")
    ap.add_argument("--split-draws", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats; medians are reported")
    ap.add_argument("--single", action=argparse.BooleanOptionalAction, default=True,
                    help="also time one process without Ray")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is stopped")
    args = ap.parse_args()

    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
    singles: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, connect("local"):
        reference = None
        for repeat in range(args.repeats):
            for workers in args.workers:
                out = Path(tmp) / f"w{workers}_{repeat}.tsv"
                runs[workers].append(cluster_run(args, workers, out))
                reference = reference or certificates(out)
                if certificates(out) != reference:
                    raise SystemExit(f"{workers} workers gave other certificates than the first run")
            if args.single and args.device == "cpu":
                out = Path(tmp) / f"single_{repeat}.tsv"
                singles.append(single_run(args, out))
                if certificates(out) != reference:
                    raise SystemExit("the single process gave other certificates than the cluster")
    load_after = os.getloadavg()

    device = torch.device("cuda") if args.device.startswith("cuda") else None
    result = {"machine": machine(device), "images": args.images, "n0": args.n0, "n": args.n, "K": args.K, "b": args.b,
              "threads_per_worker": args.threads, "split_draws": args.split_draws, "repeats": args.repeats,
              "load_average_before": load_before[0], "load_average_after": load_after[0], "workers": {}}
    print(f"digits, K={args.K} b={args.b} n0={args.n0} n={args.n}, {args.images} images, {args.device}, "
          f"{args.threads} torch thread(s) per worker; median of {args.repeats} alternating runs; {result['machine']}")
    if singles:
        rate = statistics.median(s["images_per_hour"] for s in singles)
        result["single_process_images_per_hour"] = rate
        print(f"  one process, no Ray:    {rate:8.0f} images/hour")
    first = statistics.median(r["images_per_hour"] for r in runs[args.workers[0]])
    for workers, rows in runs.items():
        rate = statistics.median(r["images_per_hour"] for r in rows)
        wall = statistics.median(r["wall_s"] for r in rows)
        speedup = rate / first
        cpu = statistics.median(r["worker_cpu_s_per_image"] for r in rows)
        busy = statistics.median(r["cpu_utilisation"] for r in rows)
        result["workers"][workers] = {"images_per_hour": rate, "wall_s_with_startup": wall,
                                      "speedup_vs_first": speedup, "plan": rows[0]["plan"],
                                      "worker_cpu_s_per_image": cpu, "cpu_share_received": busy,
                                      "runs_images_per_hour": [r["images_per_hour"] for r in rows]}
        print(f"  {workers} worker(s) on Ray:   {rate:8.0f} images/hour  ({speedup:.2f}x {args.workers[0]} worker(s); "
              f"wall {wall:.0f} s with start-up) [{rows[0]['plan']}]")
        if args.device == "cpu":
            print(f"      worker CPU time {cpu:.2f} s/image; the workers got {busy:.0%} of their "
                  f"{workers * args.threads} thread(s)' time")
    print(f"  certificates equal in every run; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
