#!/usr/bin/env bash
# Cross-encoder teachers on the mpnet backbone: `pairsmith models install mpnet` first.
# TASK=stsb|mrpc, EPOCHS, LR, MAXLEN, ORDERS (both|one), EVAL (dev every N steps), DEVICE (cpu|cuda),
# TAG name the run; outputs go to $RUNS/teacher-mpnet-$TASK$TAG.
# CPU (2 shared vCPUs, one thread, nice; ~40 min per epoch over both orders of STS-B on an idle box):
#   OMP_NUM_THREADS=1 EPOCHS=1 ORDERS=one MAXLEN=64 TAG=-cpu1 nohup nice -n 19 bash bench/experiments/mpnet_teachers.sh > runs/mpnet-stsb.log 2>&1 &
# GPU (the full recipe): DEVICE=cuda EPOCHS=4 MAXLEN=128 TASK=stsb bash bench/experiments/mpnet_teachers.sh
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
RUNS=${RUNS:-runs}
TASK=${TASK:-stsb}
EPOCHS=${EPOCHS:-4}
LR=${LR:-2e-5}
MAXLEN=${MAXLEN:-128}
ORDERS=${ORDERS:-both}
EVAL=${EVAL:-120}
DEVICE=${DEVICE:-cpu}
SEED=${SEED:-2021}
TAG=${TAG:-}
extra=()
[ "$ORDERS" = one ] && extra+=(--one-order)
case "$TASK" in
  stsb) sets=(--data stsb-train --dev stsb-dev) ;;
  mrpc) sets=(--data mrpc-train --dev mrpc-val --test mrpc-test) ;;
  *) echo "TASK must be stsb or mrpc" >&2; exit 2 ;;
esac
$PS -v train cross-encoder "${sets[@]}" --init mpnet --epochs "$EPOCHS" --batch-size 16 --lr "$LR" \
  --max-length "$MAXLEN" --eval-steps "$EVAL" --seed "$SEED" --device "$DEVICE" --no-progress "${extra[@]}" \
  --out "$RUNS/teacher-mpnet-$TASK$TAG" --resume
