#!/usr/bin/env bash
# DSE students (after dse_teachers.sh): labels-only baseline (--alpha 0) and DSE (--alpha 0.5), cosine head,
# starting from the default model, on STS-B and MRPC; teacher score = mean of both orders; then DSE with
# teacher-labelled kNN pairs from the training sentences (--augment knn), DSE with the paper's MLP head; then the query-vs-1,000 speed ratio.
# TEACHER_TAG picks the teachers ($RUNS/teacher-{stsb,mrpc}$TEACHER_TAG), EPOCHS the student epochs.
#   TEACHER_TAG=-e4 nohup flock /tmp/pairsmith-cpu.lock bash bench/experiments/dse_students.sh > runs/dse_students-e4.log 2>&1 &
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
RUNS=${RUNS:-runs}
T=${TEACHER_TAG:-}
COMMON="--teacher-symmetric --student default --epochs ${EPOCHS:-1} --batch-size 16 --lr 2e-5 --max-length 128 --device cpu --no-progress --resume"
run() {  # run NAME ALPHA "stsb mrpc" [extra args]
  local name=$1 a=$2 sets=$3; shift 3
  for d in $sets; do
    case $d in
      stsb) $PS -v distill dse --teacher "$RUNS/teacher-stsb$T" --pairs stsb-train --dev stsb-dev --alpha "$a" \
              $COMMON "$@" --out "$RUNS/dse-stsb-$name$T" ;;
      mrpc) $PS -v distill dse --teacher "$RUNS/teacher-mrpc$T" --pairs mrpc-train --dev mrpc-val --test mrpc-test \
              --alpha "$a" $COMMON "$@" --out "$RUNS/dse-mrpc-$name$T" ;;
    esac
  done
}
run a0 0 "stsb mrpc"
run a0.5 0.5 "stsb mrpc"
# Silver pairs and the paper's MLP head only where the teacher beats the labels-only student (MRPC).
run a0.5-knn 0.5 "${EXTRA_SETS:-mrpc}" --augment knn --augment-k 1
run a0.5-mlp 0.5 "${EXTRA_SETS:-mrpc}" --head mlp   # rescoring head (no ANN index)
.venv/bin/python bench/distill_dse_speed.py --teacher "$RUNS/teacher-stsb$T" --student "$RUNS/dse-stsb-a0.5$T" \
  --candidates 1000 --repeats 3 --json "$RUNS/dse-speed$T.json"
