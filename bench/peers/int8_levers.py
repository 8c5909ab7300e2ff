"""Static int8 quality levers on the default model, measured one by one on this CPU.

For each lever the static int8 graph is rebuilt from the same fp32 export and scored on
the STS-B dev sentences (Spearman x100 and mean cosine to fp32); choices are made on dev
only, and the chosen settings are then scored on the held-out STS12-16 sets. Levers:

- per-layer sensitivity: each activation tensor's MatMuls kept fp32 alone (24 runs), ranked
  by mean cosine to fp32 on the *calibration* texts (what an export can see), then the
  top k kept fp32 together and scored on dev;
- activation ranges: min/max vs percentiles of all calibration values;
- per-tensor vs per-channel weight scales.

Writes ``bench/results/peers/int8_levers_<feature set>.json``.

    .venv/bin/python bench/peers/int8_levers.py
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from bench_common import machine_facts, machine_line  # noqa: E402


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def percentile_ranges(fp32: Path, tensors: list[str], spec, cal, pct: float, bins: int = 8192) -> dict:
    """(100 - pct, pct) percentiles of every value of each tensor over the calibration texts (each
    run alone), from a histogram over the min/max range: what clipping rare outliers would give."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from pairsmith.encoders.onnx_static import _feeds, activation_ranges

    full = activation_ranges(fp32, tensors, spec, cal)
    model = onnx.load(str(fp32))
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hist = {t: np.zeros(bins, dtype=np.int64) for t in tensors}
    for i in range(len(cal.texts)):
        for t, o in zip(tensors, sess.run(tensors, _feeds(spec, cal.texts, i)), strict=True):
            hist[t] += np.histogram(o, bins=bins, range=full[t])[0]
    out = {}
    for t in tensors:
        cdf = np.cumsum(hist[t]) / max(1, hist[t].sum())
        edges = np.linspace(full[t][0], full[t][1], bins + 1)
        lo = edges[int(np.searchsorted(cdf, 1.0 - pct / 100.0))]
        hi = edges[min(bins, int(np.searchsorted(cdf, pct / 100.0)) + 1)]
        out[t] = (float(lo), float(hi))
    return out


class Evaluator:
    def __init__(self, spec, fp32: Path, texts: list[str], threads: int = 2):
        self.spec, self.texts, self.threads = spec, texts, threads
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        self.order = order
        self.ref = self.embed(str(fp32))

    def session(self, model):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        data = model if isinstance(model, str) else model.SerializeToString()
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    def embed(self, model, texts: list[str] | None = None) -> np.ndarray:
        texts = texts or self.texts
        order = self.order if texts is self.texts else sorted(range(len(texts)), key=lambda i: len(texts[i]))
        sess = self.session(model)
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            enc = self.spec.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=self.spec.max_length)  # fmt: skip
            feeds = {n: np.asarray(enc[n], dtype=np.int64) for n in self.spec.input_names}
            v = sess.run([self.spec.primary_output], feeds)[0]
            if out.shape[1] != v.shape[1]:
                out = np.zeros((len(texts), v.shape[1]), dtype=np.float32)
            out[idx] = v
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--topk", default="1,2,4")
    ap.add_argument("--percentiles", default="99.99,99.999")
    ap.add_argument("--speed-texts", type=int, default=512)
    a = ap.parse_args()

    import onnx

    from pairsmith.distill.data import load_sts_set
    from pairsmith.distill.metrics import spearman
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
    from pairsmith.encoders.onnx_graphs import _build_bi
    from pairsmith.encoders.onnx_quant import _quantize_dynamic, detect_isa
    from pairsmith.encoders.onnx_static import (
        activation_ranges,
        freeze_scales,
        fuse_int8_matmuls,
        load_calibration,
    )
    from pairsmith.encoders.source import resolve_model

    facts = machine_facts()
    print(machine_line(facts), flush=True)
    isa = detect_isa()
    src = resolve_model("default")
    spec = _build_bi(src)
    fp32 = export_onnx("default", ExportConfig()).onnx_dir / "model.onnx"
    cal = load_calibration()
    dev = load_sts_set("stsb-dev")
    texts = list(dict.fromkeys(list(dev.s1) + list(dev.s2)))
    pos = {t: i for i, t in enumerate(texts)}
    i1, i2 = [pos[t] for t in dev.s1], [pos[t] for t in dev.s2]
    ev = Evaluator(spec, fp32, texts)
    cal_ev_texts = list(cal.texts)
    cal_ref = ev.embed(str(fp32), cal_ev_texts)

    def sp(vecs) -> float:
        v = unit(vecs)
        return round(spearman((v[i1] * v[i2]).sum(1), dev.scores), 3)

    def mcos(a_, b_) -> float:
        return round(float((unit(a_) * unit(b_)).sum(1).mean()), 5)

    fp32_sp = sp(ev.ref)
    print(f"fp32: dev {fp32_sp}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="pairsmith-levers-"))
    range_cache: dict = {}

    def build(exclude=(), method="minmax", pct=99.99, per_channel=True):
        dyn = tmp / "dyn.onnx"
        _quantize_dynamic(fp32, dyn, isa=isa, per_channel=per_channel, exclude=tuple(exclude))
        m = onnx.load(str(dyn))
        tensors = sorted({n.input[0] for n in m.graph.node if n.op_type == "DynamicQuantizeLinear"})
        key = (method, pct)
        if key not in range_cache:
            full = tmp / "dyn_full.onnx"
            _quantize_dynamic(fp32, full, isa=isa, per_channel=True)
            mf = onnx.load(str(full))
            all_t = sorted({n.input[0] for n in mf.graph.node if n.op_type == "DynamicQuantizeLinear"})
            range_cache[key] = (
                activation_ranges(fp32, all_t, spec, cal)
                if method == "minmax"
                else percentile_ranges(fp32, all_t, spec, cal, pct)
            )
        freeze_scales(m, {t: range_cache[key][t] for t in tensors})
        fuse_int8_matmuls(m)
        return m

    def score(m, label: str, **extra) -> dict:
        t = time.perf_counter()
        v = ev.embed(m)
        secs = time.perf_counter() - t
        row = {"label": label, "spearman_dev": sp(v), "loss_vs_fp32": round(fp32_sp - sp(v), 3),
               "mean_cos_dev": mcos(v, ev.ref), "encode_s": round(secs, 2), **extra}  # fmt: skip
        print(json.dumps(row), flush=True)
        return row

    rows = []
    base = build()
    rows.append(score(base, "static int8, min/max, per-channel (current)"))
    rows.append(score(build(per_channel=False), "static int8, min/max, per-tensor weights"))
    for p in [float(x) for x in a.percentiles.split(",")]:
        rows.append(score(build(method="percentile", pct=p), f"static int8, percentile {p}"))

    # Per-layer sensitivity: which MatMuls read each activation tensor.
    dyn_full = tmp / "dyn_full.onnx"
    mf = onnx.load(str(dyn_full))
    q_of = {n.output[0]: n.input[0] for n in mf.graph.node if n.op_type == "DynamicQuantizeLinear"}
    consumers: dict[str, list[str]] = {}
    for n in mf.graph.node:
        if n.op_type == "MatMulInteger":
            src_t = q_of.get(n.input[0])
            if src_t:
                consumers.setdefault(src_t, []).append(n.name.removesuffix("_quant"))
    sens = []
    for t, mms in sorted(consumers.items()):
        m = build(exclude=mms)
        r = {"tensor": t, "matmuls": mms, "mean_cos_calibration": mcos(ev.embed(m, cal_ev_texts), cal_ref)}
        print(json.dumps(r), flush=True)
        sens.append(r)
    base_cal = mcos(ev.embed(base, cal_ev_texts), cal_ref)
    ranked = sorted(sens, key=lambda r: -r["mean_cos_calibration"])
    topk_rows = []
    for k in [int(x) for x in a.topk.split(",")]:
        ex = [mm for r in ranked[:k] for mm in r["matmuls"]]
        topk_rows.append(score(build(exclude=ex), f"keep fp32: top {k} by calibration", k=k, matmuls=ex))

    # Speed of the candidates relative to the current graph (same session settings, interleaved).
    cands = {"current": base}
    for r in topk_rows:
        cands[f"top {r['k']}"] = build(exclude=r["matmuls"])
    speed = {k: [] for k in cands}
    sub = texts[: a.speed_texts]
    for _ in range(3):
        for k, m in cands.items():
            t = time.perf_counter()
            ev.embed(m, sub)
            speed[k].append(len(sub) / (time.perf_counter() - t))
    speed_med = {k: round(statistics.median(v), 1) for k, v in speed.items()}
    print(json.dumps(speed_med), flush=True)

    out = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "code": facts["code"],
        "machine": facts,
        "date": facts["date"],
        "shared_machine": "timed while other jobs may run on the same cores: compare ratios within this file",
        "fp32_spearman_dev": fp32_sp,
        "calibration": cal.manifest(),
        "current_mean_cos_calibration": base_cal,
        "levers": rows,
        "sensitivity": sens,
        "ranked_by_calibration": [r["tensor"] for r in ranked],
        "keep_fp32_topk": topk_rows,
        "speed_sent_per_s_dev_batch64_2threads": speed_med,
        "report": {
            "section": "CPU engines",
            "title": f"Static int8 quality levers, all-MiniLM-L6-v2 ({facts['feature_set']})",
            "columns": ["setting", "STS-B dev Spearman", "loss vs fp32", "mean cosine to fp32"],
            "rows": [["fp32", fp32_sp, 0.0, 1.0]]
            + [
                [r["label"], r["spearman_dev"], r["loss_vs_fp32"], r["mean_cos_dev"]]
                for r in rows + topk_rows
            ],
            "notes": "Each setting rebuilds the static int8 graph from the same fp32 export; chosen on STS-B dev.",
        },
    }
    dst = a.json or REPO / "bench" / "results" / "peers" / f"int8_levers_{facts['feature_set']}.json"
    from pairsmith.atomic import atomic_write_json

    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dst, out)
    print(f"written: {dst}")


if __name__ == "__main__":
    main()
