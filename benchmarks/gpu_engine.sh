#!/usr/bin/env bash
# GPU check of the cuda engine (issue #7): run from the repository root on a machine with a CUDA GPU, in
# under 8 minutes on an H200.
#   1. installs jrtc from this checkout (no dependencies: the machine has them) or puts it on the path,
#   2. runs the kernel tests of the sliding-window attention kernel on CUDA,
#   3. exports the built-in example for the cpu (ONNX) and for cuda in float32 and bfloat16, and a random
#      JRT-360M-shaped bf16 checkpoint for cuda (max batch 256, prompts up to 32768 tokens per call),
#   4. runs benchmarks/engine_cuda.py --check --bench (correctness, then prefill and decode throughput next
#      to the PyTorch model with the kernels, each against its bound),
# writing logs and JSON under $OUT (default benchmarks/results). Steps keep going after a failure; the exit
# status is nonzero if any step failed.
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh gpu_engine
WORK="${WORK:-/tmp/jrtc-gpu-engine}"
mkdir -p "$WORK"
export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-16}"

install_jrtc
python3 -c "import jrtc.plugins.swa.ops, jrtc.runtime.backends.aoti; print('jrtc ok')" 2>&1 | tee -a "$LOG" || status=1

step "sliding-window kernel tests on CUDA"
JRTC_PLA_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_swa_kernel.py 2>&1 \
  | tee -a "$LOG" || status=1

step "checkpoints and exports"
python3 - "$WORK" <<'PY' 2>&1 | tee -a "$LOG" || status=1
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
import jrtc
from model_cuda import random_jrt_360m
jrtc.save_checkpoint(random_jrt_360m(pad_token_id=32), Path(sys.argv[1]) / "jrt360m.pt")
PY
export_one() {  # name, checkpoint, options...
  local name=$1 ckpt=$2; shift 2
  timeout 420 jrtc export "$ckpt" --tokenizer bytes -o "$WORK/$name" "$@" >"$OUT/export-$name.log" 2>&1
  echo "export $name: exit $? ($(date -u +%H:%M:%S))" | tee -a "$LOG"
}
export_one example-cpu jrtc/example/recall.pt --target cpu --max-prompt-len 160 &
export_one example-cuda-float32 jrtc/example/recall.pt --target cuda --dtype float32 --max-prompt-len 160 &
export_one example-cuda-bfloat16 jrtc/example/recall.pt --target cuda --max-prompt-len 160 &
export_one jrt360m-cuda "$WORK/jrt360m.pt" --target cuda --max-batch 256 --max-prompt-len 32768 &
wait
grep -h "error" "$OUT"/export-*.log | tee -a "$LOG"

step "engine checks and throughput"
timeout 300 python3 benchmarks/engine_cuda.py --engines "$WORK" --check --bench --out "$OUT" 2>&1 \
  | tee -a "$LOG" || status=1

step "done (status $status)"
exit $status
