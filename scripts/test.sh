#!/usr/bin/env bash
# Set up .venv with the test extra (scripts/setup.sh test) and run the test suite (CPU only; GPU/TensorRT
# tests skip with a reason).
#   bash scripts/test.sh                  everything (CI runs this)
#   bash scripts/test.sh --fast           the fast tier: every test not marked `slow` (pytest -m "not slow")
#   bash scripts/test.sh [--fast] ARGS... ARGS go to pytest unchanged (paths, -k, -x, --durations=20, ...);
#                                         an -m of your own after --fast takes the place of "not slow"
# The whole suite or the whole fast tier (no ARGS) runs on TEST_WORKERS pytest-xdist workers (default 2, the
# CI machine's cores; 0 runs in this process). With ARGS it runs in this process, as a selection usually
# wants (-x, pdb, one test's output).
set -euo pipefail
cd "$(dirname "$0")/.."
marker=()
args=()
for arg in "$@"; do
    if [[ "$arg" == "--fast" ]]; then
        marker=(-m "not slow")
    else
        args+=("$arg")
    fi
done
workers=()
if [[ ${#args[@]} -eq 0 && "${TEST_WORKERS:-2}" != "0" ]]; then
    workers=(-n "${TEST_WORKERS:-2}")
fi
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q "${marker[@]}" "${workers[@]}" "${args[@]}"
