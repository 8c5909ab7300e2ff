"""Ray engine overhead on one machine, and a projection for 100M documents on N GPU workers.

Corpus: the first ``--docs`` NFCorpus dev abstracts from the shared data folder
(``PAIRSMITH_DATA``), written to temporary JSONL files outside the repository
(``--files`` of them, so Ray reads many files). Model: the default all-MiniLM-L6-v2.

Measured, side by side in one process (medians of ``--repeats`` alternated runs):

1. ``build_index`` (local engine) docs/s, end to end (read, encode, SQLite, FAISS, snapshot).
2. ``build_index_ray`` docs/s on a local Ray of this machine's CPUs, end to end, with
   Ray already started (``ray.init`` is timed once, separately): the engine's overhead
   is the ratio of the two.
3. Per-stage rates for the projection: encode-only docs/s of one worker (the local
   encoder, this CPU), the driver's SQLite ingest docs/s (bulk upsert of 384-d vectors
   with the same payloads), and FAISS add docs/s per task for ``--factory``.

Then a **calculation** (not a run): build time of 100M documents on N GPU workers,
from the measured driver and FAISS rates and an assumed GPU encode rate per worker
(``--gpu-docs-per-s``; no GPU was measured here unless you pass a measured figure).

Run (heavy: take the shared CPU lock)::

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/ray_build_bench.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_facts  # noqa: E402

from pairsmith.distill.data import load_retrieval_set  # noqa: E402
from pairsmith.encoders import BiEncoder  # noqa: E402
from pairsmith.service.store.build import BuildConfig, build_index  # noqa: E402
from pairsmith.service.store.faiss_index import IndexMetric, new_index  # noqa: E402
from pairsmith.service.store.index_store import IndexStore, UpsertItem  # noqa: E402


def write_parts(folder: Path, ids: list[str], texts: list[str], files: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(ids) // files)
    for k in range(files):
        with open(folder / f"part-{k:03d}.jsonl", "w") as fh:
            for i, t in zip(ids[k * step : (k + 1) * step], texts[k * step : (k + 1) * step], strict=True):
                fh.write(json.dumps({"id": i, "text": t, "payload": {"chars": len(t)}}) + "\n")
    return folder


def ingest_rate(tmp: Path, texts: list[str], dim: int, n: int) -> float:
    """Driver-side SQLite ingest, docs/s: bulk upserts of unit vectors with the build's payloads."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with IndexStore(tmp / "ingest") as store:
        store.create("x", dim=dim, encoder_fingerprint="bench", encoder_id="bench")
        store.begin_bulk("x")
        items = [
            UpsertItem(f"d{i}", vecs[i], {"chars": len(texts[i % len(texts)]), "text": texts[i % len(texts)]})
            for i in range(n)
        ]
        t0 = time.perf_counter()
        for s in range(0, n, 5000):
            store.upsert("x", items[s : s + 5000])
        return n / (time.perf_counter() - t0)


def faiss_add_rate(factory: str, dim: int, n_train: int, n_add: int) -> tuple[float, float]:
    """(train seconds, add docs/s in one thread) on Gaussian vectors (timing only, no recall)."""
    import faiss

    faiss.omp_set_num_threads(1)  # one Ray task = one core
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n_train + n_add, dim)).astype(np.float32)
    index = new_index(factory, dim, IndexMetric.INNER_PRODUCT)
    t0 = time.perf_counter()
    if not index.is_trained:
        index.train(x[:n_train])
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.add_with_ids(x[n_train:], np.arange(n_add, dtype=np.int64))
    return train_s, n_add / (time.perf_counter() - t0)


def projection(args, rates: dict) -> dict:
    """Build time of ``args.project_docs`` docs on N GPU workers (a calculation from the rates)."""
    d = args.project_docs
    out = {
        "docs": d,
        "assumed_gpu_docs_per_s_per_worker": args.gpu_docs_per_s,
        "measured_ingest_docs_per_s": round(rates["ingest"], 1),
        "measured_cpu_encode_docs_per_s_per_worker": round(rates["encode"], 1),
        "measured_faiss_add_docs_per_s_per_task": round(rates["faiss_add"], 1),
        "faiss_add_tasks": args.add_tasks,
        "rows": [],
    }
    ingest_h = d / rates["ingest"] / 3600
    add_h = d / (rates["faiss_add"] * args.add_tasks) / 3600
    for kind, rate in (("gpu (assumed rate)", args.gpu_docs_per_s), ("cpu (measured rate)", rates["encode"])):
        out["rows"] += _rows(kind, rate, d, ingest_h, add_h)
    return out


def _rows(kind: str, rate: float, d: int, ingest_h: float, add_h: float) -> list[dict]:
    rows = []
    for n in (1, 4, 8, 16, 32, 64):
        encode_h = d / (n * rate) / 3600
        # Encode and ingest overlap (the driver ingests shards while actors encode): the slower wins.
        total_h = max(encode_h, ingest_h) + add_h
        rows.append(
            {
                "workers": f"{n} {kind}",
                "encode_h": round(encode_h, 2),
                "ingest_h": round(ingest_h, 2),
                "faiss_add_h": round(add_h, 2),
                "total_h": round(total_h, 2),
                "bound": "encode" if encode_h >= ingest_h else "driver ingest (one SQLite writer)",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=600, help="abstracts per build")
    ap.add_argument("--files", type=int, default=6, help="corpus files the docs are split into")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-docs", type=int, default=100)
    ap.add_argument("--factory", default="IVF1024,PQ48", help="FAISS factory for the add-rate stage")
    ap.add_argument(
        "--gpu-docs-per-s", type=float, default=10_000.0, help="ASSUMED encode rate per GPU worker"
    )
    ap.add_argument("--add-tasks", type=int, default=64, help="parallel FAISS add tasks in the projection")
    ap.add_argument("--project-docs", type=int, default=100_000_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from pairsmith.service.ray_build import RayBuildConfig, build_index_ray
    from pairsmith.service.ray_engine import RayOptions, require_ray

    ds = load_retrieval_set("nfcorpus-dev")
    ids = list(ds.docs)[: args.docs]
    texts = [ds.docs[i] for i in ids]
    enc = BiEncoder.load("default", device="cpu", backend="torch")
    enc.encode(texts[:32])  # warm-up
    out: dict = {"machine": machine_facts(), "model": enc.model_id, "docs": len(ids), "files": args.files}

    ray = require_ray(local=True)
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    out["ray_init_s"] = round(time.perf_counter() - t0, 1)
    out["ray_cpus"] = ray.cluster_resources().get("CPU")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            parts = write_parts(tmp / "parts", ids, texts, args.files)
            single = write_parts(tmp / "single", ids, texts, 1) / "part-000.jsonl"
            local_t, ray_t, enc_t = [], [], []
            for rep in range(args.repeats):
                t0 = time.perf_counter()
                enc.encode(texts, batch_size=256, normalize=True)
                enc_t.append(time.perf_counter() - t0)
                with IndexStore(tmp / f"home-{rep}") as store:
                    t0 = time.perf_counter()
                    build_index(store, enc, BuildConfig(single, "local"), progress=False)
                    local_t.append(time.perf_counter() - t0)
                    cfg = BuildConfig(parts, "ray", model_ref="default")
                    rcfg = RayBuildConfig(shard_docs=args.shard_docs, ray=RayOptions())
                    t0 = time.perf_counter()
                    build_index_ray(store, enc, cfg, rcfg, progress=False)
                    ray_t.append(time.perf_counter() - t0)
                print(
                    f"rep {rep}: encode-only {enc_t[-1]:.1f}s, local build {local_t[-1]:.1f}s, "
                    f"ray build {ray_t[-1]:.1f}s",
                    flush=True,
                )
            n = len(ids)
            out["throughput"] = {
                "encode_only_docs_per_s": round(n / statistics.median(enc_t), 1),
                "local_build_docs_per_s": round(n / statistics.median(local_t), 1),
                "ray_build_docs_per_s": round(n / statistics.median(ray_t), 1),
                "ray_over_local": round(statistics.median(local_t) / statistics.median(ray_t), 3),
                "runs_s": {"encode": enc_t, "local": local_t, "ray": ray_t},
            }
            print(json.dumps(out["throughput"]), flush=True)
            ingest = ingest_rate(tmp, texts, enc.dim, 20_000)
    finally:
        ray.shutdown()
    train_s, add = faiss_add_rate(args.factory, enc.dim, 40_000, 50_000)
    out["stages"] = {
        "driver_ingest_docs_per_s": round(ingest, 1),
        "faiss_factory": args.factory,
        "faiss_train_s_40k": round(train_s, 1),
        "faiss_add_docs_per_s_one_thread": round(add, 1),
    }
    enc_rate = out["throughput"]["encode_only_docs_per_s"]
    out["projection"] = projection(args, {"ingest": ingest, "faiss_add": add, "encode": enc_rate})
    print(json.dumps({k: out[k] for k in ("stages", "projection")}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
