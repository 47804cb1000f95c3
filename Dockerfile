# densepure serve in a container: the Open Inference Protocol v2 on 0.0.0.0:8080, the digits models on CPU.
#
#   docker build -t densepure .
#   docker run --rm -p 8080:8080 --stop-timeout 30 densepure            # flags after the image go to serve:
#   docker run --rm -p 8080:8080 densepure --preset cifar10 --checkpoint /models/unet.pt ...
#
# CUDA: a CUDA base image and PyTorch's wheel index of that CUDA version (the base needs no Python):
#   docker build -t densepure:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all -p 8080:8080 densepure:cuda --device cuda
#
# Probes: liveness GET /v2/health/live, readiness GET /v2/health/ready (503 while the models load and while
# draining). SIGTERM drains for --grace-period (25 s): give the container longer than that to stop
# (docker's --stop-timeout, Kubernetes' terminationGracePeriodSeconds, 30 s by default there). docs/serving.md.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# a CUDA base image has no Python: Ubuntu's (3.12 on 24.04); python:3.12-slim has its own
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY densepure ./densepure
# torch from the index that matches the base (CPU by default) first, so that the package does not pull another
RUN pip install --index-url "${TORCH_INDEX}" torch \
    && pip install ".[serve]" \
    && rm -rf /src

RUN useradd --create-home --uid 10001 densepure
USER densepure
WORKDIR /home/densepure

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["densepure", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD []
