"""The GPU lease check: staged, each stage under its own hard timeout, results saved as each stage ends.

A lent GPU gives a session 15 minutes of device time, machine start included, at most 10 minutes per
command and at most 8 files back. This script fits that: the stages run in priority order (environment
and a smoke test, exactness against the CPU, model rates and MFU, end-to-end draws/s against the
official loop, the server's certify_radius latency, the gpu-marked tests, then extras if time is left), each in its own process under a
hard timeout, each appending its result to ``$OUT/results.jsonl`` the moment it ends (a later timeout
keeps the earlier stages), and a short table is printed last and written to ``$OUT/summary.md``.

    python benchmarks/gpu_check.py [--rehearse] [--budget 480] [--only STAGE ...]

``--rehearse`` runs the same stages on the CPU at tiny sizes (under 3 minutes): CI runs it, so the
script cannot rot between the sessions that are lent a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_stage(name: str, rehearse: bool) -> None:
    """Inside the stage's own process: run it and print its JSON result as the last line."""
    import torch

    sys.path.insert(0, str(HERE))
    from gpu_stages import STAGES

    device = torch.device("cpu" if rehearse or not torch.cuda.is_available() else "cuda")
    result = STAGES[name][0](device, rehearse)
    print(json.dumps(result, default=str))


def _launch(name: str, rehearse: bool, timeout: float, out: Path, log) -> dict:
    argv = [sys.executable, str(HERE / "gpu_check.py"), "--stage", name] + (["--rehearse"] if rehearse else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "GPU_CHECK_OUT": str(out)}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and anything it started
        text, _ = proc.communicate()
        status = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    log.write(f"===== {name}: {status} in {seconds:.1f} s\n{text}\n")
    log.flush()
    lines = (text or "").strip().splitlines()
    result = None
    if status == "ok" and lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            status = "failed (no JSON result)"
    return {"stage": name, "status": status, "seconds": round(seconds, 1), "result": result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rehearse", action="store_true", help="the same stages on the CPU at tiny sizes (CI)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all stages (default: 480; 170 rehearsing)")
    ap.add_argument("--only", nargs="+", help="run only these stages")
    ap.add_argument("--slack", type=float, default=1.0, help="multiply every stage's time limit (a loaded machine)")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu"), help="results folder (default: $OUT)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        run_stage(args.stage, args.rehearse)
        return 0
    sys.path.insert(0, str(HERE))
    from gpu_stages import STAGES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (170.0 if args.rehearse else 480.0)
    deadline = time.perf_counter() + budget
    rows = []
    with (out / "log.txt").open("a") as log, (out / "results.jsonl").open("a") as results:
        for name, (_, gpu_limit, rehearse_limit) in STAGES.items():
            if args.only and name not in args.only:
                continue
            left = deadline - time.perf_counter()
            limit = min(args.slack * (rehearse_limit if args.rehearse else gpu_limit), left)
            if limit < 15:
                rows.append({"stage": name, "status": "skipped (out of time)", "seconds": 0, "result": None})
                continue
            row = _launch(name, args.rehearse, limit, out, log)
            results.write(json.dumps(row, default=str) + "\n")
            results.flush()
            rows.append(row)
    summary = ["| stage | status | seconds | highlights |", "|---|---|---:|---|"]
    for row in rows:
        summary.append(f"| {row['stage']} | {row['status']} | {row['seconds']} | {_highlights(row['result'])} |")
    text = "\n".join(summary) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _highlights(result) -> str:
    if not isinstance(result, dict):
        return ""
    words = ("rows/s", "mfu", "identical", "draws_per_s", "summary", "smoke_exit", "matmul", "p50_at")
    keys = [k for k in result if any(w in k or w in str(result[k]) for w in words)]
    shown = "; ".join(f"{k}={result[k]}" for k in keys[:8])
    return shown.replace("|", "/")[:400]


if __name__ == "__main__":
    sys.exit(main())
