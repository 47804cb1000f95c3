#!/usr/bin/env bash
# Set up .venv with the test extra (scripts/setup.sh test) and run the test suite (CPU only; GPU/TensorRT
# tests skip with a reason).
#   bash scripts/test.sh                  everything (CI runs this)
#   bash scripts/test.sh --fast           the fast tier: every test not marked `slow` (pytest -m "not slow")
#   bash scripts/test.sh [--fast] ARGS... ARGS go to pytest unchanged (paths, -k, -x, --durations=20, ...);
#                                         an -m of your own after --fast takes the place of "not slow"
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
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q "${marker[@]}" "${args[@]}"
