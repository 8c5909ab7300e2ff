"""Which static-int8 route, measured: onnxruntime quantize_static (QDQ) vs pairsmith's frozen scales.

Builds, from the default model's fp32 export, (a) onnxruntime's ``quantize_static``
in QDQ format (u8 activations, s8 per-channel weights, reduce_range, weight
MatMuls only, MatMul outputs not re-quantised) with the built-in calibration set,
and (b) what ``pairsmith export onnx --quantize int8-static`` writes (frozen
scales on the dynamic graph); then times both next to fp32 and dynamic int8 on
the STS-B dev sentences (median of ``--reps``), with STS-B dev Spearman, batch
drift and cosine to fp32. Optional OpenVINO rows run the same files there.

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/experiments/int8_static_routes.py --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import machine_line  # noqa: E402
from encode_bench import load_stsb_dev, spearman  # noqa: E402


def qdq_static(fp32: Path, out: Path, tokenizer, texts: tuple[str, ...]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            enc = tokenizer.encode(list(texts))
            self.it = iter([tokenizer.pad([enc.ids[i]], [enc.type_ids[i]]) for i in range(len(enc))])

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else b.feeds()

    m = onnx.load(str(fp32))
    inits = {i.name for i in m.graph.initializer}
    act = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] not in inits]
    quantize_static(
        str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        nodes_to_exclude=act, extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", default=os.environ.get("PAIRSMITH_DATA", "../shared/data"))
    args = ap.parse_args()
    import onnxruntime as ort

    from pairsmith.encoders import BiEncoder
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
    from pairsmith.encoders.onnx_runtime import session_options
    from pairsmith.encoders.onnx_static import load_calibration
    from pairsmith.encoders.runtime import RunnerBackend

    export_onnx("default", ExportConfig(quantize="int8-dynamic"))
    res = export_onnx("default", ExportConfig(quantize="int8-static"))
    d = res.onnx_dir
    base = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="fp32")
    qdq = d / "experiment_qdq_static.onnx"
    if not qdq.exists():
        qdq_static(d / "model.onnx", qdq, base.tokenizer, load_calibration().texts)
    files = {
        "onnx fp32": d / "model.onnx",
        "onnx int8 dynamic": next(d.glob("model_qint8_[a-z]*.onnx")),
        "onnx int8 static, quantize_static QDQ": qdq,
        "onnx int8 static, frozen scales (pairsmith)": next(d.glob("model_qint8_static_*.onnx")),
    }

    class Runner:
        def __init__(self, path: Path) -> None:
            self.s = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.s.get_inputs()]

        def run(self, batch):
            feeds = {k: v for k, v in batch.feeds().items() if k in self.input_names}
            return self.s.run(["sentence_embedding"], feeds)[0]

    gold, a, b = load_stsb_dev(Path(args.data))
    texts = a + b
    encs = {}
    for name, path in files.items():
        enc = BiEncoder.load("default", device="cpu", backend="onnx", onnx_variant="fp32")
        old = enc.pipeline.backend
        enc.pipeline.backend = RunnerBackend(Runner(path), old.kind, normalizes=old.normalizes)
        enc.encode(texts[:64])
        encs[name] = enc
    speed: dict[str, list[float]] = {k: [] for k in encs}
    vecs = {}
    for _ in range(args.reps):
        for name, enc in encs.items():
            t = time.perf_counter()
            vecs[name] = enc.encode(texts).vectors
            speed[name].append(len(texts) / (time.perf_counter() - t))
    print(f"machine: {machine_line()}")
    print(
        "| route | sentences/s (median) | runs | STS-B dev Spearman | cosine to fp32 mean / min | max drift alone vs batch |"
    )
    print("|---|---|---|---|---|---|")
    ref = vecs["onnx fp32"]
    for name, enc in encs.items():
        probe = texts[:40]
        alone = np.stack([enc.encode([t]).vectors[0] for t in probe])
        drift = float(np.abs(alone - enc.encode(probe).vectors).max())
        cos = (vecs[name] * ref).sum(1)
        runs = ", ".join(f"{r:.0f}" for r in speed[name])
        print(f"| {name} | {statistics.median(speed[name]):.0f} | {runs} | {spearman(vecs[name], len(a), gold):.2f} | "
              f"{cos.mean():.4f} / {cos.min():.4f} | {drift:.1e} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
