#!/usr/bin/env bash
# Python 3.10 support (JetPack 6 ships Python 3.10; NVIDIA's Jetson torch wheels for it are cp310):
#  1. every module compiles under a Python 3.10 interpreter, if one is found (PYTHON310, python3.10, pyenv);
#  2. vermin, if installed, finds nothing newer than 3.10 (`pip install vermin`);
#  3. pip resolves the core dependencies (and the onnx/int8 extras) to cp310 manylinux wheels for x86_64
#     and aarch64 (JetPack's architecture), without installing anything (needs the package index). The full
#     resolution (torch's own dependencies included) takes minutes per architecture; RESOLVE_NO_DEPS=1
#     checks only that every direct requirement has a cp310 wheel (~40 s; what the slow test runs).
# tests/test_python310.py runs the same source checks offline in every test run; this script adds the
# interpreter, vermin and the resolution, which need a second Python or the network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PY310=""
for candidate in ${PYTHON310:-} "$HOME"/.pyenv/versions/3.10*/bin/python /usr/bin/python3.10 python3.10; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then PY310=$candidate; break; fi
done
if [ -n "$PY310" ]; then
  "$PY310" -m compileall -q densepure benchmarks scripts tests >/dev/null
  echo "compiles under $("$PY310" --version)"
else
  echo "no Python 3.10 interpreter found: compile step skipped"
fi
if command -v vermin >/dev/null; then
  vermin --no-tips -t=3.10- --violations densepure benchmarks scripts tests
fi
deps=$("$PY" - <<'PY'
import re
try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib
meta = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = meta["optional-dependencies"]
print(" ".join(re.sub(r"\s+", "", d) for d in [*meta["dependencies"], *extras["onnx"], *extras["int8"]]))
PY
)
for arch in x86_64 aarch64; do
  platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014; do platforms+=(--platform "${tag}_$arch"); done
  # shellcheck disable=SC2086
  "$PY" -m pip install --dry-run --quiet --ignore-installed ${RESOLVE_NO_DEPS:+--no-deps} --only-binary=:all: \
      --python-version 3.10 --implementation cp "${platforms[@]}" --target /tmp/densepure-py310-resolve $deps \
    && echo "cp310 manylinux $arch: every requirement resolves to a wheel ($deps)"
done
