#!/usr/bin/env bash
# Set up .venv: `bash scripts/setup.sh` installs what the main job needs (densepure and its core dependencies),
# `bash scripts/setup.sh test` adds the test extra (pytest, ruff, onnxruntime, triton, ray, ...: over 1 GB more, for
# scripts/test.sh and .ci/run). One line per step; what is already installed is skipped (a stamp in .venv
# records pyproject.toml's sha256, the extra and the torch version), so a rerun takes about a second.
#
# torch is installed first, pinned (TORCH_VERSION, default 2.13.0): from PyTorch's CPU wheel index (TORCH_INDEX,
# default https://download.pytorch.org/whl/cpu) when it answers within 5 s, which gives the CPU build (~200 MB);
# otherwise from pip's default index, which gives PyPI's build: the CUDA one on Linux x86_64 (several GB, it
# runs on the CPU too), the CPU one on macOS and Windows, or whatever a configured mirror serves.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-core}
case "$extra" in
  core|test) ;;
  *) echo "usage: bash scripts/setup.sh [core|test]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
VPY=.venv/bin/python
stamp=.venv/.densepure-setup

installed() {  # the installed version of distribution $1, without importing it ("" if absent)
  "$VPY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1" 2>/dev/null || true
}

want="pyproject=$("$PY" -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest())") torch=$TORCH_VERSION"
for have_extra in test "$extra"; do  # a test install covers core
  if [ -x "$VPY" ] && [ -f "$stamp" ] && grep -qxF "$want extra=$have_extra" "$stamp" &&
     [ -n "$(installed densepure)" ] && [ -n "$(installed torch)" ]; then
    what=$([ "$have_extra" = test ] && echo "densepure with the test extra" || echo "densepure (core)")
    echo "setup: .venv is up to date: $what, installed from this pyproject.toml"
    exit 0
  fi
done

if [ -x "$VPY" ]; then
  echo "setup: using .venv ($("$VPY" -V))"
else
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "setup: densepure needs Python >= 3.10, $PY is $("$PY" -V 2>&1): set PYTHON=python3.11 (or another >= 3.10)" >&2; exit 1; }
  echo "setup: creating .venv with $("$PY" -V)"
  "$PY" -m venv .venv
fi

have=$(installed torch)
if [ "${have%%+*}" = "$TORCH_VERSION" ]; then
  echo "setup: torch $have is installed"
elif "$VPY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=5).read(1)" \
     "$TORCH_INDEX" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION, the CPU build, from $TORCH_INDEX (~200 MB)"
  "$VPY" -m pip install -q --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" || {
    echo "setup: that failed; installing torch==$TORCH_VERSION from the default index instead"
    "$VPY" -m pip install -q "torch==$TORCH_VERSION"; }
else
  echo "setup: $TORCH_INDEX did not answer; installing torch==$TORCH_VERSION from the default index" \
       "(on PyPI the Linux x86_64 wheel is the CUDA build, several GB; a mirror may serve another)"
  "$VPY" -m pip install -q "torch==$TORCH_VERSION"
fi

if [ "$extra" = test ]; then
  echo "setup: installing densepure (editable) with the test extra (over 1 GB the first time: triton, ray, transformers, onnxruntime)"
  "$VPY" -m pip install -q -e ".[test]"
else
  echo "setup: installing densepure (editable) with its core dependencies (numpy, scipy, pillow, matplotlib, tqdm)"
  "$VPY" -m pip install -q -e .
fi
echo "$want extra=$extra" > "$stamp"
echo "setup: done (.venv/bin/densepure)"
