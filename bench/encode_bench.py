"""Encode throughput: sentence-transformers vs pairsmith torch vs pairsmith ONNX (fp32, int8).

Sentences/s on the STS-B dev sentences (both sides, 3,000 texts, tokenisation
included), all variants in one process, interleaved per repetition, median of
``--reps``; ratios against sentence-transformers' default ``encode``; STS-B dev
Spearman (cosine, x100) of each variant from the same embeddings. Then
cross-encoder pairs/s on the STS-B dev pairs (a fresh head on the default
model: speed and parity only, its scores mean nothing).

Run it alone on the machine (the CPU is shared)::

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/encode_bench.py --reps 3 --json runs/encode_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def load_stsb_dev(data: Path) -> tuple[np.ndarray, list[str], list[str]]:
    from pairsmith.distill.data import load_sts_set

    dev = load_sts_set("stsb-dev", root=data)
    return np.asarray(dev.scores, dtype=np.float64), list(dev.s1), list(dev.s2)


def spearman(vecs: np.ndarray, n: int, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    v = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return float(100 * spearmanr((v[:n] * v[n:]).sum(1), gold).statistic)


def machine() -> dict:
    model = platform.processor()
    flags: set[str] = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    import onnxruntime
    import torch

    from pairsmith.encoders.onnx_runtime import physical_cores

    return {
        "cpu": model,
        "isa": isa,
        "cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def timed(fn, reps_out: list[float], n: int):
    t = time.perf_counter()
    res = fn()
    reps_out.append(n / (time.perf_counter() - t))
    return res


ONNX_VARIANTS = (("pairsmith onnx fp32", "fp32"), ("pairsmith onnx int8", "int8"))


def openvino_encoder(model: str):
    """Exploratory: the exported fp32 graph on OpenVINO (not a pairsmith dependency), if importable."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from pairsmith.encoders import BiEncoder
    from pairsmith.encoders.onnx_export import find_export

    enc = BiEncoder.load(model, device="cpu")
    compiled = ov.Core().compile_model(
        str(find_export(enc.source) / "model.onnx"), "CPU", {"PERFORMANCE_HINT": "LATENCY"}
    )
    out = compiled.output("sentence_embedding")

    class OVRunner:
        precision = str(compiled.get_property("INFERENCE_PRECISION_HINT")).split("'")[1]

        def __init__(self) -> None:
            self.req = compiled.create_infer_request()

        def run(self, batch):
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            if batch.token_type_ids is not None:
                feeds["token_type_ids"] = batch.token_type_ids
            return self.req.infer(feeds)[out]

    from pairsmith.encoders.runtime import RunnerBackend

    old = enc.pipeline.backend
    enc.pipeline.backend = RunnerBackend(OVRunner(), old.kind, normalizes=old.normalizes)
    return enc


def bench_bi(args, gold, a, b) -> dict:
    from pairsmith.encoders import BiEncoder
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    texts = a + b
    n = len(texts)
    export_onnx(args.model, ExportConfig(quantize="int8"))
    st_enc = BiEncoder.load(args.model, device="cpu")
    st = st_enc.st_model  # sentence-transformers' own SentenceTransformer: the baseline
    variants = {
        "sentence-transformers encode (baseline)": lambda: st.encode(texts, show_progress_bar=False),
        "pairsmith torch": lambda: st_enc.encode(texts, batch_size=args.batch_size).vectors,
    }
    for name, v in ONNX_VARIANTS:
        enc = BiEncoder.load(args.model, device="cpu", backend="onnx", onnx_variant=v)
        enc.encode(texts[:64])  # warm-up: first-call allocations
        variants[name] = lambda enc=enc: enc.encode(texts, batch_size=args.batch_size).vectors
    warm = texts[:64]
    st.encode(warm, show_progress_bar=False)
    st_enc.encode(warm)
    ov = openvino_encoder(args.model)
    if ov is not None:
        ov.encode(texts[:64])
        variants[f"openvino {ov.pipeline.backend.runner.precision} on model.onnx (exploratory)"] = lambda: (
            ov.encode(texts, batch_size=args.batch_size).vectors
        )
    speed: dict[str, list[float]] = {k: [] for k in variants}
    quality: dict[str, float] = {}
    for rep in range(args.reps):
        for name, fn in variants.items():
            vecs = timed(fn, speed[name], n)
            quality[name] = spearman(np.asarray(vecs, dtype=np.float32), len(a), gold)
        print(
            f"  rep {rep + 1}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.0f}" for k, v in speed.items()),
            flush=True,
        )
    return {"n": n, "speed": speed, "spearman": quality}


def bench_cross(args, a, b) -> dict:
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from pairsmith.encoders import Activation, CrossEncoder
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    pairs = list(zip(a, b, strict=True))
    n = len(pairs)
    with tempfile.TemporaryDirectory(prefix="pairsmith-bench-ce-") as tmp:
        CrossEncoder.from_backbone(args.model, device="cpu", seed=0).save(tmp)
        export_onnx(tmp, ExportConfig(quantize="int8"))
        st = STCrossEncoder(tmp, device="cpu", local_files_only=True)
        torch_ce = CrossEncoder.load(tmp, device="cpu")
        onnx = {
            name: CrossEncoder.load(tmp, device="cpu", backend="onnx", onnx_variant=v)
            for name, v in ONNX_VARIANTS
        }
        raw = Activation.RAW
        bs = args.batch_size
        variants = {
            # Its defaults (sigmoid on); the logit is recovered below for the parity column.
            "sentence-transformers predict (baseline)": lambda: _logit(
                st.predict(pairs, show_progress_bar=False)
            ),
            "pairsmith torch": lambda: torch_ce.score(pairs, activation=raw, batch_size=bs).values,
        }
        for name, ce in onnx.items():
            variants[name] = lambda ce=ce: ce.score(pairs, activation=raw, batch_size=bs).values
        # warm-up
        st.predict(pairs[:32], show_progress_bar=False)
        torch_ce.score(pairs[:32])
        for ce in onnx.values():
            ce.score(pairs[:32])
        speed: dict[str, list[float]] = {k: [] for k in variants}
        logits: dict[str, np.ndarray] = {}
        for rep in range(args.reps):
            for name, fn in variants.items():
                logits[name] = np.asarray(timed(fn, speed[name], n), dtype=np.float32).reshape(-1)
            print(
                f"  rep {rep + 1}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.0f}" for k, v in speed.items()),
                flush=True,
            )
    ref = logits["pairsmith torch"]
    diff = {k: float(np.abs(v - ref).max()) for k, v in logits.items()}
    return {"n": n, "speed": speed, "max_abs_logit_diff_vs_torch": diff}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def report(title: str, res: dict, unit: str, extra_key: str, extra_fmt: str) -> list[str]:
    speed = res["speed"]
    base_name = next(iter(speed))
    base = statistics.median(speed[base_name])
    lines = [f"{title} ({res['n']} items, median of {len(speed[base_name])} reps)", ""]
    lines.append(f"| variant | {unit} (median) | runs | x baseline | {extra_key} |")
    lines.append("|---|---|---|---|---|")
    for name, runs in speed.items():
        med = statistics.median(runs)
        extra = res.get("spearman", res.get("max_abs_logit_diff_vs_torch"))[name]
        runs_s = ", ".join(f"{r:.0f}" for r in runs)
        lines.append(f"| {name} | {med:.0f} | {runs_s} | {med / base:.2f}x | {extra:{extra_fmt}} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument(
        "--data",
        default=os.environ.get(
            "PAIRSMITH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")
        ),
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--batch-size", type=int, default=32, help="pairsmith batch size (baseline keeps its default, 32)"
    )
    p.add_argument("--limit", type=int, default=None, help="first N pairs only (smoke runs)")
    p.add_argument("--skip-cross", action="store_true")
    p.add_argument("--json", default=None, help="write raw figures here")
    args = p.parse_args(argv)
    if args.reps < 3:
        print("note: fewer than 3 repetitions; medians are fragile on a shared machine", file=sys.stderr)
    gold, a, b = load_stsb_dev(Path(args.data))
    if args.limit:
        gold, a, b = gold[: args.limit], a[: args.limit], b[: args.limit]
    info = machine()
    print(f"machine: {info}", flush=True)
    out = {"machine": info, "args": vars(args)}
    print("bi-encoder:", flush=True)
    out["bi"] = bench_bi(args, gold, a, b)
    lines = report("Bi-encoder sentences/s, STS-B dev", out["bi"], "sentences/s", "STS-B dev Spearman", ".2f")
    if not args.skip_cross:
        print("cross-encoder:", flush=True)
        out["cross"] = bench_cross(args, a, b)
        lines += [""] + report(
            "Cross-encoder pairs/s, STS-B dev pairs", out["cross"], "pairs/s", "max |logit - torch|", ".1e"
        )
    print("\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**out, "table": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
