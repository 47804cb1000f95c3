#!/usr/bin/env bash
# CI (.ci/run): build densepure's wheel with `python -m build` (from its sdist, in a clean directory, so nothing
# left in build/ can stand in for a missing file) and check that it carries the package:
#  1. every file git tracks under densepure/ is in the wheel (the shipped digits models and test split in
#     densepure/assets, and any other data file a module reads);
#  2. installed in a fresh venv, outside the source tree, `densepure presets` and a tiny `densepure certify`
#     run from the wheel alone (the shipped UNet, classifier and test split).
# Quick: the fresh venv gets only the wheel (--no-deps); its dependencies (torch, ...) are read from .venv's
# site-packages through a .pth file. (`python -m venv --system-site-packages` would not do it: that exposes the
# base interpreter's site-packages, not .venv's.) .venv's editable densepure is not visible there: a directory
# named in a .pth file is put on sys.path without running its own .pth files (the editable install's hook).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "wheel check: building the sdist and, from it, the wheel (python -m build)"
.venv/bin/python -m build --outdir "$tmp/dist" . > "$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
wheel=$(ls "$tmp"/dist/densepure-*.whl)

echo "wheel check: does $(basename "$wheel") hold every file git tracks under densepure/?"
git ls-files densepure > "$tmp/tracked"
.venv/bin/python - "$wheel" "$tmp/tracked" <<'PY'
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
tracked = open(sys.argv[2], encoding="utf-8").read().split("\n")
missing = [path for path in tracked if path and path not in names]
if missing:
    sys.exit(f"the wheel lacks {len(missing)} tracked file(s) (pyproject.toml's package-data?): {missing[:10]}")
PY

echo "wheel check: installing it in a fresh venv and certifying with the shipped models outside the tree"
.venv/bin/python -m venv --without-pip "$tmp/venv"
.venv/bin/python -m pip --python "$tmp/venv/bin/python" install -q --no-deps "$wheel"
site=$("$tmp/venv/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
.venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib')); print(sysconfig.get_path('platlib'))" \
  > "$site/densepure_check_deps.pth"
mkdir "$tmp/work"
cd "$tmp/work"
env -u PYTHONPATH "$tmp/venv/bin/python" -c "import densepure, sys; p = densepure.__file__
assert p.startswith(sys.prefix), f'densepure imported from {p}, not from the wheel in {sys.prefix}'"
env -u PYTHONPATH "$tmp/venv/bin/densepure" presets > presets.txt
grep -q "^digits" presets.txt
env -u PYTHONPATH OMP_NUM_THREADS=1 "$tmp/venv/bin/densepure" certify --max 2 --n0 4 --n 8 --K 2 --seed 1 \
  --output out.tsv > summary.txt 2> log.txt || { cat log.txt; exit 1; }
[ "$(wc -l < out.tsv)" -eq 3 ] || { echo "wheel check: expected 2 result rows in out.tsv" >&2; cat out.tsv log.txt >&2; exit 1; }
echo "wheel check: ok"
