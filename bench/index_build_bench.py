"""Batch index build on real text: build throughput vs plain encoding, and search quality per index type.

Corpus: NFCorpus dev (3,193 medical abstracts, 325 title queries with graded
qrels) from the shared data folder (``PAIRSMITH_DATA``), written to a temporary
JSONL outside the repository. Model: the default all-MiniLM-L6-v2.

1. Throughput, side by side in one process: ``BiEncoder.encode`` on the first
   ``--docs`` texts vs ``pairsmith index build`` (``build_index``: read JSONL,
   encode with the same token budget, SQLite commits, FAISS build, snapshot)
   on a corpus of the same texts; alternated ``--repeats`` times, medians and
   their ratio reported.
2. Quality: the whole corpus built once as ``IDMap2,Flat``; the same vectors
   loaded into ``HNSW32`` and ``IVF64,Flat`` indexes; nDCG@10 over the qrels and
   recall@10 against exact search, all through ``IndexStore.search``.

Run (heavy: take the shared CPU lock)::

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/index_build_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from pairsmith.distill.data import load_retrieval_set  # noqa: E402
from pairsmith.distill.metrics import ndcg_at_k  # noqa: E402
from pairsmith.encoders import BiEncoder  # noqa: E402
from pairsmith.service.store.build import BuildConfig, build_index  # noqa: E402
from pairsmith.service.store.index_store import IndexMetric, IndexStore, UpsertItem  # noqa: E402


def write_corpus(path: Path, ids: list[str], texts: list[str]) -> Path:
    with open(path, "w") as fh:
        for i, t in zip(ids, texts, strict=True):
            fh.write(json.dumps({"id": i, "text": t, "payload": {"chars": len(t)}}) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=500, help="texts for the throughput comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=16_384)
    ap.add_argument("--max-corpus", type=int, default=None, help="use only the first N docs (smoke runs)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    ds = load_retrieval_set("nfcorpus-dev")
    doc_ids = list(ds.docs)[: args.max_corpus]
    doc_texts = [ds.docs[i] for i in doc_ids]
    enc = BiEncoder.load("default", device="cpu", backend="torch")
    enc.encode(doc_texts[:64], max_tokens=args.batch_tokens)  # warm-up
    out: dict = {"model": enc.model_id, "docs": len(doc_ids), "queries": len(ds.queries)}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sub = write_corpus(tmp / "sub.jsonl", doc_ids[: args.docs], doc_texts[: args.docs])
        raw_t, build_t = [], []
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            enc.encode(doc_texts[: args.docs], batch_size=256, max_tokens=args.batch_tokens, normalize=True)
            raw_t.append(time.perf_counter() - t0)
            with IndexStore(tmp / f"home-{rep}") as store:
                t0 = time.perf_counter()
                build_index(
                    store, enc, BuildConfig(sub, "sub", batch_tokens=args.batch_tokens), progress=False
                )
                build_t.append(time.perf_counter() - t0)
            print(f"rep {rep}: encode {raw_t[-1]:.1f}s, build {build_t[-1]:.1f}s", flush=True)
        raw_dps = args.docs / statistics.median(raw_t)
        build_dps = args.docs / statistics.median(build_t)
        out["throughput"] = {
            "docs": args.docs,
            "encode_docs_per_s": round(raw_dps, 1),
            "build_docs_per_s": round(build_dps, 1),
            "ratio_build_over_encode": round(build_dps / raw_dps, 3),
        }
        print(json.dumps(out["throughput"]), flush=True)

        full = write_corpus(tmp / "full.jsonl", doc_ids, doc_texts)
        q_ids = list(ds.queries)
        qv = enc.encode([ds.queries[q] for q in q_ids], normalize=True).vectors
        with IndexStore(tmp / "home-full") as store:
            t0 = time.perf_counter()
            rep = build_index(
                store, enc, BuildConfig(full, "flat", batch_tokens=args.batch_tokens), progress=False
            )
            out["full_build_s"] = round(time.perf_counter() - t0, 1)
            out["full_build_truncated"] = rep.docs_truncated
            # The stored vectors, for exact search and the approximate indexes.
            db_vecs = np.zeros((len(doc_ids), enc.dim), np.float32)
            pos = {d: i for i, d in enumerate(doc_ids)}
            vec_by_id = _stored_vectors(store, "flat", enc.dim)
            for d, v in vec_by_id.items():
                db_vecs[pos[d]] = v
            exact = np.argsort(-(qv @ db_vecs.T), axis=1)[:, :10]
            rows = []
            for factory in ("IDMap2,Flat", "HNSW32", "IVF64,Flat"):
                name = "flat" if factory == "IDMap2,Flat" else factory.split(",")[0].lower()
                if name != "flat":
                    store.create(
                        name,
                        dim=enc.dim,
                        factory=factory,
                        metric=IndexMetric.COSINE,
                        encoder_fingerprint=enc.fingerprint,
                        encoder_id=enc.model_id,
                    )
                    store.begin_bulk(name)
                    store.upsert(name, [UpsertItem(d, db_vecs[pos[d]]) for d in doc_ids])
                    store.end_bulk(name)
                info = store.get(name)
                hits = store.search(name, qv, 10)
                ranked = [[h.id for h in row] for row in hits]
                ndcg = float(
                    np.mean([ndcg_at_k(r, ds.qrels[q], 10) for r, q in zip(ranked, q_ids, strict=True)])
                )
                recall = float(
                    np.mean([len({doc_ids[j] for j in exact[i]} & set(r)) / 10 for i, r in enumerate(ranked)])
                )
                row = {
                    "factory": factory,
                    "params": dict(info.search_params),
                    "ndcg@10": round(ndcg, 4),
                    "recall@10_vs_exact": round(recall, 4),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
            out["quality"] = rows
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out), flush=True)
    return 0


def _stored_vectors(store: IndexStore, name: str, dim: int) -> dict[str, np.ndarray]:
    """Read the vectors the build committed (the SQLite write-ahead record)."""
    import sqlite3

    db = sqlite3.connect(f"file:{store.dir / name / 'store.sqlite'}?mode=ro", uri=True)
    try:
        return {
            i: np.frombuffer(v, dtype="<f4").reshape(dim)
            for i, v in db.execute("SELECT id, vector FROM items")
        }
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
