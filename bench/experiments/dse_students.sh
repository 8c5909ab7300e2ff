#!/usr/bin/env bash
# DSE students (after dse_teachers.sh): labels-only baseline (--alpha 0) and DSE (--alpha 0.5), cosine head,
# starting from the default model, on STS-B and MRPC; teacher score = mean of both orders; then the query-vs-1,000 speed ratio.
#   nohup flock /tmp/pairsmith-cpu.lock bash bench/experiments/dse_students.sh > runs/dse_students.log 2>&1 &
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
RUNS=${RUNS:-runs}
COMMON="--teacher-symmetric --student default --epochs ${EPOCHS:-1} --batch-size 16 --lr 2e-5 --max-length 128 --device cpu --no-progress --resume"
for A in 0 0.5; do
  $PS -v distill dse --teacher "$RUNS/teacher-stsb" --pairs stsb-train --dev stsb-dev --alpha $A $COMMON \
    --out "$RUNS/dse-stsb-a$A"
  $PS -v distill dse --teacher "$RUNS/teacher-mrpc" --pairs mrpc-train --dev mrpc-val --test mrpc-test --alpha $A $COMMON \
    --out "$RUNS/dse-mrpc-a$A"
done
.venv/bin/python bench/distill_dse_speed.py --teacher "$RUNS/teacher-stsb" --student "$RUNS/dse-stsb-a0.5" \
  --candidates 1000 --repeats 3 --json "$RUNS/dse-speed.json"
