"""Bounded resources, a clean drain, overflow-safe scores: regressions on a real server.

Most tests share one in-process server on 127.0.0.1:0 (tiny models); the descriptor, full-disk
and drain tests start their own (``pairsmith serve`` in a subprocess where the process limits or
signals matter).
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from pairsmith.errors import InvalidInput
from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from pairsmith.service.store.db import IndexDb
from pairsmith.service.store.faiss_index import MAX_VECTOR_NORM
from pairsmith.service.store.index_store import IndexStore, UpsertItem
from pairsmith.service.store.live import StoreConfig
from tests.service_util import SubprocessServer, call_code, pb, pb_grpc, stub_for

C = grpc.StatusCode
DIM = 32  # the tiny models' embedding size
MAX_TEXTS = 64


@pytest.fixture(scope="module")
def server(tiny_bi_dir, tmp_path_factory):
    cfg = ServeConfig(
        model=str(tiny_bi_dir),
        data_dir=tmp_path_factory.mktemp("hardening-data"),
        max_texts_per_request=MAX_TEXTS,
        metrics_port=0,
    )
    st = ServerThread(cfg).start()
    yield st
    st.stop()


@pytest.fixture
def stub(server):
    ch, stub = stub_for(server.target)
    yield stub
    ch.close()


def _vec(value: float | np.ndarray) -> bytes:
    return np.broadcast_to(np.asarray(value, dtype="<f4"), (DIM,)).astype("<f4").tobytes()


def _upsert(stub, index: str, items: list[pb.UpsertItem], **kw):
    return stub.Upsert(iter([pb.UpsertRequest(index=index, items=items, **kw)]), timeout=60)


# -- 1: huge finite vectors on ip / l2 ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "metric", "huge"), [("vip", pb.METRIC_INNER_PRODUCT, 1e38), ("vl2", pb.METRIC_L2, 3e38)]
)
def test_huge_finite_vectors_never_store_or_score_inf_or_nan(stub, name, metric, huge):
    stub.CreateIndex(pb.CreateIndexRequest(name=name, metric=metric), timeout=60)
    code, msg = call_code(_upsert, stub, name, [pb.UpsertItem(id="huge", vector=_vec(huge))])
    assert code == C.INVALID_ARGUMENT, (code, msg)
    assert "message[0].items[0].vector" in msg and "1e+18" in msg, msg
    # Just under the bound is stored and scores finite, whatever the query on this index.
    edge = MAX_VECTOR_NORM / np.sqrt(DIM) * 0.999
    _upsert(
        stub, name, [pb.UpsertItem(id="edge", vector=_vec(edge)), pb.UpsertItem(id="unit", vector=_vec(1.0))]
    )
    for query in (_vec(edge), _vec(-edge), _vec(1.0)):
        hits = stub.Search(pb.SearchRequest(index=name, vector=query, top_k=2), timeout=60).hits
        assert len(hits) == 2 and all(np.isfinite(h.score) for h in hits), [h.score for h in hits]
    code, msg = call_code(stub.Search, pb.SearchRequest(index=name, vector=_vec(huge), top_k=1), timeout=60)
    assert code == C.INVALID_ARGUMENT and msg.startswith("query:") and "1e+18" in msg, (code, msg)


def test_store_refuses_overflowing_vectors_and_cosine_still_normalises(tmp_path):
    with IndexStore(tmp_path) as store:
        store.create("ip", dim=4, metric="ip", encoder_fingerprint="f", encoder_id="e")
        with pytest.raises(InvalidInput, match=r"items\[0\]\.vector .*exceeds 1e\+18"):
            store.upsert("ip", [UpsertItem("a", np.full(4, 1e38, np.float32))])
        with pytest.raises(InvalidInput, match=r"queries\[0\]: L2 norm"):
            store.search("ip", np.full((1, 4), 1e38, np.float32), 1)
        store.create("cos", dim=4, encoder_fingerprint="f", encoder_id="e")
        store.upsert("cos", [UpsertItem("a", np.full(4, 1e38, np.float32))])
        assert store.search("cos", np.full((1, 4), 3e38, np.float32), 1)[0][0].score == pytest.approx(1.0)


# -- 5: Delete cap, rerank with a non-string text, metrics endpoint -----------------------------------
def test_delete_caps_ids_like_every_other_list(stub):
    stub.CreateIndex(pb.CreateIndexRequest(name="del-cap"), timeout=60)
    code, msg = call_code(
        stub.Delete, pb.DeleteRequest(index="del-cap", ids=[f"i{n}" for n in range(MAX_TEXTS + 1)])
    )
    assert code == C.INVALID_ARGUMENT and msg.startswith("ids:") and str(MAX_TEXTS) in msg, (code, msg)
    assert (
        stub.Delete(pb.DeleteRequest(index="del-cap", ids=[f"i{n}" for n in range(MAX_TEXTS)])).deleted == 0
    )


def test_rerank_leaves_out_a_candidate_without_string_text(stub):
    stub.CreateIndex(pb.CreateIndexRequest(name="rr-text"), timeout=60)
    bad = struct_pb2.Struct()
    bad.update({"text": 5})
    items = [pb.UpsertItem(id=f"d{i}", text=f"document number {i} about rivers") for i in range(4)]
    items.append(pb.UpsertItem(id="bad", text="document about rivers", payload=bad))
    _upsert(stub, "rr-text", items)
    stage = pb.RerankStage(method=pb.SCORE_METHOD_BI_ENCODER, candidates=5)
    res = stub.Search(pb.SearchRequest(index="rr-text", text="rivers", top_k=5, rerank=stage), timeout=60)
    assert sorted(h.id for h in res.hits) == ["d0", "d1", "d2", "d3"]  # FAILED_PRECONDITION before
    # No candidate with text at all: still a clear FAILED_PRECONDITION.
    stage = pb.RerankStage(method=pb.SCORE_METHOD_BI_ENCODER, text_field="title")
    code, msg = call_code(
        stub.Search, pb.SearchRequest(index="rr-text", text="rivers", rerank=stage), timeout=60
    )
    assert code == C.FAILED_PRECONDITION and "'title'" in msg, (code, msg)


def test_metrics_endpoint_serves_its_path_only_without_index_names(server, stub):
    stub.CreateIndex(pb.CreateIndexRequest(name="private-customer-name"), timeout=60)
    _upsert(stub, "private-customer-name", [pb.UpsertItem(id="a", vector=_vec(1.0))])
    base = f"http://127.0.0.1:{server.server.metrics_port}"
    body = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    assert "pairsmith_indexes " in body and "pairsmith_open_indexes " in body
    assert "private-customer-name" not in body and 'index="' not in body
    for path in ("/", "/metrics/x", "/favicon.ico", "/debug"):
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(base + path, timeout=10)
        assert ei.value.code == 404, path


# -- 5: .creating-* folders at start ------------------------------------------------------------------
def test_creating_folders_are_removed_at_start_unless_a_live_process_owns_them(tmp_path):
    root = tmp_path / "indexes"
    root.mkdir()
    fresh = root / ".creating-a-0000aaaa"  # a crash a second ago: no age rule keeps it
    owned = root / ".creating-b-0000bbbb"  # a create in progress in another process
    for d in (fresh, owned):
        d.mkdir()
        (d / "store.sqlite").write_bytes(b"partial")
    (root / ".creating-a-0000aaaa.lock").touch()  # its owner is gone: the lock is free
    fd = os.open(root / ".creating-b-0000bbbb.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        IndexStore(tmp_path).close()
        assert not fresh.exists() and not (root / ".creating-a-0000aaaa.lock").exists()
        assert owned.exists()
    finally:
        os.close(fd)
    IndexStore(tmp_path).close()  # the owner went away: removed at the next start
    assert not owned.exists() and not list(root.glob(".creating-*"))


# -- 2: the open-index bound and ListIndexes from manifests -------------------------------------------
def test_idle_indexes_close_beyond_the_bound_and_reopen_with_their_data(tmp_path):
    rng = np.random.default_rng(0)
    vecs = {f"x{i}": rng.standard_normal((5, 8)).astype(np.float32) for i in range(10)}
    with IndexStore(tmp_path, config=StoreConfig(max_open_indexes=3)) as store:
        for name, v in vecs.items():
            store.create(name, dim=8, encoder_fingerprint="f", encoder_id="e")
            store.upsert(name, [UpsertItem(f"{name}-{j}", v[j]) for j in range(5)])
            assert store.open_count <= 3
        assert store.evictions >= 7
        for name, v in vecs.items():  # every one reopens, with every vector
            assert [h[0].id for h in store.search(name, v, 1)] == [f"{name}-{j}" for j in range(5)]
            assert store.get(name).count == 5
            assert store.open_count <= 3
        store.delete("x0", ["x0-0"])
        assert {i.name: i.count for i in store.list()} == {n: 4 if n == "x0" else 5 for n in vecs}


def test_list_reads_manifests_only_and_falls_back_when_one_is_behind(tmp_path, monkeypatch):
    with IndexStore(tmp_path) as store:
        for i in range(20):
            store.create(f"m{i}", dim=4, encoder_fingerprint="f", encoder_id="e")
            store.upsert(f"m{i}", [UpsertItem(f"a{j}", np.ones(4, np.float32) * (j + 1)) for j in range(i)])
    opened: list[str] = []
    real_init = IndexDb.__init__

    def counting(self, path, *a, **kw):
        opened.append(Path(path).parent.name)
        real_init(self, path, *a, **kw)

    monkeypatch.setattr(IndexDb, "__init__", counting)
    reader = IndexStore(tmp_path)
    assert [(i.name, i.count) for i in reader.list()] == sorted((f"m{i}", i) for i in range(20))
    assert opened == []  # no SQLite opened
    # A writer elsewhere (here: a second store in this process) adds items and does not close:
    # its manifest is behind store.sqlite, marked so, and read from SQLite.
    writer = IndexStore(tmp_path)
    writer.upsert("m3", [UpsertItem("new", np.ones(4, np.float32))])
    assert reader.get("m3").count == 4 and opened.count("m3") >= 1
    writer.close()
    opened.clear()
    assert reader.get("m3").count == 4 and opened == []  # the close brought the manifest up to date
    reader.close()


def _serve_limited(tmp: Path, model: Path, nofile: int, *extra: str) -> subprocess.Popen:
    """``pairsmith serve`` under RLIMIT_NOFILE=nofile (SubprocessServer with a preexec limit)."""
    srv = SubprocessServer(tmp, "--model", str(model), "--data-dir", str(tmp / "data"), *extra)
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        kw["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        return real_popen(*a, **kw)

    subprocess.Popen = popen  # type: ignore[misc]
    try:
        return srv.start()
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("bound", ["auto", "off"])
def test_more_indexes_than_descriptors_allow_open_all_answer(tiny_bi_dir, tmp_path, bound):
    # 256 descriptors hold ~40 open indexes (6 each); 70 indexes, each created, upserted, searched.
    extra = () if bound == "auto" else ("--max-open-indexes", "100000")
    srv = _serve_limited(tmp_path, tiny_bi_dir, 256, *extra)
    ch = grpc.insecure_channel(srv.target)
    stub = pb_grpc.PairsmithServiceStub(ch)
    codes: dict[str, int] = {}
    try:
        for i in range(70):
            name = f"fd{i:03d}"
            for label, fn, req in (
                ("create", stub.CreateIndex, pb.CreateIndexRequest(name=name)),
                ("upsert", stub.Upsert, iter([pb.UpsertRequest(index=name, items=[pb.UpsertItem(id="a", vector=_vec(1.0))])])),
                ("search", stub.Search, pb.SearchRequest(index=name, vector=_vec(1.0), top_k=1)),
            ):  # fmt: skip
                code, msg = call_code(fn, req, timeout=60)
                codes[code.name] = codes.get(code.name, 0) + 1
                assert code in (C.OK, C.RESOURCE_EXHAUSTED), (label, name, code, msg)
                if code is C.RESOURCE_EXHAUSTED:
                    assert "file descriptors" in msg, msg
        listed = stub.ListIndexes(pb.ListIndexesRequest(), timeout=60).indexes
    finally:
        ch.close()
        assert srv.terminate() == 0
    if bound == "auto":
        assert codes == {"OK": 210}
        assert len(listed) == 70 and all(i.count == 1 for i in listed)
    assert not list((tmp_path / "data" / "indexes").glob(".creating-*"))
    assert "Traceback" not in srv.log.read_text()


# -- 3: CreateIndex on a full disk ----------------------------------------------------------------------
def test_create_index_on_full_disk_is_resource_exhausted_and_leaves_nothing(server, stub, monkeypatch):
    stub.CreateIndex(pb.CreateIndexRequest(name="full-before"), timeout=60)
    _upsert(stub, "full-before", [pb.UpsertItem(id="a", vector=_vec(1.0))])
    real_create = IndexDb.create

    def full(path, meta):  # SQLite on a full disk: the file is begun, then the write fails
        Path(path).write_bytes(b"SQLite format 3\0")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(IndexDb, "create", staticmethod(full))
    code, msg = call_code(stub.CreateIndex, pb.CreateIndexRequest(name="full-new"), timeout=60)
    assert code == C.RESOURCE_EXHAUSTED and "disk is full" in msg and "'full-new'" in msg, (code, msg)
    indexes = server.config.store_root / "indexes"
    assert not (indexes / "full-new").exists() and not list(indexes.glob(".creating-*"))
    hits = stub.Search(pb.SearchRequest(index="full-before", vector=_vec(1.0), top_k=1), timeout=60).hits
    assert [h.id for h in hits] == ["a"]  # reads keep working
    assert "full-before" in [i.name for i in stub.ListIndexes(pb.ListIndexesRequest()).indexes]
    monkeypatch.setattr(IndexDb, "create", real_create)
    stub.CreateIndex(pb.CreateIndexRequest(name="full-new"), timeout=60)  # space is back


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MB tmpfs (needs root; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip("a real full disk needs a tmpfs mount (root); the injected test covers the rest")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_create_index_on_a_really_full_filesystem(tiny_bi_dir, small_fs):
    st = ServerThread(ServeConfig(model=str(tiny_bi_dir), data_dir=small_fs / "data")).start()
    ch, stub = stub_for(st.target)
    try:
        stub.CreateIndex(pb.CreateIndexRequest(name="before"), timeout=60)
        _upsert(stub, "before", [pb.UpsertItem(id="a", vector=_vec(1.0))])
        with open(small_fs / "ballast", "wb", buffering=0) as fh:
            for size in (1 << 16, 1):
                try:
                    while True:
                        fh.write(b"\0" * size)
                except OSError:
                    pass
        for i in range(3):
            code, msg = call_code(stub.CreateIndex, pb.CreateIndexRequest(name=f"full{i}"), timeout=60)
            assert code == C.RESOURCE_EXHAUSTED, (code, msg)
        assert sorted(p.name for p in (small_fs / "data" / "indexes").iterdir()) == ["before"]
        hits = stub.Search(pb.SearchRequest(index="before", vector=_vec(1.0), top_k=1), timeout=60).hits
        assert [h.id for h in hits] == ["a"]
        assert [i.name for i in stub.ListIndexes(pb.ListIndexesRequest()).indexes] == ["before"]
        (small_fs / "ballast").unlink()
        stub.CreateIndex(pb.CreateIndexRequest(name="after"), timeout=60)
    finally:
        ch.close()
        st.stop()


# -- 4: EmbedStream keeps its pace through the shutdown drain -----------------------------------------
@pytest.mark.slow
def test_embed_stream_keeps_pace_through_the_drain(tiny_bi_dir, tmp_path):
    srv = SubprocessServer(tmp_path, "--model", str(tiny_bi_dir), "--data-dir", str(tmp_path / "d")).start()
    ch = grpc.insecure_channel(srv.target)
    stub = pb_grpc.PairsmithServiceStub(ch)
    got: list[float] = []
    errors: list[str] = []
    t0 = time.monotonic()

    def requests():
        for i in range(60):
            yield pb.EmbedStreamRequest(texts=[f"message {i} text {j} of the stream" for j in range(16)])
            time.sleep(max(0.0, t0 + (i + 1) * 0.1 - time.monotonic()))

    def consume():
        try:
            for _ in stub.EmbedStream(requests(), timeout=60):
                got.append(time.monotonic() - t0)
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")

    th = threading.Thread(target=consume)
    th.start()
    time.sleep(2.0)
    srv.proc.send_signal(signal.SIGTERM)
    th.join(60)
    ch.close()
    assert srv.proc.wait(60) == 0
    assert errors == [] and len(got) == 60
    assert got[-1] < 2.0 + 10.0  # inside the default grace
    after = [t for t in got if t >= 2.0]
    gaps = np.diff([2.0, *after])
    assert gaps.max() < 1.0, np.round(gaps, 2).tolist()  # at the request pace, no bursts
