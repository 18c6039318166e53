#!/usr/bin/env bash
# GPU check of the wide-tile prefill kernels (issue #9), from the repository root on a CUDA machine, in
# at most 7.5 minutes (the step timeouts) on an H200:
#   1. the interpreter case tables on CUDA at the larger shapes, both kernel families
#      (tests/test_pla_chunk_ws.py and tests/test_pla_kernels.py, JRTC_PLA_TEST_DEVICE=cuda);
#   2. benchmarks/prefill_kernels.py --sweep-ws: a short sweep of the new kernels' launch configs, then every
#      case with today's kernels and the new ones side by side, same baselines (SDPA flash and cuDNN, fla
#      fused_chunk_based and parallel_based when fla-core is installed);
#   3. one Nsight Compute profile of each causal kernel at the JRT-RNN shape (B=16 H=16 T=32768 dv=64),
#      summarized as memory, latency or issue bound.
# Logs and JSON go to $OUT (default benchmarks/results). Shares gpu_check.sh's setup (benchmarks/gpu_common.sh:
# carried fla wheel, jrtc.plugins importable). Steps keep going after a failure; the exit status is nonzero if any failed.
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh gpu_check_ws

install_carried_wheels
plugins_shim

step "kernel tests on CUDA"
xdist=""; python3 -c "import xdist" 2>/dev/null && xdist="-n 8"
JRTC_PLA_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-90}" python3 -m pytest -q -p no:cacheprovider $xdist \
  tests/test_pla_chunk_ws.py tests/test_pla_kernels.py 2>&1 | tee -a "$LOG" || status=1

step "prefill benchmark (today's kernels and the wide-tile ones)"
timeout "${PREFILL_TIMEOUT:-240}" python3 benchmarks/prefill_kernels.py --sweep-ws --out "$OUT" 2>&1 \
  | tee -a "$LOG" || status=1

NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)"
if [ -z "$NCU" ]; then
  step "ncu not found: profile skipped"; status=1
else
  STALLS=$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' long_scoreboard short_scoreboard \
    wait barrier mio_throttle math_pipe_throttle not_selected dispatch_stall lg_throttle no_instruction membar \
    tex_throttle drain sleeping selected | sed 's/,$//')
  for kernels in ws chunk; do
    name=_ws_causal_kernel; [ "$kernels" = chunk ] && name=_pla_chunk_fwd_kernel
    step "ncu: $name"
    timeout "${NCU_TIMEOUT:-45}" "$NCU" --target-processes all -k "regex:$name" --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats \
      --metrics "$STALLS" --csv --page details python3 benchmarks/prefill_profile.py run --kernels "$kernels" \
      > "$OUT/ncu_prefill_$kernels.csv" 2>> "$LOG" || status=1
    python3 benchmarks/prefill_profile.py summary "$OUT/ncu_prefill_$kernels.csv" \
      --json "$OUT/ncu_prefill_$kernels.json" 2>&1 | tee -a "$LOG" || status=1
  done
fi

step "done (status $status)"
exit $status
