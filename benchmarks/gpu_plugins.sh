#!/usr/bin/env bash
# GPU check of the TensorRT plugins' artifact (issue #8), without TensorRT: run from the repository root on an
# H100/H200, in under 8 minutes.
#   1. installs jrtc from this checkout (no dependencies: the machine has torch, triton, cupy),
#   2. runs the kernel tests of the short-conv and sliding-window kernels on CUDA,
#   3. runs benchmarks/gpu_plugins.py: each plugin compiled to PTX as `jrtc export --target h100` does, loaded
#      with the CUDA driver (cupy.RawModule) and launched with exactly the grid, block, shared memory and
#      int32 scalars that aot_impl returns, at JRT-360M-shaped layers (prefill B=16 L=4096, decode B=64):
#      outputs bitwise equal to the Triton-launched kernel and within bf16 bounds of naive.
# Logs and JSON go under $OUT (default benchmarks/results). The exit status is nonzero if any step failed.
# Not yet run: no GPU was lent to the session that wrote it.
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh gpu_plugins
python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tee -a "$LOG"

install_jrtc

step "kernel tests on CUDA"
JRTC_PLA_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_conv_kernel.py \
  tests/test_swa_kernel.py 2>&1 | tee -a "$LOG" || status=1

step "plugins: PTX through the driver vs the Triton launch vs naive"
timeout 330 python3 benchmarks/gpu_plugins.py --out "$OUT/gpu_plugins-h200.json" 2>&1 | tee -a "$LOG" || status=1
exit $status
