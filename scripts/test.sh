#!/usr/bin/env bash
# Set up .venv and run the whole test suite (CPU only; GPU/TensorRT tests skip with a reason).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
