#!/usr/bin/env bash
# DSE teachers: supervised cross-encoders from the default model's weights (STS-B train, MRPC train).
# Sized for a shared 2-vCPU box (~10 training pairs/s under load): 1 epoch, both orders, dev selection. Run from the repo root:
#   nohup flock /tmp/pairsmith-cpu.lock bash bench/experiments/dse_teachers.sh > runs/dse_teachers.log 2>&1 &
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
RUNS=${RUNS:-runs}
$PS -v train cross-encoder --data stsb-train --dev stsb-dev --init default \
  --epochs 1 --batch-size 16 --lr 5e-5 --max-length 128 --eval-steps 250 --device cpu --no-progress \
  --out "$RUNS/teacher-stsb" --resume
$PS -v train cross-encoder --data mrpc-train --dev mrpc-val --test mrpc-test --init default \
  --epochs 1 --batch-size 16 --lr 5e-5 --max-length 128 --eval-steps 150 --device cpu --no-progress \
  --out "$RUNS/teacher-mrpc" --resume
