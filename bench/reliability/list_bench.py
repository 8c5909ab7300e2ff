"""ListIndexes with thousands of indexes: manifests only vs opening each store.sqlite.

Creates ``--indexes`` small indexes (``--items`` vectors each) in a fresh store, closes it, then
times ``IndexStore.list()`` (manifest.json per index, no SQLite or FAISS opened) against the
per-index SQLite read that ListIndexes used before (read-only connection, meta, COUNT(*)),
interleaved, ``--reps`` times each; medians and their ratio go to JSON.

    python bench/reliability/list_bench.py --indexes 2148 --out bench/results/reliability/list_indexes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_common import provenance  # noqa: E402

from pairsmith.service.store.index_store import IndexStore, UpsertItem  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--indexes", type=int, default=2148)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "reliability" / "list_indexes.json"
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="pairsmith-list-") as tmp:
        t0 = time.perf_counter()
        with IndexStore(tmp) as store:
            for i in range(args.indexes):
                name = f"ix-{i:05d}"
                store.create(name, dim=args.dim, encoder_fingerprint="f", encoder_id="e")
                vecs = rng.standard_normal((args.items, args.dim)).astype(np.float32)
                store.upsert(name, [UpsertItem(f"d{j}", vecs[j]) for j in range(args.items)])
        build_s = time.perf_counter() - t0
        store = IndexStore(tmp)
        names = [p.name for p in sorted(store.dir.iterdir()) if not p.name.startswith(".")]
        fast, slow = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            listed = store.list()
            fast.append(time.perf_counter() - t)
            t = time.perf_counter()
            old = [store._info_from_sqlite(n, store.dir / n) for n in names]
            slow.append(time.perf_counter() - t)
        assert [(i.name, i.count) for i in listed] == [(i.name, i.count) for i in old]
        store.close()
    fast_ms, slow_ms = float(np.median(fast)) * 1e3, float(np.median(slow)) * 1e3
    doc = {
        **provenance(sys.argv, REPO),
        "shared_machine": True,
        "indexes": args.indexes,
        "items_per_index": args.items,
        "build_s": round(build_s, 1),
        "list_manifest_ms": {"median": round(fast_ms, 1), "all": [round(x * 1e3, 1) for x in fast]},
        "list_sqlite_ms": {"median": round(slow_ms, 1), "all": [round(x * 1e3, 1) for x in slow]},
        "speedup": round(slow_ms / fast_ms, 2),
        "report": {
            "section": "Serving",
            "title": f"ListIndexes over {args.indexes} indexes",
            "columns": ["how", "median ms", "per index ms"],
            "rows": [
                ["manifest.json per index (now)", round(fast_ms, 1), round(fast_ms / args.indexes, 3)],
                ["store.sqlite per index (before)", round(slow_ms, 1), round(slow_ms / args.indexes, 3)],
            ],
            "notes": f"IndexStore.list() in one process, {args.reps} interleaved repetitions each, median; "
            "other jobs used the same cores meanwhile, so compare the two rows, not absolute times.",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("indexes", "list_manifest_ms", "list_sqlite_ms", "speedup")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
