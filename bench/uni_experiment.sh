#!/usr/bin/env bash
# Three arms at one budget, all starting from one sentence-transformers bi-encoder (MODEL):
# the bi-encoder fine-tuned, the warm Uni-Encoder (context-blind mask, cross-segment gates),
# the warm cross-encoder (the same gated model, one candidate per row, context <-> candidate).
# Same MuTual training contexts per seed, loss (listwise softmax CE over each context's 4
# candidates), steps, lr and token limits; selection on mutual-select (the start model is a
# candidate); reported on mutual-heldout and DailyDialog++ dev (first EVAL_LIMIT contexts each).
# Two lanes in parallel (untrained reference, uni + bi; cross), one thread each; every run resumable.
# Usage: [CONTEXTS=320] [SEEDS="0 1 2"] [CROSS_SEEDS=$SEEDS] [EVAL_LIMIT=150] [SELECT_LIMIT=150] [MODEL=default]
#        [PY=.venv/bin/python] bash bench/uni_experiment.sh [OUT_ROOT]   (default runs/uni-warm)
# Then: .venv/bin/python bench/uni_report.py OUT_ROOT --json bench/results/uni/warm_three_arms.json
set -euo pipefail
ROOT=${1:-runs/uni-warm}
PY=${PY:-.venv/bin/python}
BENCH=$(cd "$(dirname "$0")" && pwd)
SEEDS=${SEEDS:-0 1 2}
mkdir -p "$ROOT"
COMMON=(--data mutual --model "${MODEL:-default}" --max-contexts "${CONTEXTS:-320}" --batch-size 8 --epochs 1
        --lr 5e-5 --max-context-tokens 128 --max-candidate-tokens 48 --negatives dataset
        --select mutual-select --select-limit "${SELECT_LIMIT:-150}"
        --eval mutual-heldout,dailydialog-dev --eval-limit "${EVAL_LIMIT:-150}" --threads 1 --device cpu
        --no-progress)
run() {
  local kind=$1 seed=$2
  shift 2
  OMP_NUM_THREADS=1 "$PY" -m pairsmith.cli.main train uni-encoder --kind "$kind" "${COMMON[@]}" \
    --seed "$seed" "$@" --out "$ROOT/$kind-s$seed" --resume > "$ROOT/$kind-s$seed.log" 2>&1 || echo "$kind-s$seed failed" >&2
}
(
  [ -f "$ROOT/untrained.json" ] || OMP_NUM_THREADS=1 "$PY" "$BENCH/uni_eval.py" --zero-shot \
    --zero-shot-model "${MODEL:-default}" --limit "${EVAL_LIMIT:-150}" --json "$ROOT/untrained.json" \
    > "$ROOT/untrained.log" 2>&1 || echo "untrained reference failed" >&2
  for s in $SEEDS; do run uni "$s" --head warm --mask context-blind; run bi "$s"; done
) &
( for s in ${CROSS_SEEDS:-$SEEDS}; do run cross "$s" --head warm; done ) &
wait
