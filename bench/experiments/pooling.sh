#!/usr/bin/env bash
# Multi-layer vs last-layer vs mean pooling: the default model fine-tuned on the same
# STS-B train subset with cosine regression, same budget, final weights (no checkpoint selection),
# seeds x variants; then STS-B dev, SICK-R dev (Spearman x100) and WikiQA dev MAP per run.
# Long job on a shared 2-core box: nice, one thread, no lock; a finished step is skipped.
#   setsid nohup bash bench/experiments/pooling.sh > runs/pooling/log.txt 2>&1 &
# Then: .venv/bin/python bench/pooling_report.py runs/pooling
set -uo pipefail
R=${RUNS:-runs}/pooling
PAIRS=${PAIRS:-1500}          # STS-B train pairs per run (subset drawn by the seed: same for every variant)
SEEDS=${SEEDS:-"1 2 3"}
VARIANTS=${VARIANTS:-"mean multi-layer last-layer"}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
PS=".venv/bin/pairsmith"
mkdir -p "$R"
for seed in $SEEDS; do
  for v in $VARIANTS; do
    d="$R/$v-s$seed"
    pool="$v" extra=""
    if [ "$v" = multi-layer-paper ]; then pool=multi-layer extra=--no-residual; fi  # the paper's output form
    if [ ! -f "$d/report.json" ]; then
      echo "$(date -u +%FT%TZ) train $d"
      nice -n 19 $PS train embedding --model default --pooling "$pool" $extra --data stsb-train --max-pairs "$PAIRS" \
        --epochs 1 --batch-size 32 --lr 2e-5 --pooler-lr 1e-3 --max-length 64 --seed "$seed" \
        --threads 1 --no-progress --out "$d" >> "$d.log" 2>&1 || { echo "train failed: $d"; continue; }
    fi
    [ -f "$d/sts.json" ] || nice -n 19 $PS eval sts --model "$d/model" --sets stsb-dev,sickr-dev \
      --device cpu --json "$d/sts.json" >> "$d.log" 2>&1 || echo "sts eval failed: $d"
    [ -f "$d/wikiqa.json" ] || nice -n 19 $PS eval rerank --model "$d/model" --dataset wikiqa-dev \
      --device cpu --json "$d/wikiqa.json" >> "$d.log" 2>&1 || echo "wikiqa eval failed: $d"
    echo "$(date -u +%FT%TZ) done $d"
  done
done
