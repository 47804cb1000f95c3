#!/usr/bin/env bash
# Set up .venv with the test extra (scripts/setup.sh test) and run the whole test suite (CPU only; GPU/TensorRT
# tests skip with a reason). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
