"""IndexStore: exactness against numpy, upsert/replace, deletes on every index type, training,
validation, encoder checks, crash safety (kill -9 of a writer process) and concurrent readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from pairsmith.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound, PairsmithError
from pairsmith.service.store.faiss_index import hnsw_of
from pairsmith.service.store.index_store import (
    Hit,
    IndexMetric,
    IndexStore,
    StoreConfig,
    UpsertItem,
)

DIM = 16
REPO = Path(__file__).resolve().parent.parent


def _vecs(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _items(x: np.ndarray, prefix: str = "d", payload: bool = True, start: int = 0) -> list[UpsertItem]:
    return [
        UpsertItem(f"{prefix}{start + i}", x[i], {"i": start + i} if payload else None) for i in range(len(x))
    ]


def _create(store: IndexStore, name: str = "idx", **kw):
    kw.setdefault("dim", DIM)
    return store.create(name, encoder_fingerprint="fp-a", encoder_id="enc-a", **kw)


def _brute(x: np.ndarray, q: np.ndarray, k: int, metric: IndexMetric):
    if metric is IndexMetric.COSINE:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric is IndexMetric.L2:
        s = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        s = q @ x.T
    order = np.argsort(-s, axis=1)[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@pytest.fixture
def store(tmp_path):
    s = IndexStore(tmp_path / "home")
    yield s
    s.close()


@pytest.mark.parametrize("metric", list(IndexMetric))
def test_flat_search_equals_bruteforce_numpy(store, metric):
    x, q = _vecs(700, 1), _vecs(9, 2)
    _create(store, metric=metric)
    assert store.upsert("idx", _items(x)) == 700
    hits = store.search("idx", q, 10)
    order, scores = _brute(x, q, 10, metric)
    for row, h in enumerate(hits):
        assert [int(hit.id[1:]) for hit in h] == order[row].tolist()
        np.testing.assert_allclose([hit.score for hit in h], scores[row], rtol=1e-4, atol=1e-4)
        assert h[0].payload == {"i": int(order[row][0])}
    # The same after the delta is merged into FAISS and after a reopen from the snapshot.
    store.compact("idx")
    assert [[x.id for x in h] for h in store.search("idx", q, 10)] == [[x.id for x in h] for h in hits]


@pytest.mark.parametrize("metric", [IndexMetric.INNER_PRODUCT, IndexMetric.L2])
def test_search_merges_base_delta_and_deletes_exactly(tmp_path, metric):
    """Vectors split between the FAISS base and the exact delta, with deletes and replacements
    in both: results still equal brute force over the live set."""
    x, q = _vecs(400, 21), _vecs(6, 22)
    with IndexStore(tmp_path, config=StoreConfig(compact_min_delta=150, compact_delta_fraction=0.0)) as store:
        _create(store, metric=metric)
        for s in range(0, 400, 100):  # compactions at 200 and 400 -> base 200.., delta the rest
            store.upsert("idx", _items(x[s : min(s + 100, 350)], start=s))
        live = dict(enumerate(x[:350]))
        gone = [3, 77, 150, 201, 260, 349]  # in the base and in the delta
        store.delete("idx", [f"d{i}" for i in gone])
        for i in gone:
            live.pop(i)
        new = _vecs(2, 23)
        store.upsert("idx", [UpsertItem("d5", new[0]), UpsertItem("d230", new[1])])
        live[5], live[230] = new[0], new[1]
        snap = store._handles["idx"].snapshot
        assert snap.base_count and len(snap.delta_ids) and len(snap.dead)  # the mixed state under test
        keys = sorted(live)
        order, scores = _brute(np.stack([live[i] for i in keys]), q, 10, metric)
        for row, hits in enumerate(store.search("idx", q, 10)):
            assert [h.id for h in hits] == [f"d{keys[j]}" for j in order[row]]
            np.testing.assert_allclose([h.score for h in hits], scores[row], rtol=1e-4, atol=1e-3)


def test_upsert_replaces_same_id_and_keeps_count(store):
    x = _vecs(50, 3)
    _create(store)
    store.upsert("idx", _items(x))
    new = _vecs(1, 4)[0]
    # Same id twice in one call: the last one wins.
    assert store.upsert("idx", [UpsertItem("d7", x[0], {"v": 1}), UpsertItem("d7", new, {"v": 2})]) == 1
    assert store.get("idx").count == 50
    top = store.search("idx", new[None, :], 3)[0]
    assert top[0] == Hit("d7", pytest.approx(1.0, abs=1e-5), {"v": 2})
    # The old vector of d7 is gone: searching it finds d7 nowhere near score 1.
    old = store.search("idx", x[7][None, :], 50)[0]
    assert all(not (h.id == "d7" and h.score > 0.99) for h in old)
    store.compact("idx")
    assert store.search("idx", new[None, :], 1)[0][0].id == "d7"


FACTORIES = ["IDMap2,Flat", "HNSW16", "IVF8,Flat", "IVF4,PQ4", "SQ8", "PQ4"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_delete_works_on_every_index_type(tmp_path, factory):
    x = _vecs(600, 5)
    gone = [f"d{i}" for i in range(0, 60, 3)]
    cfg = StoreConfig(compact_min_delta=100, compact_delta_fraction=0.0)  # deletes hit vectors inside FAISS
    with IndexStore(tmp_path, config=cfg) as store:
        info = _create(store, factory=factory, train_size=300)
        assert info.needs_rebuild_on_delete is (factory == "HNSW16")
        store.upsert("idx", _items(x))
        assert store.get("idx").trained
        assert store.delete("idx", gone + ["no-such-id"]) == len(gone)
        assert store.delete("idx", gone) == 0

        def check():
            assert store.get("idx").count == 600 - len(gone)
            for hits in store.search("idx", x[0:60:3], 20):
                assert not {h.id for h in hits} & set(gone)
                assert len(hits) == 20  # deleted ids are filtered inside FAISS, not dropped afterwards
            kept = store.search("idx", x[1:60:3], 1)
            assert sum(h[0].id == f"d{i}" for h, i in zip(kept, range(1, 60, 3), strict=True)) >= 15

        check()  # filtered before compaction
    with IndexStore(tmp_path, config=cfg) as store:
        check()  # after a reopen: the snapshot may still hold them (HNSW), SQLite says they are dead
        store.compact("idx")  # physically removed (HNSW: rebuilt from SQLite vectors)
        check()
    with IndexStore(tmp_path) as store:
        check()


def test_ivf_buffers_until_trained_then_trains_on_sample(store):
    x, q = _vecs(1200, 6), _vecs(5, 7)
    info = _create(store, factory="IVF8,Flat", train_size=800, search_params={"nprobe": 8})
    assert not info.trained and info.search_params == {"nprobe": 8}
    store.upsert("idx", _items(x[:500]))
    assert not store.get("idx").trained
    order, _ = _brute(x[:500], q, 5, IndexMetric.COSINE)  # exact while untrained
    assert [[int(h.id[1:]) for h in r] for r in store.search("idx", q, 5)] == order.tolist()
    store.upsert("idx", [UpsertItem(f"d{i}", x[i]) for i in range(500, 1200)])
    assert store.get("idx").trained
    order, _ = _brute(x, q, 5, IndexMetric.COSINE)  # nprobe = nlist: IVF is exact
    assert [[int(h.id[1:]) for h in r] for r in store.search("idx", q, 5)] == order.tolist()


def test_training_with_too_few_vectors_is_a_clear_error(store):
    _create(store, factory="IVF64,Flat")
    store.upsert("idx", _items(_vecs(10, 8)))
    store.begin_bulk("idx")
    with pytest.raises(FailedPrecondition, match=r"needs at least 64 vectors to train.*has 10"):
        store.end_bulk("idx")


@pytest.mark.parametrize(
    "kwargs, exc, field",
    [
        ({"name": "../etc"}, InvalidInput, "name"),
        ({"name": "a/b"}, InvalidInput, "name"),
        ({"name": "Upper"}, InvalidInput, "name"),
        ({"name": ""}, InvalidInput, "name"),
        ({"name": ".hidden"}, InvalidInput, "name"),
        ({"name": "x" * 65}, InvalidInput, "name"),
        ({"dim": 0}, InvalidInput, "dim"),
        ({"dim": "16"}, InvalidInput, "dim"),
        ({"dim": 10**6}, InvalidInput, "dim"),
        ({"factory": "NoSuchIndex99"}, InvalidInput, "factory"),
        ({"factory": ""}, InvalidInput, "factory"),
        ({"metric": "manhattan"}, InvalidInput, "metric"),
        ({"search_params": {"nprobe": 0}}, InvalidInput, "search_params"),
    ],
)
def test_create_rejects_bad_arguments(store, kwargs, exc, field):
    args = {"name": "ok", "dim": DIM, **kwargs}
    name = args.pop("name")
    with pytest.raises(exc, match=rf"^{field}"):
        store.create(name, encoder_fingerprint="fp", encoder_id="e", **args)
    assert not any(p.name.startswith(("..", "etc")) for p in store.root.parent.iterdir())


def test_bad_requests_name_the_field_and_limit(store):
    _create(store)
    store.upsert("idx", _items(_vecs(20, 9)))
    q = _vecs(2, 10)
    bad = [
        (lambda: store.search("idx", q, 0), r"^k: .*\[1, 10000\]"),
        (lambda: store.search("idx", q, 10_001), r"^k: "),
        (lambda: store.search("idx", q, 2.5), r"^k: "),
        (lambda: store.search("idx", _vecs(2, 1, dim=8), 3), r"^queries: expected shape \(Q, 16\)"),
        (lambda: store.search("idx", q[0], 3), r"^queries: expected shape"),
        (lambda: store.search("idx", np.full((1, DIM), np.nan, np.float32), 3), r"^queries: .*NaN"),
        (lambda: store.search("idx", np.zeros((1, DIM), np.float32), 3), r"^queries: a zero vector"),
        (
            lambda: store.upsert("idx", [UpsertItem("a", np.ones(3))]),
            r"^items\[0\]\.vector: .*dimension 3.*expects 16",
        ),
        (lambda: store.upsert("idx", [UpsertItem("", np.ones(DIM))]), r"^items\[0\]\.id"),
        (
            lambda: store.upsert("idx", [UpsertItem("x" * 513, np.ones(DIM))]),
            r"^items\[0\]\.id: .*limit is 512",
        ),
        (lambda: store.upsert("idx", [UpsertItem("a", np.ones(DIM), [1])]), r"^items\[0\]\.payload"),
        (
            lambda: store.upsert("idx", [UpsertItem("a", np.ones(DIM), {"x": float("nan")})]),
            r"^items\[0\]\.payload",
        ),
        (
            lambda: store.upsert("idx", [UpsertItem("a", np.ones(DIM), {"x": "y" * 70_000})]),
            r"limit is 65536",
        ),
        (lambda: store.upsert("idx", [(1, 2)]), r"^items\[0\]: expected UpsertItem"),
        (lambda: store.delete("idx", "d1"), r"^ids: "),
        (lambda: store.delete("idx", [3]), r"^ids: "),
    ]
    for call, pattern in bad:
        with pytest.raises(InvalidInput, match=pattern):
            call()
    assert store.get("idx").count == 20  # nothing half-written
    with pytest.raises(NotFound, match="index 'nope' not found"):
        store.search("nope", q, 3)
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(AlreadyExists):
        _create(store)


def test_hnsw_build_params_persist(tmp_path):
    with IndexStore(tmp_path, config=StoreConfig(compact_min_delta=50, compact_delta_fraction=0.0)) as store:
        _create(store, factory="HNSW16", build_params={"efConstruction": 80})
        store.upsert("idx", _items(_vecs(100, 30)))
        assert hnsw_of(store._handles["idx"].snapshot.base).hnsw.efConstruction == 80
        with pytest.raises(InvalidInput, match="build_params: efConstruction applies to HNSW"):
            _create(store, "flat", build_params={"efConstruction": 80})
        with pytest.raises(InvalidInput, match="build_params: "):
            _create(store, "h2", factory="HNSW16", build_params={"M": 3})
    with IndexStore(tmp_path) as store:
        store.compact("idx")
        assert hnsw_of(store._handles["idx"].snapshot.base).hnsw.efConstruction == 80


def test_encoder_mismatch_is_refused(store):
    _create(store)
    store.check_encoder("idx", "fp-a")
    with pytest.raises(FailedPrecondition, match=r"built with encoder 'enc-a' \(fingerprint fp-a\).*fp-b"):
        store.check_encoder("idx", "fp-b")


def test_drop_list_and_second_process_lock(tmp_path):
    with IndexStore(tmp_path) as store:
        _create(store, "a")
        _create(store, "b", factory="HNSW8", metric="l2")
        store.upsert("a", _items(_vecs(5, 1)))
        assert [i.name for i in store.list()] == ["a", "b"]
        assert store.list()[1].metric is IndexMetric.L2
        with IndexStore(tmp_path) as other:  # another opener (as another process would be)
            assert other.get("a").count == 5  # metadata reads need no lock
            with pytest.raises(FailedPrecondition, match="open in another process"):
                other.search("a", _vecs(1, 2), 1)
        store.drop("a")
        with pytest.raises(NotFound):
            store.get("a")
        assert [i.name for i in store.list()] == ["b"]
        assert not (tmp_path / "indexes" / "a").exists()


def test_corrupt_snapshot_is_rebuilt_from_sqlite(tmp_path):
    x = _vecs(300, 11)
    with IndexStore(tmp_path) as store:
        _create(store)
        store.upsert("idx", _items(x))
    snap = next((tmp_path / "indexes" / "idx").glob("snapshot-*.faiss"))
    snap.write_bytes(b"garbage")
    manifest = json.loads((tmp_path / "indexes" / "idx" / "manifest.json").read_text())
    assert manifest["count"] == 300 and manifest["snapshot"]["file"] == snap.name
    with IndexStore(tmp_path) as store:
        hits = store.search("idx", x[:5], 1)
        assert [h[0].id for h in hits] == [f"d{i}" for i in range(5)]


def test_concurrent_searches_while_writing(tmp_path):
    cfg = StoreConfig(compact_min_delta=64, compact_delta_fraction=0.0)  # many snapshot swaps
    x = _vecs(2000, 12)
    errors: list[BaseException] = []
    with IndexStore(tmp_path, config=cfg) as store:
        _create(store, factory="HNSW16")
        store.upsert("idx", _items(x[:200]))
        stop = threading.Event()

        def reader():
            try:
                while not stop.is_set():
                    for hits in store.search("idx", x[:8], 5):
                        assert 1 <= len(hits) <= 5
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for start in range(200, 2000, 100):
            store.upsert("idx", _items(x[start : start + 100], prefix=f"e{start}-"))
            store.delete("idx", [f"e{start}-{i}" for i in range(0, 100, 7)])
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert store.get("idx").count == 200 + 18 * (100 - 15)


_WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from pairsmith.service.store.index_store import IndexStore, StoreConfig, UpsertItem
    root, factory = sys.argv[1], sys.argv[2]
    cfg = StoreConfig(compact_min_delta=100, compact_delta_fraction=0.0, checkpoint_interval_s=0.0,
                      rebuild_min_dead=10**6)
    store = IndexStore(root, config=cfg)
    store.create("idx", dim=16, factory=factory, encoder_fingerprint="fp", encoder_id="e", train_size=300)
    rng = np.random.default_rng(0)
    n = 0
    while True:
        x = rng.standard_normal((25, 16)).astype(np.float32)
        ids = [f"d{n + i}" for i in range(25)]
        store.upsert("idx", [UpsertItem(i, v, {"n": n}) for i, v in zip(ids, x)])
        store.delete("idx", [ids[0]] + ([f"d{n - 200 + 1}"] if n >= 200 else []))
        np.save(f"{root}/batch-{n}.npy", x)
        print("ACK", n, flush=True)
        snap = store._handles["idx"].snapshot  # test-only peek: stop where replay matters
        if n >= 500 and len(snap.delta_ids) and len(snap.dead):
            print("READY", len(snap.delta_ids), len(snap.dead), flush=True)
            time.sleep(600)
        n += 25
    """
)


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "HNSW16", "IVF4,Flat"])
def test_acknowledged_upserts_survive_kill_9(tmp_path, factory):
    """kill -9 when the on-disk snapshot lags: acknowledged vectors in the delta and deletes
    of snapshot vectors must both come back from SQLite."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), factory],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    acked: list[int] = []
    ready = None
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("READY"):
                ready = line.split()
                break
            acked.append(int(line.split()[1]))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ready is not None and len(acked) >= 20
    deleted = {f"d{n}" for n in acked} | {f"d{n - 200 + 1}" for n in acked if n >= 200}
    with IndexStore(tmp_path) as store:
        assert store.get("idx").count == 25 * len(acked) - len(deleted)
        for n in acked:
            x = np.load(tmp_path / f"batch-{n}.npy")
            hits = store.search("idx", x, 3)
            for i in range(25):
                found = {h.id for h in hits[i]}
                if f"d{n + i}" in deleted:
                    assert f"d{n + i}" not in found
                else:
                    assert f"d{n + i}" in found, (n, i, hits[i])


def test_errors_are_pairsmith_errors(store):
    with pytest.raises(PairsmithError):
        store.search("missing", _vecs(1, 1), 1)


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "HNSW16"])
def test_random_operation_sequences_match_a_model(tmp_path_factory, factory):
    """Property: any sequence of upserts, replaces, deletes, compactions and reopens leaves the
    store answering like a plain dict + brute force (HNSW16 with efSearch >= the index size is exact)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ops = st.lists(
        st.one_of(
            st.tuples(st.just("upsert"), st.lists(st.integers(0, 59), min_size=1, max_size=25)),
            st.tuples(st.just("delete"), st.lists(st.integers(0, 59), min_size=1, max_size=10)),
            st.tuples(st.just("compact"), st.just([])),
            st.tuples(st.just("reopen"), st.just([])),
        ),
        min_size=1,
        max_size=12,
    )
    cfg = StoreConfig(
        compact_min_delta=16, compact_delta_fraction=0.0, rebuild_min_dead=8, rebuild_dead_fraction=0.0
    )

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops)
    def run(sequence):
        root = tmp_path_factory.mktemp("prop")
        rng = np.random.default_rng(len(sequence))
        model: dict[str, np.ndarray] = {}
        store = IndexStore(root, config=cfg)
        try:
            _create(store, factory=factory, search_params={"efSearch": 128} if "HNSW" in factory else None)
            for op, keys in sequence:
                if op == "upsert":
                    vecs = rng.standard_normal((len(keys), DIM)).astype(np.float32)
                    store.upsert("idx", [UpsertItem(f"k{k}", v) for k, v in zip(keys, vecs, strict=True)])
                    for k, v in zip(keys, vecs, strict=True):
                        model[f"k{k}"] = v / np.linalg.norm(v)
                elif op == "delete":
                    ids = list(dict.fromkeys(f"k{k}" for k in keys))
                    assert store.delete("idx", ids) == sum(i in model for i in ids)
                    for i in ids:
                        model.pop(i, None)
                elif op == "compact":
                    store.compact("idx")
                else:
                    store.close()
                    store = IndexStore(root, config=cfg)
                assert store.get("idx").count == len(model)
            if model:
                keys = sorted(model)
                mat = np.stack([model[k] for k in keys])
                q = rng.standard_normal((3, DIM)).astype(np.float32)
                k = min(5, len(keys))
                order, _ = _brute(mat, q, k, IndexMetric.COSINE)
                got = [[h.id for h in row] for row in store.search("idx", q, k)]
                assert got == [[keys[j] for j in row] for row in order]
        finally:
            store.close()

    run()
