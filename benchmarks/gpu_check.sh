#!/usr/bin/env bash
# GPU check of the PLA kernels (issue #4): run from the repository root on a machine with a CUDA GPU.
#   1. installs carried wheels from .whl/ if any (fla-core 0.6.0, the optional fla baseline),
#   2. makes jrtc.plugins importable from this checkout,
#   3. runs tests/test_pla_kernels.py on CUDA at the larger shapes (JRTC_PLA_TEST_DEVICE=cuda),
#   4. runs benchmarks/decode_kernels.py and benchmarks/prefill_kernels.py (with launch-config sweeps first
#      unless SWEEP=0, in which case the rows use the library defaults),
# writing logs and JSON under $OUT (default benchmarks/results). Steps keep going after a failure; the exit
# status is nonzero if any step failed.
#
# Fetch the wheels beforehand on a machine with network access, from the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl fla-core==0.6.0
# (fla-core's only other requirement, einops, is usually installed already.)
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh gpu_check

install_carried_wheels

step "make jrtc.plugins importable"
plugins_shim
python3 -c "import jrtc.plugins.pla.ops, fla; print('jrtc.plugins ok; fla', fla.__version__)" 2>&1 | tee -a "$LOG"

step "kernel tests on CUDA"
# Several workers compile the kernel variants in parallel (Triton compiles on the CPU, one at a time).
xdist=""; python3 -c "import xdist" 2>/dev/null && xdist="-n 8"
JRTC_PLA_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-100}" python3 -m pytest -q -p no:cacheprovider $xdist \
  tests/test_pla_kernels.py 2>&1 | tee -a "$LOG" || status=1

sweep="--sweep"; [ "${SWEEP:-1}" = 0 ] && sweep=""

step "decode benchmark"
timeout "${DECODE_TIMEOUT:-45}" python3 benchmarks/decode_kernels.py $sweep --out "$OUT" 2>&1 | tee -a "$LOG" || status=1

step "prefill benchmark"
timeout "${PREFILL_TIMEOUT:-150}" python3 benchmarks/prefill_kernels.py $sweep --out "$OUT" 2>&1 \
  | tee -a "$LOG" || status=1

step "done (status $status)"
exit $status
