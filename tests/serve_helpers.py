"""Real ``densepure serve`` processes on free loopback ports, for tests/serve and the benchmark's test."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# small but real: DensePure K=3, b=2 on the shipped digits models; 1 thread (2 busy cores)
FAST = ("--K", "3", "--n0", "20", "--n", "200", "--batch-size", "256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class ServerProcess:
    """``densepure serve ARGS`` on 127.0.0.1; its stderr goes to ``log_path``."""

    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        with open(self.log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "densepure.cli", "serve", "--port", str(self.port),
                                          *args], stdout=log, stderr=subprocess.STDOUT, env=serve_env(), cwd=ROOT)
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def wait_ready(self, timeout: float = 90.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.http.get("/v2/health/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text()

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the samples ``name`` of ``/metrics`` whose labels include ``labels`` (``'model="denoiser"'``):
        over every ``device`` unless one is named (0 if absent)."""
        return metric_sum(self.http.get("/metrics").text, name, labels)

    def wait_metric(self, name: str, value: float, labels: str = "", timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(name, labels) != value:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{{{labels}}} is {self.metric(name, labels)}, expected {value}")
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.http.close()
        return self.proc.returncode


def infer_json(images: np.ndarray, **parameters) -> dict:
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                        "data": images.reshape(-1).tolist()}], "parameters": parameters}


def metric_sum(text: str, name: str, labels: str = "") -> float:
    """The sum of the samples ``name`` in a Prometheus text whose labels include ``labels``."""
    want = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in want.items()):
            total += float(match.group(3))
    return total
