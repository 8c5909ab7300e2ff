#!/usr/bin/env bash
# A stronger STS-B teacher? The cross-encoder started from the labels-only student's transformer (the default
# model fine-tuned as a bi-encoder on STS-B train, dse_students.sh's dse-stsb-a0 run) instead of the default
# model's, then trained as a cross-encoder on STS-B train (1 epoch, both orders, dev selection); then the
# DSE student (alpha 0.5) with that teacher. Only STS-B train labels are used; dev selects checkpoints.
#   TEACHER_TAG=-e4 flock /tmp/pairsmith-cpu.lock bash bench/experiments/dse_teacher_ft.sh > runs/dse_teacher_ft.log 2>&1
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
RUNS=${RUNS:-runs}
T=${TEACHER_TAG:-}
$PS -v train cross-encoder --data stsb-train --dev stsb-dev --init "$RUNS/dse-stsb-a0$T/student" \
  --epochs 1 --batch-size 16 --lr 5e-5 --max-length 128 --eval-steps 250 --device cpu --no-progress \
  --out "$RUNS/teacher-stsb-ft$T" --resume
$PS -v distill dse --teacher "$RUNS/teacher-stsb-ft$T" --pairs stsb-train --dev stsb-dev --alpha 0.5 \
  --teacher-symmetric --student default --epochs 1 --batch-size 16 --lr 2e-5 --max-length 128 --device cpu \
  --no-progress --resume --out "$RUNS/dse-stsb-a0.5-ftteacher$T"
