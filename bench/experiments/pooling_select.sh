#!/usr/bin/env bash
# Pooler settings for multi-layer pooling, chosen on a held-out split of STS-B *train* (never on the dev sets that
# are reported): fit on runs/stsb-split/fit.tsv (5,203 pairs), score Spearman on select.tsv (500 pairs).
# One line per variant: NAME|train-embedding options. Long job: nice, one thread per run, PAR runs at once.
#   setsid nohup bash bench/experiments/pooling_select.sh > runs/pooling-select/log.txt 2>&1 &
# Then: grep -h . runs/pooling-select/*/select.json
set -uo pipefail
RUNS=${RUNS:-runs}
R=$RUNS/pooling-select
SEED=${SEED:-1}
PAR=${PAR:-2}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
PS=".venv/bin/pairsmith"
VARIANTS=${VARIANTS:-"mean|--pooling mean
ml-lr1e-3|--pooling multi-layer --pooler-lr 1e-3
ml-lr3e-3|--pooling multi-layer --pooler-lr 3e-3
ml-lr1e-2|--pooling multi-layer --pooler-lr 1e-2"}
[ -f "$RUNS/stsb-split/fit.tsv" ] || .venv/bin/python bench/experiments/stsb_split.py --out "$RUNS/stsb-split"
mkdir -p "$R"
one() {
  local name=$1 opts=$2 d="$R/$1-s$SEED"
  if [ ! -f "$d/report.json" ]; then
    echo "$(date -u +%FT%TZ) train $d ($opts)"
    # shellcheck disable=SC2086
    nice -n 19 $PS train embedding --model default $opts --data "$RUNS/stsb-split/fit.tsv" --score-range 0,5 \
      --epochs 1 --batch-size 32 --lr 2e-5 --max-length 64 --seed "$SEED" --threads 1 --no-progress \
      --out "$d" >> "$d.log" 2>&1 || { echo "train failed: $d"; return; }
  fi
  [ -f "$d/select.json" ] || nice -n 19 $PS eval sts --model "$d/model" --sets "$RUNS/stsb-split/select.tsv" \
    --device cpu --json "$d/select.json" >> "$d.log" 2>&1 || echo "eval failed: $d"
  echo "$(date -u +%FT%TZ) done $d"
}
while IFS='|' read -r name opts; do
  [ -n "$name" ] || continue
  one "$name" "$opts" &
  while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do sleep 5; done
done <<< "$VARIANTS"
wait
