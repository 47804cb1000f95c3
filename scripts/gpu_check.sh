#!/usr/bin/env bash
# The GPU lease check (issues 15, 28): the first thing a session lent a GPU runs, in ONE device call:
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# (`bash scripts/gpu_wheels.sh` here first puts the FastAPI stack's wheels in .whl/, ~3 MB: the GPU
# image has no FastAPI. Without them the serve_http stage says so and everything else still runs.)
# The stages run in this order, each in its own process under its own hard limit, within a 540 s budget
# (the call's 600 s leave time for the wheels, the start and the transfers); what each returns is in
# docs/gpu_check.md:
#   env ~30 s | smoke | exactness | models (no compile) | end_to_end | serve | serve_http | gpu_tests |
#   kernels (no compile) | compile | imagenet
# The measuring stages (models, end_to_end, serve, serve_http, kernels, compile, imagenet) run
# `densepure bench models|throughput|latency|serve|kernels` itself: the check measures what users run.
# Every stage's output streams into $OUT/log.txt as it runs; each figure is kept the moment it is
# measured (a stage that times out or crashes keeps its figures); each stage's row is appended to
# $OUT/results.jsonl as it ends; $OUT/summary.md last. $OUT holds 4 files: log.txt, results.jsonl,
# summary.md, nvidia-smi.txt.
# `bash scripts/gpu_check.sh --rehearse` runs the same stages on the CPU at tiny sizes with CI's slack
# (tests/test_gpu_check.py runs it in CI, under 4 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
PY=${PYTHON:-python3}  # the GPU image's python3 holds PyTorch; the rehearsal prefers the checkout's .venv
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && [ "${1:-}" = "--rehearse" ] && PY=.venv/bin/python
if compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels: prepended to PYTHONPATH, never replacing it
  site=${TMPDIR:-/tmp}/gpu-check-site
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: the carried wheels did not install; going on without them" >&2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi > "$out/nvidia-smi.txt" 2>&1; fi
exec "$PY" benchmarks/gpu_check.py --out "$out" "$@"
