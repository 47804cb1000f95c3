#!/usr/bin/env bash
# The GPU lease check (issue 15): run first thing in a session that is lent a GPU, in ONE device call:
#   run(command="bash scripts/gpu_check.sh", timeout_s=560)
# Stages in priority order, each under its own hard timeout, each saved to $OUT/results.jsonl as it
# ends (a later timeout keeps the earlier stages); $OUT/summary.md and the printed table come last.
# About 8 minutes on an H200. `bash scripts/gpu_check.sh --rehearse` runs the same stages on the CPU at
# tiny sizes in under 3 minutes (tests/test_gpu_check.py runs it in CI).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi > "$out/nvidia-smi.txt" 2>&1; fi
PY=python3
[ -x .venv/bin/python ] && [ "${1:-}" = "--rehearse" ] && PY=.venv/bin/python
exec "$PY" benchmarks/gpu_check.py --out "$out" "$@"
