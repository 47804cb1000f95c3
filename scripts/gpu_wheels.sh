#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks into .whl/ (ignored by git; carried by the device call
# `run(..., carry=[".whl"])`, see scripts/gpu_check.sh): the FastAPI stack for the serve_http stage,
# pinned to the versions the tests pass with. The GPU image already has anyio, click, h11, httpx,
# idna, prometheus-client, typing-extensions (docs/gpu_check.md). x86-64 Linux, CPython 3.12 wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 uvicorn==0.55.0 \
  annotated-types==0.8.0 annotated-doc==0.0.7 typing-inspection==0.4.5 opentelemetry-api==1.45.3 \
  typing-extensions==4.16.0
ls -l .whl
