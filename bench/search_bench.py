"""Search benchmark: QPS and recall@10 vs exact for Flat, IVF and HNSW, with build time and bytes/vector.

Data: *clustered* synthetic vectors, not plain Gaussians. Random Gaussian
vectors in 384-d have no neighbour structure (every ANN index scores < 0.25
recall@10 on them: /work/shared/ENVIRONMENT.md), so recall on them says
nothing about real embeddings. Here each vector is a point of a 1,000-cluster
Gaussian mixture in a 64-d latent space (cluster spread 1.0), projected to
384-d by a fixed random matrix, plus 5% isotropic noise, L2-normalised; queries
are held-out draws from the same mixture. On 50k vectors this gives HNSW32
efSearch 64 recall 0.992 and top-1 cosine ~0.66, close to what
all-MiniLM-L6-v2 shows on real sentences (0.993 in ENVIRONMENT.md).

Indexes are built exactly as the index store builds them
(:func:`pairsmith.service.store.faiss_index.new_index`: IDMap2 wrapping, IVF
hashtable direct map), metric inner product on normalised vectors (= cosine).
IVF uses nlist = 1024 (100k) / 4096 (1M), trained on a sample of at most
100k vectors (the store's default ``train_sample_max``). Every QPS figure is
the median of ``--repeats`` runs; "batch 1" sends one query per call, "batch"
all queries in one call. ``--store`` also measures the same search through
:class:`IndexStore` (snapshot + SQLite id/payload lookup) at the smallest size.

Run (heavy: take the shared CPU lock)::

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/search_bench.py --sizes 100000 1000000 --store
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

import faiss
import numpy as np

from pairsmith.service.store.faiss_index import IndexMetric, apply_search_params, new_index

DIM = 384


def clustered(
    n: int,
    *,
    dim: int = DIM,
    latent: int = 64,
    clusters: int = 1000,
    spread: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
    chunk: int = 100_000,
) -> np.ndarray:
    """(n, dim) float32 unit vectors from a projected Gaussian mixture (see module docstring)."""
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    centers = rng.standard_normal((clusters, latent)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        z = centers[rng.integers(clusters, size=m)] + spread * rng.standard_normal((m, latent)).astype(
            np.float32
        )
        x = z @ proj + noise * rng.standard_normal((m, dim)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at(ids: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, gt, strict=True)]))


def single_thread(fn):
    """Run ``fn`` with one OpenMP thread in this thread, as IndexStore does for <= 4 queries."""

    def run():
        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return fn()
        finally:
            faiss.omp_set_num_threads(prev)

    return run


def qps(fn, n_queries: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_queries / statistics.median(times)


def index_bytes(index: faiss.Index) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def build(
    factory: str, xb: np.ndarray, budget_s: float, train_max: int = 100_000, build_params: dict | None = None
) -> tuple[faiss.Index | None, dict]:
    t0 = time.perf_counter()
    index = new_index(factory, xb.shape[1], IndexMetric.INNER_PRODUCT, build_params)
    train_s = 0.0
    if not index.is_trained:
        sample = xb[np.random.default_rng(1).choice(len(xb), size=min(len(xb), train_max), replace=False)]
        index.train(sample)
        train_s = time.perf_counter() - t0
    ids = np.arange(len(xb), dtype=np.int64)
    step = 20_000
    for s in range(0, len(xb), step):
        index.add_with_ids(xb[s : s + step], ids[s : s + step])
        elapsed = time.perf_counter() - t0
        if elapsed > budget_s and s + step < len(xb):
            done = s + step
            est = train_s + (elapsed - train_s) * len(xb) / done
            return None, {
                "build_s": None,
                "train_s": round(train_s, 1),
                "stopped_at": done,
                "build_s_extrapolated": round(est, 1),
            }
    return index, {"build_s": round(time.perf_counter() - t0, 1), "train_s": round(train_s, 1)}


def bench_index(name: str, factory: str, sweep: list[dict], xb, xq, gt, args) -> list[dict]:
    build_params = (
        {"efConstruction": args.ef_construction} if "HNSW" in factory and args.ef_construction else None
    )
    index, facts = build(factory, xb, args.budget_s, build_params=build_params)
    if build_params:
        name = f"{name} efC{args.ef_construction}"
    rows = []
    if index is None:
        print(f"  {name}: build stopped at the {args.budget_s:.0f}s budget: {facts}", flush=True)
        return [{"index": name, "factory": factory, **facts}]
    facts["bytes_per_vector"] = round(index_bytes(index) / len(xb), 1)
    one = xq[: args.single]
    for params in sweep:
        apply_search_params(index, params)
        _, ids = index.search(xq, 10)
        row = {
            "index": name,
            "factory": factory,
            "params": params,
            "recall@10": round(recall_at(ids, gt), 4),
            "qps_batch": round(qps(lambda: index.search(xq, 10), len(xq), args.repeats), 1),
            "qps_batch1": round(
                qps(
                    single_thread(lambda: [index.search(one[i : i + 1], 10) for i in range(len(one))]),
                    len(one),
                    args.repeats,
                ),
                1,
            ),
            **facts,
        }
        print(f"  {json.dumps(row)}", flush=True)
        rows.append(row)
    return rows


def bench_store(xb, xq, gt, args, factory: str, params: dict) -> dict:
    """The same search through IndexStore: bulk build, then store.search (adds SQLite id lookup)."""
    from pairsmith.service.store.index_store import IndexStore, UpsertItem

    with tempfile.TemporaryDirectory() as tmp, IndexStore(tmp) as store:
        t0 = time.perf_counter()
        store.create(
            "bench",
            dim=xb.shape[1],
            factory=factory,
            metric=IndexMetric.INNER_PRODUCT,
            encoder_fingerprint="synthetic",
            encoder_id="synthetic",
            search_params=params,
        )
        store.begin_bulk("bench")
        for s in range(0, len(xb), 20_000):
            store.upsert("bench", (UpsertItem(str(i), xb[i]) for i in range(s, min(s + 20_000, len(xb)))))
        ingest_s = time.perf_counter() - t0
        info = store.end_bulk("bench")
        build_s = time.perf_counter() - t0
        hits = store.search("bench", xq, 10)
        ids = np.array([[int(h.id) for h in row] for row in hits])
        one = xq[: args.single]
        row = {
            "index": f"store {factory}",
            "params": params,
            "recall@10": round(recall_at(ids, gt), 4),
            "qps_batch": round(qps(lambda: store.search("bench", xq, 10), len(xq), args.repeats), 1),
            "qps_batch1": round(
                qps(
                    lambda: [store.search("bench", one[i : i + 1], 10) for i in range(len(one))],
                    len(one),
                    args.repeats,
                ),
                1,
            ),
            "ingest_s": round(ingest_s, 1),
            "build_s": round(build_s, 1),
            "disk_bytes_per_vector": round(info.size_bytes / len(xb), 1),
        }
    print(f"  {json.dumps(row)}", flush=True)
    return row


def markdown(results: dict) -> str:
    """One markdown table per size."""
    out = []
    for n, rows in results["sizes"].items():
        nq = results["queries"]
        out.append(f"\n**N = {int(n):,}** (dim {DIM}, {nq:,} queries, k = 10)\n")
        out.append(
            f"| index | search params | recall@10 | QPS batch 1 | QPS batch {nq} | build s | bytes/vector |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for r in rows:
            params = ", ".join(f"{k} {v}" for k, v in (r.get("params") or {}).items()) or "-"
            if r.get("build_s") is None and "build_s_extrapolated" in r:
                out.append(f"| {r['index']} | - | - | - | - | >{r['build_s_extrapolated']} (stopped) | - |")
                continue
            size = r.get("bytes_per_vector", r.get("disk_bytes_per_vector", "-"))
            out.append(
                f"| {r['index']} | {params} | {r['recall@10']:.3f} | {r['qps_batch1']:,.0f} | "
                f"{r['qps_batch']:,.0f} | {r['build_s']} | {size} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (recall, batch QPS)")
    ap.add_argument("--single", type=int, default=200, help="queries sent one per call (batch-1 QPS)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--budget-s", type=float, default=1200.0, help="stop (and extrapolate) a build beyond this"
    )
    ap.add_argument(
        "--store", action="store_true", help="also measure through IndexStore at the smallest size"
    )
    ap.add_argument("--indexes", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"])
    ap.add_argument(
        "--ef-construction", type=int, default=None, help="HNSW efConstruction (FAISS default 40)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write all rows here")
    args = ap.parse_args(argv)
    env = {
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "omp_threads": faiss.omp_get_max_threads(),
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    print(json.dumps(env), flush=True)
    results = {"env": env, "queries": args.queries, "sizes": {}}
    for n in sorted(args.sizes):
        t0 = time.perf_counter()
        x = clustered(n + args.queries)
        xb, xq = x[:n], x[n:]
        exact = faiss.IndexFlatIP(DIM)
        exact.add(xb)
        _, gt = exact.search(xq, 10)
        del exact
        print(f"N={n}: data + ground truth in {time.perf_counter() - t0:.1f}s", flush=True)
        nlist = 1024 if n <= 200_000 else 4096
        rows = []
        if "flat" in args.indexes:
            rows += bench_index("Flat", "IDMap2,Flat", [{}], xb, xq, gt, args)
        if "ivf" in args.indexes:
            rows += bench_index(
                f"IVF{nlist}", f"IVF{nlist},Flat", [{"nprobe": p} for p in (8, 16, 32, 64)], xb, xq, gt, args
            )
        if "hnsw" in args.indexes:
            rows += bench_index(
                "HNSW32", "HNSW32", [{"efSearch": e} for e in (16, 32, 64, 128)], xb, xq, gt, args
            )
        if args.store and n == min(args.sizes):
            rows.append(bench_store(xb, xq, gt, args, "IDMap2,Flat", {}))
            rows.append(bench_store(xb, xq, gt, args, "HNSW32", {"efSearch": 64}))
        results["sizes"][str(n)] = rows
        del x, xb, xq
    print(markdown(results), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
