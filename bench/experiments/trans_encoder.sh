#!/usr/bin/env bash
# Trans-Encoder runs, sized for a 2-core CPU: a 3,000-pair random subsample of the transductive pool (sts-all),
# 1 cycle, cross-encoder 1 epoch over both orders at lr 5e-5, batch 16, max length 64, labels from both
# orders (--symmetric-labels); bi-encoder 1 epoch, batch 16, lr 2e-5, max length 32.
# Usage: bash bench/experiments/trans_encoder.sh NAME
#   NAME = default (self, mean pooling) | weak (self, CLS pooling) | mutual (default + paraphrase-MiniLM-L3-v2)
#          | default-big (6,000 pairs, cross-encoder 2 epochs, symmetric evaluation)
#          | default-full / weak-full / mutual-full: the whole transductive pool (its distinct pair count is
#            printed at the start of each run), cross-encoder
#            1 epoch over both orders (twice the pool in examples), symmetric labels and evaluation; ~30 min per model on a
#            quiet 2-vCPU box (mutual: two of each fit; MAXP=N subsamples the pool, out dir te-mutual-full-N)
# Each run under the shared lock:  flock /tmp/pairsmith-cpu.lock bash bench/experiments/trans_encoder.sh default
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
PY=${PYTHON:-.venv/bin/python}
$PY -c "from pairsmith.distill.pairsets import load_pairs; print('sts-all:', len(load_pairs('sts-all')), 'distinct pairs (normalised text)')"
RUNS=${RUNS:-runs}
L3=${L3:-../shared/models/paraphrase-MiniLM-L3-v2}
COMMON="--pairs sts-all --max-pairs ${N:-3000} --cycles ${CYCLES:-1} --dev stsb-dev
  --cross-epochs 1 --cross-lr 5e-5 --cross-batch-size 16 --cross-max-length 64 --cross-eval-steps 190
  --symmetric-labels
  --bi-epochs 1 --bi-batch-size 16 --bi-lr 2e-5 --bi-max-length 32 --bi-eval-steps 100
  --device cpu --no-progress --resume"
case "${1:?default|weak|mutual}" in
  default) $PS -v distill trans-encoder --models default $COMMON --out "$RUNS/te-default" ;;
  weak)    $PS -v distill trans-encoder --models default --pooling cls $COMMON --out "$RUNS/te-weak" ;;
  mutual)  $PS -v distill trans-encoder --models default "$L3" $COMMON --out "$RUNS/te-mutual" ;;
  # A larger cross-encoder budget from the default model: 6,000 pairs, 2 epochs, both orders scored at eval too.
  default-big) $PS -v distill trans-encoder --models default $COMMON --max-pairs 6000 --cross-epochs 2 \
                 --cross-eval-steps 375 --symmetric-eval --out "$RUNS/te-default-big" ;;
  # The whole pool (no --max-pairs): the cross-encoder budget the 3,000-pair runs lacked.
  default-full|weak-full|mutual-full)
    FULL="--pairs sts-all --cycles ${CYCLES:-1} --dev stsb-dev --symmetric-labels --symmetric-eval
      --cross-epochs 1 --cross-lr 5e-5 --cross-batch-size 16 --cross-max-length 64 --cross-eval-steps 900
      --bi-epochs 1 --bi-batch-size 16 --bi-lr 2e-5 --bi-max-length 32 --bi-eval-steps 450
      --device cpu --no-progress --resume"
    case "$1" in
      default-full) $PS -v distill trans-encoder --models default $FULL --out "$RUNS/te-default-full" ;;
      weak-full)    $PS -v distill trans-encoder --models default --pooling cls $FULL --out "$RUNS/te-weak-full" ;;
      mutual-full)  $PS -v distill trans-encoder --models default "$L3" $FULL ${MAXP:+--max-pairs $MAXP} \
                      --out "$RUNS/te-mutual-full${MAXP:+-$MAXP}" ;;
    esac ;;
  *) echo "unknown run $1" >&2; exit 2 ;;
esac
