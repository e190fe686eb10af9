#!/usr/bin/env bash
# The GPU check: expkit on JAX on the lent GPU machine, in one call of under 8 minutes.
#
# That machine has Python 3.12 with JAX and PyTorch built for CUDA, no TensorFlow and no internet. Prepare here
# with `make gpu-check-prep` (wheels of Keras and what it lacks into .device/wheels, Fashion-MNIST's IDX files
# into .device/data), then run there with .device carried:  bash benchmarks/gpu_check.sh
# On a machine without a GPU, GPU_CHECK_CPU=1 runs the same steps on the CPU at small sizes (`make gpu-check-cpu`).
#
# Steps, each under its own time limit so the whole stays inside 8 minutes:
#   1. the machine: GPU, Python, JAX and its devices
#   2. install the carried wheels (pip --no-index; skipped on CPU, where the environment has them)
#   3. the backend-agnostic tests on JAX with the GPU visible (EXPKIT_TEST_BACKEND=jax)
#   4. `expkit run` of baseline, cnn1 and cnn2 on JAX (--device gpu) on the full Fashion-MNIST, 3 epochs
#   5. benchmarks/bench_speed.py on JAX: expkit against plain Keras, samples/s and best val accuracy,
#      float32 and mixed_bfloat16, for the dense baseline and CNN2 (each run is a process: ~20 s apiece)
# Logs go to $OUT (the device tool's folder that comes back; a temporary folder otherwise), with each run's
# results.json; the last lines say which steps passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source benchmarks/device_env.sh  # PY, MODE, DEVICE, OUT, install_wheels, step
LOG=$OUT/gpu_check.log
exec > >(tee -a "$LOG") 2>&1

if [ "$MODE" = cpu ]; then
  DATA=(--set data.dataset=fashion_mnist_sample --set data.limit=1500)
  EPOCHS=(--set train.epochs=1)
  BENCH=(--dataset fashion_mnist_sample --limit 1500 --models baseline,cnn2 --epochs baseline=2,cnn2=1)
  TESTS=(tests/test_backend.py)
  LIMITS=(300 240 300)  # seconds: tests, the three runs, bench (a small shared CPU: no 8-minute bound)
else
  DATA=(--set data.dataset=fashion_mnist)
  EPOCHS=(--set train.epochs=3)
  BENCH=(--dataset fashion_mnist --models baseline,cnn2 --epochs baseline=5,cnn2=2)
  TESTS=(tests/test_backend.py tests/test_runner.py tests/test_train.py)
  LIMITS=(180 75 190)  # with install and start-up, at most 8 minutes
fi

echo "gpu_check: mode $MODE, output in $OUT, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ "$MODE" = gpu ]; then
  install_wheels || exit 1
else
  ls .device/wheels/*.whl 2>/dev/null | sed 's/^/carried wheel (not installed on CPU): /'
fi

step environment 60 "$PY" -c "
import platform, jax, keras, expkit
print('python', platform.python_version(), '| jax', jax.__version__, '| keras', keras.__version__, '| expkit', expkit.__version__)
print('keras backend', keras.backend.backend(), '| jax devices', jax.devices())
"

step tests "${LIMITS[0]}" env EXPKIT_TEST_BACKEND=jax "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
  -k 'not four_processes and not sigterm' > >(tee "$OUT/tests.txt") 2>&1

for model in baseline cnn1 cnn2; do
  step "run-$model" "$((LIMITS[1] / 3))" "$PY" -m expkit.cli run "configs/$model.yaml" --backend jax --device "$DEVICE" \
    "${DATA[@]}" "${EPOCHS[@]}" --set train.verbose=2 --runs-dir "$OUT/runs" || continue
  folder=$(ls -d "$OUT/runs/$model"/*/ | tail -1)
  cp "$folder/results.json" "$OUT/results-$model.json"
  "$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(f\"{r['name']}: {r['status']} on {r['backend']} {r['versions'].get('jax')}, {r['device']}; best val acc \"
      f\"{r['best']['val_accuracy']:.4f}, {r['samples_per_second']:.0f} samples/s, {r['fit_seconds']:.1f} s, \"
      f\"steps/execution {r['steps_per_execution']}\")" "$OUT/results-$model.json"
done
rm -rf "$OUT/runs"  # the results-*.json stay: the device tool returns at most 8 files

step bench "${LIMITS[2]}" "$PY" benchmarks/bench_speed.py --backends jax --repeats 1 \
  "${BENCH[@]}" --precision mixed_bfloat16 > >(tee "$OUT/bench.txt") 2>&1

echo
echo "gpu_check summary ($MODE):"
failed=0
for name in install environment tests run-baseline run-cnn1 run-cnn2 bench; do
  [ -n "${STATUS[$name]:-}" ] || continue
  echo "  $name: ${STATUS[$name]}"
  case ${STATUS[$name]} in "rc 0,"*) ;; *) failed=1 ;; esac
done
exit $failed
