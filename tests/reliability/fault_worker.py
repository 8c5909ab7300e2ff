"""A store writer that journals what it was told is durable, for kill -9 rounds.

``python -m tests.reliability.fault_worker ROOT FACTORY ROUND SEED`` opens (or creates) index
``k`` under ROOT with thresholds so small that compactions, snapshot writes, HNSW rebuilds and
IVF training happen every few operations, then loops forever: upserts (new ids and new versions
of acknowledged ids), deletes, explicit compactions. Before each operation it prints
``BEGIN <json>``, after the store returns ``ACK <json>`` (flushed), so the parent that kills it
knows exactly which writes were acknowledged. Vectors are a pure function of (id, version):
:func:`vector_for`.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from pairsmith.service.store.index_store import IndexStore, UpsertItem
from pairsmith.service.store.live import StoreConfig

DIM = 24
INDEX = "k"
CONFIG = StoreConfig(
    upsert_chunk=16,  # several transactions per upsert call: partial commits are possible
    compact_min_delta=40,
    compact_delta_fraction=0.01,
    rebuild_min_dead=12,
    rebuild_dead_fraction=0.05,
    checkpoint_interval_s=0.0,  # every compaction writes a snapshot + manifest
    train_sample_max=2000,
)


def vector_for(ident: str, version: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{ident}/{version}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def main(root: str, factory: str, round_: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    store = IndexStore(root, config=CONFIG)
    try:
        store.get(INDEX)
    except Exception:  # noqa: BLE001 - first round: create (atomic: whole or absent)
        kw = {"train_size": 200} if factory.startswith("IVF") else {}
        store.create(INDEX, dim=DIM, factory=factory, encoder_fingerprint="fault", encoder_id="fault", **kw)
    known: dict[str, int] = {}  # ids this round wrote or saw acknowledged, with their version
    for line in sys.stdin:  # the parent's view of what is live (id version), then "GO"
        if line.strip() == "GO":
            break
        ident, version = line.split()
        known[ident] = int(version)
    n = 0
    while True:
        n += 1
        r = rng.random()
        if r < 0.6 or not known:
            ids = [f"r{round_}-{n}-{j}" for j in range(int(rng.integers(1, 60)))]
            if known and rng.random() < 0.5:  # new versions of existing ids in the same call
                ids += list(
                    rng.choice(sorted(known), size=min(len(known), int(rng.integers(1, 10))), replace=False)
                )
            batch = {i: known.get(i, 0) + 1 for i in ids}
            op = {"op": "upsert", "items": batch}
            _say("BEGIN", op)
            store.upsert(
                INDEX, [UpsertItem(i, vector_for(i, v), {"v": v, "id": i}) for i, v in batch.items()]
            )
            known.update(batch)
        elif r < 0.9:
            ids = list(
                rng.choice(sorted(known), size=min(len(known), int(rng.integers(1, 30))), replace=False)
            )
            op = {"op": "delete", "ids": ids}
            _say("BEGIN", op)
            store.delete(INDEX, ids)
            for i in ids:
                known.pop(i, None)
        else:
            op = {"op": "compact"}
            _say("BEGIN", op)
            store.compact(INDEX)
        _say("ACK", op)


def _say(tag: str, op: dict) -> None:
    sys.stdout.write(f"{tag} {json.dumps(op)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
