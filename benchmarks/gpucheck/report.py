"""How a stage reports: each figure as a flushed ``{"partial": {...}}`` line the moment it is measured (a
``densepure bench`` run's listener emits here too: :mod:`gpucheck.bench`), the whole result as the last
line; commands a stage runs have their output forwarded line by line.

``GPU_CHECK_FAULT=<stage>:hang`` or ``<stage>:crash`` makes that stage hang (or die without a result) right
after its first figure: how the tests check that the harness keeps what a killed stage measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
_STAGE = os.environ.get("GPU_CHECK_STAGE", "")


def emit(**figures) -> None:
    """Print ``figures`` as one partial-result line, now."""
    print(json.dumps({"partial": figures}, default=str), flush=True)
    fault = os.environ.get("GPU_CHECK_FAULT", "")
    if fault and fault.split(":")[0] == _STAGE:
        if fault.endswith(":crash"):
            os._exit(3)
        time.sleep(3600)  # ":hang": the harness's time limit must end it


def env(**more: str) -> dict[str, str]:
    """This environment for a child process, the repository first on ``PYTHONPATH`` (prepended: carried
    wheels stay importable)."""
    from common import pythonpath

    return {**os.environ, "PYTHONPATH": pythonpath(str(ROOT)), "PYTHONUNBUFFERED": "1", **more}


def stream(argv: list[str], timeout: float | None = None, **more_env: str) -> tuple[int, list[str]]:
    """Run ``argv`` in the repository, forwarding each output line as it comes (partial lines of a command run
    with ``--progress-json`` reach the harness too); (exit status, lines). A timeout kills it (status -9)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=env(**more_env))
    lines, deadline = [], None if timeout is None else time.monotonic() + timeout
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait()
    return proc.returncode, lines


def run_stage(name: str, rehearse: bool) -> int:
    """Inside the stage's own process: run it; its JSON result is the last line (or ``{"error": ...}``)."""
    sys.path.insert(0, str(BENCHMARKS))
    import torch

    from gpucheck import STAGES

    device = torch.device("cpu" if rehearse or not torch.cuda.is_available() else "cuda")
    try:
        result = STAGES[name].load()(device, rehearse)
    except BaseException as exc:  # noqa: BLE001 - the harness keeps the figures emitted so far and this line
        traceback.print_exc(file=sys.stdout)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000]}), flush=True)
        return 1
    print(json.dumps(result, default=str), flush=True)
    return 0
