#!/usr/bin/env bash
# Vectorised sweeps on the lent GPU machine, in one call of under 9 minutes: benchmarks/bench_sweep.py with
# its sequential side on JAX (the machine has no TensorFlow): the dense baseline's ten learning rates
# (sweep_lr.yaml, 5 epochs, full Fashion-MNIST) and CNN2 at the same ten rates (2 epochs), each as ten
# `expkit run` trials one at a time and as one vectorised program. Prepare here with `make gpu-check-prep`;
# there, with .device carried:  bash benchmarks/gpu_sweep.sh      (GPU_CHECK_CPU=1: the CPU, small sizes)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source benchmarks/device_env.sh  # PY, MODE, DEVICE, OUT, install_wheels, step
exec > >(tee -a "$OUT/gpu_sweep.log") 2>&1
if [ "$MODE" = cpu ]; then
  ARGS=(--dataset fashion_mnist_sample --cnn2-limit 500) LIMIT=900
else
  ARGS=(--dataset fashion_mnist --cnn2-limit 0) LIMIT=500
  install_wheels || exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
step bench-sweep "$LIMIT" "$PY" benchmarks/bench_sweep.py --studies lr,cnn2_lr --sequential jax "${ARGS[@]}"
echo "gpu_sweep ($MODE): ${STATUS[bench-sweep]}"
case ${STATUS[bench-sweep]} in "rc 0,"*) exit 0 ;; *) exit 1 ;; esac
