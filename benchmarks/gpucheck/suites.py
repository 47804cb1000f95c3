"""The gpu-marked tests (per-test outcomes) and the kernel benchmark (``densepure bench kernels``)."""

from __future__ import annotations

import os
import re
import sys

import torch

from gpucheck.bench import bench, register_tiny_preset
from gpucheck.report import ROOT, emit, stream

_OUTCOME = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def gpu_test_files() -> list[str]:
    """Every test file with a test marked ``gpu`` (found, not listed: a new GPU test joins the check)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text())


def stage_gpu_tests(device: torch.device, rehearse: bool) -> dict:
    """On the CPU they skip: the rehearsal checks that they still collect."""
    files = gpu_test_files()
    argv = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu", *files]
    outcomes: dict[str, str] = {}
    code, lines = stream(argv)
    for line in lines:
        found = _OUTCOME.match(line)
        if found:
            outcomes[found.group(1)] = found.group(2)
    tally = {k.lower() if k != "ERROR" else "errors": sum(v == k for v in outcomes.values())
             for k in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
    out = {"exit": code, "files": files, **tally, "outcomes": outcomes,
           "summary": next((l for l in reversed(lines) if l.startswith("=")), "")}
    emit(**{k: out[k] for k in ("exit", "passed", "failed", "skipped", "errors")})
    return out


def stage_kernels(device: torch.device, rehearse: bool) -> dict:
    """``densepure bench kernels`` (no compile: compiles come last, in their own stage): each Triton kernel
    checked against its torch reference, then timed beside it; UNet forwards; the pipeline's draws/s. The
    rehearsal: Triton's interpreter on a tiny UNet (:func:`gpucheck.bench.register_tiny_preset`)."""
    if rehearse:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton's kernels in this process
        return bench("kernels", "kernels", "--preset", register_tiny_preset(), "--batch-size", "2", "--repeats", "1",
                     "--K", "1", "--device", "cpu", classifier="digits")
    return bench("kernels", "kernels", "--preset", "cifar10", "--batch-size", "512", "--precision", "fp16",
                 "--repeats", "3", "--device", "cuda")
