#!/usr/bin/env bash
# DSE teachers: supervised cross-encoders from the default model's weights (STS-B train, MRPC train),
# both orders, model selection on the dev split (test scored once, with the dev-selected checkpoint).
# EPOCHS (default 4) and LR (default 5e-5) size the run; outputs go to $RUNS/teacher-{stsb,mrpc}$TAG.
# Run from the repo root (~19 training pairs/s on a shared 2-vCPU box: 1 epoch = ~10 min STS-B, ~5 min MRPC):
#   EPOCHS=4 TAG=-e4 nohup flock /tmp/pairsmith-cpu.lock bash bench/experiments/dse_teachers.sh > runs/dse_teachers-e4.log 2>&1 &
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
RUNS=${RUNS:-runs}
EPOCHS=${EPOCHS:-4}
LR=${LR:-5e-5}
TAG=${TAG:-}
$PS -v train cross-encoder --data stsb-train --dev stsb-dev --init default \
  --epochs "$EPOCHS" --batch-size 16 --lr "$LR" --max-length 128 --eval-steps 250 --device cpu --no-progress \
  --out "$RUNS/teacher-stsb$TAG" --resume
$PS -v train cross-encoder --data mrpc-train --dev mrpc-val --test mrpc-test --init default \
  --epochs "$EPOCHS" --batch-size 16 --lr "$LR" --max-length 128 --eval-steps 150 --device cpu --no-progress \
  --out "$RUNS/teacher-mrpc$TAG" --resume
