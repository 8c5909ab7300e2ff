#!/usr/bin/env bash
# Byte2Word vs the WordPiece baseline (same size, corpus, steps, batch, optimiser).
# Usage: bench/byte2word_experiment.sh OUTDIR [SEED] [MLM_STEPS] [FT_STEPS]
# Builds the MLM corpus from the shared data into OUTDIR (never into the repository), then trains
# both models with nice -n 19 and one thread each (the box is shared), side by side; SEQUENTIAL=1
# runs them one after the other (one training at a time); EXTRA="--ft-lr 1e-3" passes more options.
# Results: OUTDIR/{bytes,wordpiece}-s$SEED/report.json; summarise with bench/byte2word_report.py.
set -euo pipefail
OUT=${1:?OUTDIR}; SEED=${2:-0}; MLM=${3:-400}; FT=${4:-800}
PS=${PAIRSMITH:-.venv/bin/pairsmith}
mkdir -p "$OUT"
[ -s "$OUT/corpus.txt" ] || $PS train byte2word-corpus --out "$OUT/corpus.txt"
for unit in bytes wordpiece; do
  OMP_NUM_THREADS=1 nice -n 19 $PS train byte2word --mlm-corpus "$OUT/corpus.txt" --task sst2 \
    --config small --tokenizer "$unit" --max-steps "$MLM" --ft-steps "$FT" --seed "$SEED" --threads 1 \
    ${EXTRA:-} --out "$OUT/$unit-s$SEED" > "$OUT/$unit-s$SEED.log" 2>&1 &
  if [ "${SEQUENTIAL:-0}" = 1 ]; then wait; fi
done
wait
