# Sourced by the scripts that run on the lent GPU machine (gpu_check.sh, gpu_seed000_variants.sh), from the
# repository's root. That machine has Python 3.12 with JAX and PyTorch built for CUDA, no TensorFlow and no
# internet: `make gpu-check-prep` here puts wheels of Keras and what it lacks into .device/wheels and
# Fashion-MNIST's IDX files into .device/data, and the call carries .device. GPU_CHECK_CPU=1 runs the same
# scripts on this machine's CPU at small sizes, with the environment's own packages.
#
# Sets PY, MODE (gpu or cpu), DEVICE (expkit's --device), OUT (the folder that comes back) and the
# environment; defines install_wheels and the `step NAME SECONDS COMMAND...` runner, which records each
# step's exit status and time in STATUS.
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/device_run.XXXX)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax EXPKIT_OFFLINE=1
if [ -n "${GPU_CHECK_CPU:-}" ]; then
  MODE=cpu DEVICE=cpu
  export PYTHONPATH=$ROOT/src
else
  MODE=gpu DEVICE=gpu
  export EXPKIT_DATA=$ROOT/.device/data PYTHONPATH=/tmp/site:$ROOT/src
fi
declare -A STATUS

install_wheels() {  # the carried wheels into /tmp/site (the GPU machine only); STATUS[install]
  ls .device/wheels/*.whl >/dev/null 2>&1 || { echo "no .device/wheels: run 'make gpu-check-prep' here and carry .device"; return 2; }
  local start=$SECONDS
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/wheels/*.whl
  local rc=$?
  STATUS[install]="rc $rc, $((SECONDS - start)) s"
  return $rc
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record its exit status
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  local rc=$?
  STATUS[$name]="rc $rc, $((SECONDS - start)) s"
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  return $rc
}
