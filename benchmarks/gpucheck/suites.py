"""The gpu-marked tests (per-test outcomes) and the kernel benchmark (its full JSON)."""

from __future__ import annotations

import re
import sys

import torch

from gpucheck.report import BENCHMARKS, ROOT, emit, last_json, stream

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
    """``benchmarks/kernels.py --no-compile`` (compiles come last, in their own stage); its whole JSON."""
    argv = [sys.executable, str(BENCHMARKS / "kernels.py"), "--no-compile", "--partial"]
    if rehearse:
        argv += ["--device", "cpu", "--arch", "tiny", "--rows", "2", "--repeats", "1", "--K", "1"]
    else:
        argv += ["--arch", "cifar10", "--rows", "512", "--precision", "fp16", "--repeats", "3"]
    code, lines = stream(argv, **({"TRITON_INTERPRET": "1"} if rehearse else {}))
    result = last_json(lines)
    if code != 0 or result is None:
        raise RuntimeError(f"kernels.py exited {code}: " + "\n".join(lines[-15:]))
    return result
