#!/usr/bin/env bash
# Set up .venv and run the main job: certify a slice of the shipped digits test set with DensePure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/densepure certify "$@"
