#!/usr/bin/env bash
# Seed 000's variants table over three seeds, on the lent GPU machine in one call of under 9 minutes:
# CNN2 and its Leaky ReLU, Dropout and L2 variants (configs/seed000/cnn2_*.yaml: 10 epochs, batch size 128,
# SGD at 0.001) at seeds 14, 15 and 16, on JAX, then the table with the published rows and each variant minus
# the base in seed-to-seed standard deviations: what `make seed000-variants SEEDS="14 15 16"` makes, which
# takes some four hours on the 2-core CPU (about 20 minutes a run). Each variant is one sweep over the three
# seeds (`sweep.seeds`), which `sweep.vectorize: auto` trains as one JAX program on a GPU (the seeds' results
# are those of three separate runs; on a CPU it runs them one at a time). A variant is not started once fewer
# than RUN_SECONDS remain of BUDGET.
#
# Prepare here with `make gpu-check-prep`; there, with .device carried:  bash benchmarks/gpu_seed000_variants.sh
# GPU_CHECK_CPU=1 (`make gpu-seed000-variants-cpu`): the same here on the CPU, 1 epoch on 1,500 sample images.
# $OUT gets variants.md, variants.csv, the log and runs.tar.gz (each run's config, results and metrics).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source benchmarks/device_env.sh  # PY, MODE, DEVICE, OUT, install_wheels, step
exec > >(tee -a "$OUT/variants.log") 2>&1

SEEDS=${SEEDS:-14,15,16}
VARIANTS=(cnn2_base cnn2_leaky cnn2_dropout cnn2_l2)
if [ "$MODE" = cpu ]; then
  DATA=(--set data.dataset=fashion_mnist_sample --set data.limit=1500 --set train.epochs=1)
  BUDGET=${BUDGET:-900} RUN_SECONDS=60
else
  DATA=(--set data.dataset=fashion_mnist)
  BUDGET=${BUDGET:-480} RUN_SECONDS=90
  install_wheels || exit 1
fi
RUNS=$OUT/runs
echo "seed000 variants: mode $MODE, seeds $SEEDS, output in $OUT, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

paths=()
for variant in "${VARIANTS[@]}"; do
  if (( BUDGET - SECONDS < RUN_SECONDS )); then
    echo "budget: ${SECONDS} s of ${BUDGET} s used, $variant not started"
    continue
  fi
  step "$variant" $((BUDGET - SECONDS)) "$PY" -m expkit.cli run "configs/seed000/$variant.yaml" --backend jax \
    --device "$DEVICE" "${DATA[@]}" --set "sweep.seeds=[$SEEDS]" --set sweep.vectorize=auto --runs-dir "$RUNS" \
    && paths+=("$RUNS/$variant")
done

if (( ${#paths[@]} )); then
  differences=(--difference cnn2_leaky-cnn2_base --difference cnn2_dropout-cnn2_base --difference cnn2_l2-cnn2_base)
  "$PY" -m expkit.cli table "${paths[@]}" --format csv -o "$OUT/variants.csv"
  "$PY" -m expkit.cli table "${paths[@]}" -o "$OUT/variants.md" --reference configs/reference/seed000_variants.csv \
    --reference-differences "${differences[@]}"
  cat "$OUT/variants.md"
  (cd "$RUNS" && find . \( -name config.yaml -o -name results.json -o -name metrics.csv \) -print0 \
    | tar czf "$OUT/runs.tar.gz" --null -T -)
fi
rm -rf "$RUNS"

echo
echo "seed000 variants summary ($MODE): ${#paths[@]} of ${#VARIANTS[@]} variants finished"
failed=0
for name in "${!STATUS[@]}"; do
  echo "  $name: ${STATUS[$name]}"
  case ${STATUS[$name]} in "rc 0,"*) ;; *) failed=1 ;; esac
done
exit $failed
