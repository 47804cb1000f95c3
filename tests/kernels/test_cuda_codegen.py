"""The CUDA code path of the kernels, compiled ahead of time for sm_90 (H100/H200) without a GPU.

The compile runs in a child process without ``TRITON_INTERPRET`` (this one interprets the kernels), so
the compiled path (libdevice calls, no FMA contraction, the join/reshape interleave, the GroupNorm
loops) is built from the source the interpreter tests run. Numerics on a GPU are the gpu tests' job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # a subprocess compiles every kernel for sm_90
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report() -> dict:
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError as err:
        pytest.skip(f"Triton's NVIDIA backend is not installed: {err}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("sm90_codegen.py"))], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm90(report):
    assert len(report) == 10 and all(r["entry"] for r in report.values())


def test_row_kernels_round_every_product(report):
    """No float32 FMA in start/spawn; in the step only libdevice expf's own, which contraction would add to."""
    for name in ("start_form0", "start_form1", "start_form2", "spawn"):
        assert report[name]["fma32"] == 0 and report[name]["sqrt_rn_f64"], name
    assert report["sound_start"]["fma32"] == 0  # y = scale (2 ((x + j) step) - 1): three rounded products
    for name in ("keep", "advance"):
        assert report[name]["ex2_approx"]  # libdevice __nv_expf, the function torch's CUDA exp calls
        assert report[name]["fma32"] < report[name]["fma32_with_fusion"], name
