"""The GPU lease check: staged, each stage in its own process under a hard time limit, nothing measured lost.

A lent GPU gives a session about 15 minutes of device time, machine start included, at most 10 minutes
per command and at most 8 files back. This runs in one device call (docs/gpu_check.md): the stages of
:data:`gpucheck.STAGES` in order (facts first, compiles and ImageNet last), each in its own process.

* Every line a stage prints goes to ``$OUT/log.txt`` as it is printed: a killed call still leaves text.
* A stage prints each figure as it is measured (``{"partial": {...}}`` lines) and its whole result last;
  the harness merges the partial figures and the last JSON line whatever the exit status, so a stage
  that times out or crashes keeps what it measured.
* Each stage's row (status, seconds, result) is appended to ``$OUT/results.jsonl`` as it ends;
  ``$OUT/summary.md`` and the printed table come last. Nothing else is written under ``$OUT``.

    python benchmarks/gpu_check.py [--rehearse] [--budget S] [--slack X] [--only STAGE ...] [--skip STAGE ...]

``--rehearse`` runs the same stages on the CPU at tiny sizes with CI's slack by default (CI runs it,
so the script cannot rot between the sessions that are lent a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gpucheck import STAGES  # noqa: E402  (no torch: this process only runs the stages)

GPU_BUDGET_S, REHEARSE_BUDGET_S, REHEARSE_SLACK = 540.0, 420.0, 3.0


class StageOutput:
    """Reads a stage's output as it comes: every line to the log, partial figures merged, last JSON kept."""

    def __init__(self, name: str, log):
        self.name, self.log = name, log
        self.partial: dict = {}
        self.last: dict | None = None
        self.tail: deque[str] = deque(maxlen=30)

    def feed(self, line: str) -> None:
        self.log.write(line if line.endswith("\n") else line + "\n")
        self.log.flush()
        self.tail.append(line.rstrip("\n"))
        text = line.strip()
        if not text.startswith("{"):
            return
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return
        if isinstance(value, dict) and set(value) == {"partial"} and isinstance(value["partial"], dict):
            self.partial.update(value["partial"])
        elif isinstance(value, dict):
            self.last = value

    def result(self) -> dict | None:
        if not self.partial and self.last is None:
            return None
        return {**self.partial, **(self.last or {})}


def _pythonpath() -> str:
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([str(HERE), str(ROOT), *([rest] if rest else [])])


def launch(name: str, rehearse: bool, limit: float, log) -> dict:
    """Run stage ``name`` in its own process group for at most ``limit`` seconds; its row."""
    argv = [sys.executable, str(HERE / "gpu_check.py"), "--stage", name] + (["--rehearse"] if rehearse else [])
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "PYTHONUNBUFFERED": "1", "GPU_CHECK_STAGE": name}
    log.write(f"===== {name}: start, limit {limit:.0f} s\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            start_new_session=True, bufsize=1)
    output = StageOutput(name, log)
    reader = threading.Thread(target=lambda: [output.feed(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        proc.wait(timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and everything it started
        proc.wait()
        status = f"timed out after {limit:.0f} s"
    reader.join(timeout=10)
    seconds = round(time.perf_counter() - start, 1)
    log.write(f"===== {name}: {status} in {seconds} s\n")
    log.flush()
    row = {"stage": name, "status": status, "seconds": seconds, "result": output.result()}
    if status != "ok":
        row["tail"] = "\n".join(output.tail)[-3000:]
    return row


def run_all(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (REHEARSE_BUDGET_S if args.rehearse else GPU_BUDGET_S)
    slack = args.slack or (REHEARSE_SLACK if args.rehearse else 1.0)
    overrides = dict(_override(item) for item in args.stage_limit)
    deadline, rows = time.perf_counter() + budget, []
    with (out / "log.txt").open("a") as log, (out / "results.jsonl").open("w") as results:
        for stage in STAGES.values():
            if (args.only and stage.name not in args.only) or stage.name in args.skip:
                continue
            left = deadline - time.perf_counter()
            limit = min(overrides.get(stage.name, slack * (stage.rehearse_s if args.rehearse else stage.gpu_s)), left)
            if args.rehearse and not stage.rehearsed:
                row = {"stage": stage.name, "status": "skipped (not rehearsed)", "seconds": 0, "result": None}
            elif limit < 10:
                row = {"stage": stage.name, "status": "skipped (out of time)", "seconds": 0, "result": None}
            else:
                row = launch(stage.name, args.rehearse, limit, log)
            results.write(json.dumps(row, default=str) + "\n")
            results.flush()
            rows.append(row)
    return rows


def _override(item: str) -> tuple[str, float]:
    name, _, seconds = item.partition("=")
    if name not in STAGES or not seconds:
        raise SystemExit(f"--stage-limit takes STAGE=SECONDS with a stage of {', '.join(STAGES)}, got {item!r}")
    return name, float(seconds)


def summary(rows: list[dict]) -> str:
    lines = ["| stage | status | seconds | highlights |", "|---|---|---:|---|"]
    for row in rows:
        lines.append(f"| {row['stage']} | {row['status']} | {row['seconds']} | {_highlights(row)} |")
    return "\n".join(lines) + "\n"


def _highlights(row: dict) -> str:
    result = row["result"]
    if not isinstance(result, dict):
        return ""
    keys = [k for k in (*STAGES[row["stage"]].highlights, "error") if k in result]
    return "; ".join(f"{k}={result[k]}" for k in keys).replace("|", "/").replace("\n", " ")[:400]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rehearse", action="store_true", help="the same stages on the CPU at tiny sizes (CI)")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"seconds for all stages (default: {GPU_BUDGET_S:g}; {REHEARSE_BUDGET_S:g} rehearsing)")
    ap.add_argument("--slack", type=float, default=None,
                    help=f"multiply every stage's time limit (default: 1; {REHEARSE_SLACK:g} rehearsing, CI's slack)")
    ap.add_argument("--only", nargs="+", help="run only these stages")
    ap.add_argument("--skip", nargs="+", default=[], help="do not run these stages")
    ap.add_argument("--stage-limit", action="append", default=[], metavar="STAGE=SECONDS",
                    help="this stage's time limit in seconds (before the budget)")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu"), help="results folder (default: $OUT)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        from gpucheck.report import run_stage

        return run_stage(args.stage, args.rehearse)
    rows = run_all(args)
    text = summary(rows)
    (Path(args.out) / "summary.md").write_text(text)
    print(text)
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped (not") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
