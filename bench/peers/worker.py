"""One contender in its own process and environment: load, warm, then answer timing requests.

Runs under a peer's virtual environment (``envs.py``) or pairsmith's own, so it imports
nothing from pairsmith at module level: only the standard library and numpy. The driver
(``run.py``) talks to it over stdin/stdout, one JSON object per line:

    {"op": "encode", "texts": FILE, "batch": 32, "out": NPY or null} -> {"seconds": s}
    {"op": "latency", "texts": FILE, "n": 200}                      -> {"ms": [...]}
    {"op": "quit"}

``FILE`` is a JSON list of strings written by the driver; ``NPY`` receives the vectors
(float32, as the contender returns them; the driver normalises).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("INFINITY_ANONYMOUS_USAGE_STATS", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np  # noqa: E402

WARM_TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn.",
    "Stocks rallied for three months in anticipation of a rebound in the second half of the year.",
] * 22


def _copy_model(src: Path, dst: Path) -> Path:
    """A writable copy of the model directory (peers write their exports next to the weights)."""
    if not (dst / "config.json").exists():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("onnx", "openvino", "*.onnx"))
        tmp.replace(dst)
    return dst


def _torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# -- contenders: each returns encode(texts, batch) -> np.ndarray --------------------------------------


def st_torch(model: Path, art: Path, threads: int, isa: str):
    from sentence_transformers import SentenceTransformer

    _torch_threads(threads)
    m = SentenceTransformer(str(model), device="cpu", local_files_only=True)
    return lambda texts, b: m.encode(texts, batch_size=b, convert_to_numpy=True, show_progress_bar=False)


def st_onnx_int8_file(model: Path, art: Path, isa: str) -> Path:
    """sentence-transformers' own export + dynamic int8 for ``isa`` (its helper), made once."""
    d = _copy_model(model, art / "st-onnx-model")
    found = _int8_file(d, isa)
    if found is None:
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

        m = SentenceTransformer(str(d), device="cpu", backend="onnx", local_files_only=True)
        m.save_pretrained(str(d))  # writes onnx/model.onnx
        export_dynamic_quantized_onnx_model(m, isa, str(d))
        found = _int8_file(d, isa)
    if found is None:
        raise SystemExit(f"st-onnx: no int8 file for {isa} in {d / 'onnx'}")
    return found


def _int8_file(d: Path, isa: str) -> Path | None:
    """sentence-transformers names it by weight type: model_quint8_avx2.onnx, model_qint8_avx512_vnni.onnx."""
    hits = sorted((d / "onnx").glob(f"model_q*int8_{isa}.onnx"))
    return hits[0] if hits else None


def st_onnx_int8(model: Path, art: Path, threads: int, isa: str):
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    q = st_onnx_int8_file(model, art, isa)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    kw = {"file_name": f"onnx/{q.name}", "provider": "CPUExecutionProvider", "session_options": so}
    m = SentenceTransformer(str(q.parent.parent), device="cpu", backend="onnx", model_kwargs=kw)
    return lambda texts, b: m.encode(texts, batch_size=b, convert_to_numpy=True, show_progress_bar=False)


def st_openvino_int8(model: Path, art: Path, threads: int, isa: str):
    """sentence-transformers' static int8 OpenVINO export, calibrated offline from a local folder.

    The folder holds pairsmith's built-in calibration sentences (one per line, written by the
    driver); ``datasets`` reads a folder of .txt files as one ``text`` column, split ``train``.
    """
    from sentence_transformers import SentenceTransformer

    d = _copy_model(model, art / "st-openvino-model")
    xml = d / "openvino" / "openvino_model_qint8_quantized.xml"
    if not xml.exists():
        from optimum.intel import OVQuantizationConfig
        from sentence_transformers import export_static_quantized_openvino_model

        cal = art / "ov-calibration"
        cal.mkdir(exist_ok=True)
        shutil.copy(art / "calibration.txt", cal / "calibration.txt")
        had_ir = (d / "openvino" / "openvino_model.xml").exists()
        m = SentenceTransformer(str(d), device="cpu", backend="openvino", local_files_only=True)
        if not had_ir:  # saving over the IR it was loaded from would corrupt it
            m.save_pretrained(str(d))
        export_static_quantized_openvino_model(
            m,
            OVQuantizationConfig(),
            str(d),
            dataset_name=str(cal),
            dataset_config_name="default",
            dataset_split="train",
            column_name="text",
        )
    kw = {
        "file_name": "openvino/openvino_model_qint8_quantized.xml",
        "ov_config": {"INFERENCE_NUM_THREADS": threads},
    }
    m = SentenceTransformer(str(d), device="cpu", backend="openvino", model_kwargs=kw, local_files_only=True)
    return lambda texts, b: m.encode(texts, batch_size=b, convert_to_numpy=True, show_progress_bar=False)


def fastembed_int8(model: Path, art: Path, threads: int, isa: str):
    """fastembed on sentence-transformers' int8 file (made by the st-onnx contender first)."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    d = art / "st-onnx-model"
    q = _int8_file(d, isa)
    if q is None:
        raise SystemExit(f"fastembed: no int8 file in {d / 'onnx'} (the st-onnx contender makes it)")
    name = "pairsmith-bench/all-MiniLM-L6-v2-int8"
    try:
        TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"),
            dim=384,
            model_file=f"onnx/{q.name}",
        )
    except ValueError:
        pass  # registered already
    m = TextEmbedding(
        model_name=name, specific_model_path=str(d), threads=threads, cache_dir=str(art / "fastembed")
    )
    return lambda texts, b: np.stack(list(m.embed(texts, batch_size=b)))


def infinity_optimum_int8(model: Path, art: Path, threads: int, isa: str):
    """infinity-emb's optimum engine on the int8 file (run from the model folder; the file name must
    contain 'quantize', else it picks another ONNX file)."""
    import asyncio

    # Its own hub cache: optimum's optimised copies are cached per provider and *relative model
    # path* ("."), so another model's copy could be picked up from a shared cache.
    os.environ["HF_HUB_CACHE"] = str(art / "infinity-hub-cache")
    if os.environ.get("PAIRSMITH_INFINITY_OPTIMIZE", "1") == "0":  # infinity's default: optimise
        os.environ["INFINITY_ONNX_DISABLE_OPTIMIZE"] = "1"
    from infinity_emb import AsyncEmbeddingEngine, EngineArgs

    src = _int8_file(art / "st-onnx-model", isa)
    if src is None:
        raise SystemExit("infinity: no int8 file in st-onnx-model/onnx (the st-onnx contender makes it)")
    d = _copy_model(model, art / "infinity-model")
    dst = d / "model_quantized.onnx"  # at the top: optimum matches the name against files found there
    if not dst.exists():
        shutil.copy(src, dst)
    os.chdir(d)  # it hands optimum the file's path relative to the working folder: run from the model
    args = EngineArgs(
        model_name_or_path=".",
        engine="optimum",
        device="cpu",
        pooling_method="mean",
        batch_size=32,
        bettertransformer=False,
        model_warmup=False,
    )
    engine = AsyncEmbeddingEngine.from_args(args)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.astart())

    def enc(texts, b):
        out = []
        for i in range(0, len(texts), b):
            vecs, _ = loop.run_until_complete(engine.embed(sentences=texts[i : i + b]))
            out.extend(vecs)
        return np.asarray(out, dtype=np.float32)

    return enc


def _pairsmith(backend: str, variant: str | None):
    def make(model: Path, art: Path, threads: int, isa: str):
        from pairsmith.encoders import BiEncoder

        _torch_threads(threads)
        kw = {"backend": backend}
        if backend == "onnx":
            kw.update(onnx_variant=variant, streams=None if threads > 1 else 1)
        enc = BiEncoder.load(str(model), device="cpu", **kw)
        return lambda texts, b: enc.encode(texts, batch_size=b, normalize=False).vectors

    return make


CONTENDERS = {
    "st-torch": st_torch,
    "st-onnx-int8": st_onnx_int8,
    "st-openvino-int8": st_openvino_int8,
    "fastembed-int8": fastembed_int8,
    "infinity-optimum-int8": infinity_optimum_int8,
    "pairsmith-torch": _pairsmith("torch", None),
    "pairsmith-onnx-fp32": _pairsmith("onnx", "fp32"),
    "pairsmith-onnx-int8": _pairsmith("onnx", "int8-static"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contender", required=True, choices=sorted(CONTENDERS))
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--artifacts", required=True, type=Path)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--isa", default="avx2")
    ap.add_argument("--prepare-only", action="store_true")
    a = ap.parse_args()
    a.artifacts.mkdir(parents=True, exist_ok=True)
    # The protocol gets its own copy of stdout; everything else written to stdout (library progress
    # bars, e.g. NNCF's during OpenVINO calibration, and C-level prints) goes to stderr, the log.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    t0 = time.perf_counter()
    encode = CONTENDERS[a.contender](a.model.resolve(), a.artifacts.resolve(), a.threads, a.isa)
    load_s = time.perf_counter() - t0
    encode(WARM_TEXTS, 32)
    encode(WARM_TEXTS[:3], 1)
    print(json.dumps({"ready": True, "load_s": round(load_s, 2), "pid": os.getpid()}), file=out, flush=True)
    if a.prepare_only:
        out.flush()
        os._exit(0)
    cache: dict[str, list[str]] = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        texts = cache.setdefault(req["texts"], json.loads(Path(req["texts"]).read_text(encoding="utf-8")))
        if req["op"] == "encode":
            t = time.perf_counter()
            vecs = np.asarray(encode(texts, req["batch"]), dtype=np.float32)
            secs = time.perf_counter() - t
            if req.get("out"):
                np.save(req["out"], vecs)
            reply = {"seconds": secs, "n": len(texts)}
        elif req["op"] == "latency":
            ms = []
            for s in texts[: req["n"]]:
                t = time.perf_counter()
                encode([s], 1)
                ms.append(1000 * (time.perf_counter() - t))
            reply = {"ms": ms}
        else:
            reply = {"error": f"unknown op {req['op']!r}"}
        print(json.dumps(reply), file=out, flush=True)
    out.flush()
    sys.stderr.flush()
    os._exit(0)  # some peers (infinity-emb's batch handler) leave non-daemon threads running


if __name__ == "__main__":
    main()
