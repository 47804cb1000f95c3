#!/usr/bin/env bash
# On a lent GPU machine (the device tool runs this in the repository root; its image has torch, scipy,
# onnxruntime, transformers and timm): the whole test suite there (GPU tests and the timm tests included),
# then the GPU benchmarks. Everything lands under $OUT (default runs/gpu). About 15-25 minutes on an H100.
#   bash scripts/gpu_check.sh [tests|bench|kernels|all]
# `kernels` (also part of `all`): the kernel tests on the GPU (compiled Triton, bit-identity against the
# reference run on the GPU, bf16) and benchmarks/kernels.py (eager vs Triton vs torch.compile, roofline).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
what=${1:-all}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee "$out/torch.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest.txt" | tail -25
fi
if [ "$what" = kernels ] || [ "$what" = all ]; then
  if [ "$what" = kernels ]; then  # `all` already ran them with the whole suite
    python3 -m pytest -q -p no:cacheprovider tests/kernels tests/models/test_unet_kernels.py 2>&1 \
      | tee "$out/pytest_kernels.txt" | tail -15
  fi
  python3 benchmarks/kernels.py --arch cifar10 --rows 512 --precision fp16 --repeats 3 2>&1 | tee "$out/kernels_cifar10.txt"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benchmarks/throughput.py --arch digits --precision fp32 fp16 --repeats 3 2>&1 | tee "$out/throughput_digits.txt"
  python3 benchmarks/throughput.py --arch cifar10 --precision fp32 fp16 bf16 --images 2 --n 900 --rows 512 \
    --repeats 1 2>&1 | tee "$out/throughput_cifar10.txt"
  python3 benchmarks/throughput.py --arch imagenet --precision fp16 --images 1 --n0 16 --n 144 --rows 64 \
    --repeats 1 2>&1 | tee "$out/throughput_imagenet.txt"
fi
