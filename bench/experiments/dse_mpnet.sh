#!/usr/bin/env bash
# DSE on STS-B with the mpnet teacher, several seeds, selection on a held-out split of STS-B
# train (bench/experiments/stsb_split.py) so that STS-B dev is a reported column only ("test" row).
# TEACHER (a train cross-encoder --out), SEEDS, ALPHAS, EPOCHS, DEVICE, TAG. The teacher cache of the
# first run is copied into the others (same teacher fingerprint: scored once).
#   OMP_NUM_THREADS=1 TEACHER=runs/teacher-mpnet-stsb-cpu1 SEEDS="2021 2022 2023" nohup nice -n 19 \
#     bash bench/experiments/dse_mpnet.sh > runs/dse-mpnet.log 2>&1 &
# GPU: DEVICE=cuda EPOCHS=4 TEACHER=runs/teacher-mpnet-stsb SEEDS="2021 2022 2023 2024 2025" bash bench/experiments/dse_mpnet.sh
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
TEACHER=${TEACHER:?give TEACHER=runs/teacher-mpnet-stsb...}
SEEDS=${SEEDS:-2021 2022 2023}
ALPHAS=${ALPHAS:-0.5 0}
EPOCHS=${EPOCHS:-1}
DEVICE=${DEVICE:-cpu}
TAG=${TAG:-}
[ -f "$RUNS/stsb-split/fit.tsv" ] || $PY bench/experiments/stsb_split.py --out "$RUNS/stsb-split"
first=""
for seed in $SEEDS; do
  for a in $ALPHAS; do
    out="$RUNS/dse-mpnet-stsb-a$a-s$seed$TAG"
    if [ -n "$first" ] && [ ! -e "$out/teacher_cache.npz" ]; then
      mkdir -p "$out" && cp "$first/teacher_cache.npz" "$first/teacher_cache.json" "$out/"
    fi
    $PS -v distill dse --teacher "$TEACHER" --student default --pairs "$RUNS/stsb-split/fit.tsv" --score-range 0,5 \
      --dev "$RUNS/stsb-split/select.tsv" --test stsb-dev --alpha "$a" --epochs "$EPOCHS" --batch-size 16 \
      --lr 2e-5 --max-length 128 --seed "$seed" --device "$DEVICE" --no-progress --out "$out" --resume
    [ -z "$first" ] && [ -e "$out/teacher_cache.npz" ] && first="$out"
  done
done
