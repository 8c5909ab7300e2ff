#!/usr/bin/env bash
# Same-budget comparison: Uni-Encoder vs cross-encoder vs bi-encoder, all from one starting model (MODEL),
# the same MuTual contexts, loss (listwise softmax CE over each context's 4 candidates), steps,
# lr and token limits. Shared 2-core box: one thread each, nice 19, run in parallel.
# Usage: [CONTEXTS=320] [SEED=0] [MODEL=default|mpnet|DIR] bash bench/uni_experiment.sh [OUT_ROOT]   (default runs/uni)
set -euo pipefail
ROOT=${1:-runs/uni}
mkdir -p "$ROOT"
COMMON=(--data mutual --model ${MODEL:-default} --max-contexts ${CONTEXTS:-320} --batch-size 8 --epochs 1 --lr 5e-5
        --max-context-tokens 128 --max-candidate-tokens 48 --negatives dataset --seed ${SEED:-0}
        --eval mutual-heldout,dailydialog-dev --eval-limit 200 --threads 1 --device cpu --no-progress)
for kind in uni cross bi; do
  OMP_NUM_THREADS=1 nice -n 19 .venv/bin/pairsmith train uni-encoder --kind "$kind" --mask arrow \
    "${COMMON[@]}" --out "$ROOT/$kind" --resume > "$ROOT/$kind.log" 2>&1 &
done
wait
