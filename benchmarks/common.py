"""Shared by the scripts under benchmarks/: the machine a result was taken on, ``PYTHONPATH`` for child
processes, and a local ``densepure serve`` to measure with ``densepure bench serve``.

Everything a benchmark measures lives in the installed package (``densepure bench``, :mod:`densepure.bench`):
these scripts only start what it measures and arrange its reports.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine(device: torch.device | None = None) -> str:
    """GPU name and CUDA version for a CUDA device; otherwise the CPU model and torch's thread count."""
    from densepure.bench.environment import cpu_model

    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (f"{cpu_model()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def pythonpath(*first: str) -> str:
    """``first`` prepended to this process's ``PYTHONPATH`` (never replacing it: carried wheels live there)."""
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([*first, *([rest] if rest else [])])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``densepure serve ARGS`` on 127.0.0.1 at a free port, with ``threads`` torch threads (OMP_NUM_THREADS):
    ``with LocalServer(args) as server:`` waits until it is ready (``server.url``), and stops it (SIGTERM,
    then SIGKILL after 60 s) on the way out. Its output goes to ``log`` (a file object; None: dropped)."""

    def __init__(self, args: list[str], threads: int = 1, log=None, ready_timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout = ready_timeout
        env = {**os.environ, "PYTHONPATH": pythonpath(str(ROOT)), "OMP_NUM_THREADS": str(threads)}
        out = log if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "densepure.cli", "serve", "--port", str(self.port),
                                      "--no-access-log", "--log-level", "warning", *args], env=env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT if log is not None else out)

    def __enter__(self) -> LocalServer:
        import time

        from densepure.serve.client import Client

        deadline = time.monotonic() + self.ready_timeout
        try:
            with Client(self.url) as client:
                while True:  # short waits, so a server that exits is seen at once
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"densepure serve exited with status {self.proc.returncode} before it "
                                           "was ready")
                    try:
                        client.wait_ready(timeout=1.0)
                        return self
                    except Exception:  # noqa: BLE001 - not ready yet (ServerError), or still starting
                        if time.monotonic() > deadline:
                            raise
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
