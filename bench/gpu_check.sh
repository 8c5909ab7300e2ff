#!/usr/bin/env bash
# GPU check (one short run, < 5 minutes): torch fp16 vs ONNX fp16 (CUDA EP, IO binding) throughput
# for the default bi-encoder, plus parity of both against torch fp32 on the GPU; then pairsmith's
# gRPC server on CUDA (Embed at 16 clients x 8 texts vs in-process on the same GPU engine) and
# FAISS flat search on the GPU vs the CPU when faiss has GPU support. Not yet run on a GPU machine
# in this form (the serve and FAISS parts are new).
#
# Needs on the GPU machine: a CUDA build of torch and onnxruntime-gpu (pip install -e ".[gpu]"),
# the default model package, and optionally the STS-B data (PAIRSMITH_DATA); without the data it
# encodes generated sentences of varied length. Parts whose prerequisites are missing are skipped
# with a message, never faked. Run from the repo root:
#   bash bench/gpu_check.sh [PYTHON]          # results also written to ${OUT:-runs}/gpu_check.json
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-${PYTHON:-.venv/bin/python}}
OUT=${OUT:-runs}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PAIRSMITH_CACHE=${PAIRSMITH_CACHE:-$(mktemp -d /tmp/pairsmith-gpu-XXXX)}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"

timeout 280 "$PY" - "$OUT/gpu_check.json" <<'EOF'
import json, os, statistics, sys, time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

out_path = sys.argv[1]
res = {"torch": torch.__version__, "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
       "cuda_torch": torch.cuda.is_available()}
print(json.dumps(res))
if torch.cuda.is_available():
    res["gpu"] = torch.cuda.get_device_name(0)

from pairsmith.encoders import BiEncoder
from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

data = Path(os.environ.get("PAIRSMITH_DATA", "../shared/data")) / "sts/stsbenchmark/sts-dev.csv"
if data.exists():
    rows = [l.rstrip("\n").split("\t") for l in open(data, encoding="utf-8")]
    texts = [r[5] for r in rows] + [r[6] for r in rows]
    res["texts"] = "STS-B dev (3000 sentences)"
else:
    rng = np.random.default_rng(0)
    words = "the a man woman dog cat plays runs quickly over under river market rises falls guitar city night".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(3000)]
    res["texts"] = "generated (3000 sentences, 3-40 words)"
texts = texts * 4  # 12,000 texts: long enough to time a GPU

if "CUDAExecutionProvider" in ort.get_available_providers():  # the fp16 graph is for the CUDA EP only
    t = time.time()
    export_onnx("default", ExportConfig(fp16=True))
    res["export_s"] = round(time.time() - t, 1)

def bench(fn, reps=3):
    fn(texts[:256])  # warm-up (CUDA context, kernels, arena)
    speeds = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        v = fn(texts)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        speeds.append(len(texts) / (time.perf_counter() - t))
    return statistics.median(speeds), speeds, v

variants, ref = {}, None
for bs in (64, 256):
    if torch.cuda.is_available():
        enc = BiEncoder.load("default", device="cuda", backend="torch")
        med, runs, v32 = bench(lambda x: enc.encode(x, batch_size=bs).vectors)
        variants[f"torch fp32 bs{bs}"] = (med, runs)
        ref = v32 if ref is None else ref
        enc.st_model.half()
        med, runs, v16 = bench(lambda x: enc.encode(x, batch_size=bs).vectors)
        variants[f"torch fp16 bs{bs}"] = (med, runs, float(np.einsum("nd,nd->n", v16, ref).min()))
    else:
        print("skip torch: this torch build has no CUDA")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        from pairsmith.encoders.onnx_runtime import load_onnx_runner

        for v in ("fp16", "fp32"):
            # Load on CPU, then give it a CUDA runner: works even where torch itself is a CPU build.
            enc = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="fp32")
            enc.runner = load_onnx_runner(enc.source, "bi", v, "cuda")
            assert enc.runner.on_gpu, "onnx runner did not get the CUDA provider"
            med, runs, vv = bench(lambda x: enc.encode(x, batch_size=bs).vectors)
            cos = float(np.einsum("nd,nd->n", vv, ref).min()) if ref is not None else None
            variants[f"onnx {v} bs{bs}"] = (med, runs, cos)
    else:
        res["onnx_cuda"] = "skipped: onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed here)"
        print("skip onnx: onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")

res["variants"] = {k: {"sent_per_s": round(v[0]), "runs": [round(x) for x in v[1]],
                       "min_cos_vs_torch_fp32": (v[2] if len(v) > 2 else 1.0)} for k, v in variants.items()}
for k, v in res["variants"].items():
    print(f"{k:22s} {v['sent_per_s']:8d} sent/s  runs {v['runs']}  min cos vs torch fp32 {v['min_cos_vs_torch_fp32']}")
Path(out_path).write_text(json.dumps(res, indent=2))
print("written", out_path)
EOF

# gRPC Embed on CUDA (torch engine) vs in-process on the same GPU engine, same run.
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout "${T_SERVE:-150}" "$PY" "$ROOT/bench/serve_bench.py" --backend torch --device cuda --peer none \
    --repeats 3 --texts 2048 --loads 16x8,8x64 --out "$OUT/serve_cuda.json" || echo "serve on CUDA: rc=$?"
else
  echo "skip gRPC on CUDA: this torch build has no CUDA"
fi

# FAISS: the same flat inner-product search on the GPU and on the CPU (random unit vectors: speed only).
timeout "${T_FAISS:-90}" "$PY" - "$OUT/faiss_gpu.json" <<'EOF' || echo "faiss check: rc=$?"
import json, sys, time

import numpy as np

try:
    import faiss
except ImportError:
    print("skip faiss: not installed")
    sys.exit(0)
res = {"faiss": faiss.__version__, "gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0}
rng = np.random.default_rng(0)
xb = rng.standard_normal((200_000, 384)).astype("float32")
xq = rng.standard_normal((1_000, 384)).astype("float32")
faiss.normalize_L2(xb)
faiss.normalize_L2(xq)
cpu = faiss.IndexFlatIP(384)
cpu.add(xb)


def qps(index):
    index.search(xq[:10], 10)
    t = time.perf_counter()
    _, ids = index.search(xq, 10)
    return len(xq) / (time.perf_counter() - t), ids


res["cpu_flat_qps"], ref = qps(cpu)
if res["gpus"] > 0:
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    res["gpu_flat_qps"], got = qps(gpu)
    res["gpu_vs_cpu"] = res["gpu_flat_qps"] / res["cpu_flat_qps"]
    res["top10_agreement"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref, got)]))
else:
    res["gpu"] = "skipped: this faiss build has no GPU support (faiss-gpu not installed)"
print(json.dumps(res))
open(sys.argv[1], "w").write(json.dumps(res, indent=2))
EOF
