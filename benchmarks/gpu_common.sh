# Shared by the benchmarks/gpu_*.sh scripts, which source it from the repository root:
#   . benchmarks/gpu_common.sh NAME
# It sets OUT (default benchmarks/results), LOG="$OUT/NAME.log", status=0 and step() (a timestamped
# heading in the log), logs the GPU, torch and triton versions, and defines the ways a script makes jrtc
# importable on a machine without network: install_carried_wheels, plugins_shim, install_jrtc.
set -uo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
LOG="$OUT/$1.log"
export PYTHONUNBUFFERED=1
status=0
step() { echo "=== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee -a "$LOG"

install_carried_wheels() {  # the wheels carried in .whl/ (fla-core for the baselines), into /tmp/site
  if ls .whl/*.whl >/dev/null 2>&1; then
    step "install carried wheels"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl 2>&1 | tee -a "$LOG" && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

plugins_shim() {  # jrtc.plugins importable from this checkout without installing it
  if ! python3 -c "import jrtc.plugins.pla" 2>/dev/null; then
    # The package maps jrtc.plugins to plugins/ at install time; without installing, extend jrtc's path.
    local shim=/tmp/jrtc_shim
    mkdir -p "$shim/extra"
    ln -sfn "$PWD/plugins" "$shim/extra/plugins"
    printf 'import jrtc\njrtc.__path__.append("%s/extra")\n' "$shim" > "$shim/sitecustomize.py"
    export PYTHONPATH="$shim:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

install_jrtc() {  # this checkout, editable, without dependencies (the machine has them): the jrtc command too
  step "install jrtc (no dependencies)"
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2 | tee -a "$LOG"
}
