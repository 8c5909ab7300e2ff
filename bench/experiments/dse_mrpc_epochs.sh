#!/usr/bin/env bash
# MRPC students with a longer budget (the DSE paper trains MRPC students 5-8 epochs; dse_students.sh: 1):
# labels-only (alpha 0) and DSE (alpha 0.5), cosine head, EPOCHS (default 3), same teacher as dse_students.sh.
#   TEACHER_TAG=-e4 EPOCHS=3 flock /tmp/pairsmith-cpu.lock bash bench/experiments/dse_mrpc_epochs.sh > runs/dse_mrpc_ep3.log 2>&1
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
RUNS=${RUNS:-runs}
T=${TEACHER_TAG:-}
E=${EPOCHS:-3}
for A in 0 0.5; do
  $PS -v distill dse --teacher "$RUNS/teacher-mrpc$T" --pairs mrpc-train --dev mrpc-val --test mrpc-test --alpha "$A" \
    --teacher-symmetric --student default --epochs "$E" --batch-size 16 --lr 2e-5 --max-length 128 --device cpu \
    --no-progress --resume --out "$RUNS/dse-mrpc-a$A-ep$E$T"
done
