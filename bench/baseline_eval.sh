#!/usr/bin/env bash
# Baseline figures of the default model on STS (7 tasks), NFCorpus dev,
# WikiQA dev and DailyDialog++ dev. Writes JSON to ${OUT:-runs/baseline}/.
set -euo pipefail
OUT=${OUT:-runs/baseline}
MODEL=${MODEL:-default}
PS=${PAIRSMITH:-.venv/bin/pairsmith}
mkdir -p "$OUT"
$PS eval sts --model "$MODEL" --json "$OUT/sts7.json"
$PS eval rerank --model "$MODEL" --dataset nfcorpus-dev --json "$OUT/nfcorpus.json"
$PS eval rerank --model "$MODEL" --dataset wikiqa-dev --json "$OUT/wikiqa.json"
$PS eval rerank --model "$MODEL" --dataset trecqa-dev --json "$OUT/trecqa.json"
$PS eval response --model "$MODEL" --dataset dailydialog-dev --json "$OUT/dailydialog.json"
