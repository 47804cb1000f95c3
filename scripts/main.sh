#!/usr/bin/env bash
# Set up .venv (the core package only: scripts/setup.sh) and run the main job: certify a slice of the shipped
# digits test set with DensePure. Arguments go to `densepure certify` (e.g. --output runs/other.tsv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/densepure certify "$@"
