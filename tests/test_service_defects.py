"""Regression tests for the service defects of issue 14 (each on a real server on 127.0.0.1:0).

One module-scoped server with small limits serves most tests; the shutdown, bind and
certificate tests start their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from pairsmith.service.store.index_store import IndexStore
from tests.service_util import NOT_SERVING, SERVING, SubprocessServer, call_code, health_status, pb, stub_for

C = grpc.StatusCode
DIM = 32  # the tiny models' embedding size
MAX_TEXTS = 64
MAX_TOP_K = 16
MAX_CHARS = 2000


@pytest.fixture(scope="module")
def server(tiny_bi_dir, tiny_cross_dir, tmp_path_factory):
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        cross_encoder=str(tiny_cross_dir),
        data_dir=tmp_path_factory.mktemp("defects-data"),
        max_texts_per_request=MAX_TEXTS,
        max_top_k=MAX_TOP_K,
        max_text_chars=MAX_CHARS,
        max_factory_nlist=4096,
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


def _create(stub, name: str, factory: str = "IDMap2,Flat", metric=pb.METRIC_COSINE):
    return stub.CreateIndex(pb.CreateIndexRequest(name=name, factory=factory, metric=metric), timeout=60)


def _vec_item(i: str, v: np.ndarray) -> pb.UpsertItem:
    return pb.UpsertItem(id=i, vector=np.asarray(v, dtype="<f4").tobytes())


# -- 1: GetIndex / DropIndex race ------------------------------------------------------------------
def test_getindex_while_index_is_created_upserted_dropped(server, stub):
    # Readers call GetIndex/Search in threads while a writer creates, upserts into and drops the
    # same index in a loop. Before the fix: INTERNAL (FileNotFoundError, "closed database") and a
    # SQLite segfault. Allowed: OK, NOT_FOUND (the index is gone right now).
    stop = threading.Event()
    bad: list[str] = []
    q = np.ones(DIM, dtype="<f4").tobytes()

    def reader():
        ch, s = stub_for(server.target)
        while not stop.is_set():
            for call in (
                lambda: s.GetIndex(pb.GetIndexRequest(name="race"), timeout=30),
                lambda: s.Search(pb.SearchRequest(index="race", vector=q, top_k=3), timeout=30),
                lambda: s.ListIndexes(pb.ListIndexesRequest(), timeout=30),
            ):
                code, msg = call_code(call)
                if code not in (C.OK, C.NOT_FOUND):
                    bad.append(f"{code.name}: {msg}")
        ch.close()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(0)
    try:
        for round_ in range(25):
            _create(stub, "race")
            items = [_vec_item(f"r{round_}-{j}", rng.normal(size=DIM)) for j in range(20)]
            stub.Upsert(iter([pb.UpsertRequest(index="race", items=items)]), timeout=60)
            stub.DropIndex(pb.DropIndexRequest(name="race"), timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert bad == []
    assert health_status(grpc.insecure_channel(server.target)) == SERVING


def test_store_drop_never_closes_what_a_reader_holds(tmp_path):
    # Store level, deterministic: a reader holds the handle (reference) while drop() runs; the
    # database stays open for it and is released by the last user.
    store = IndexStore(tmp_path)
    store.create("held", dim=4, encoder_fingerprint="f", encoder_id="e")
    store.upsert("held", [])
    with store._use("held") as h:
        store.drop("held")
        assert h.dropped and not h.released
        assert h.db.count() == 0  # still usable: not closed under the reader
    assert h.released
    store.close()


# -- 2: factory limits (and factory strings that crash FAISS) -------------------------------------
@pytest.mark.parametrize(
    ("factory", "why"),
    [
        ("IVF100000000,Flat", "limit"),  # 46 s and 17.8 GB in FAISS before the fix
        ("IVF10000000", "limit"),
        ("HNSW100000", "limit"),
        ("IVF64,PQ8x16", "limit"),
        ("HNSW0", "below"),  # FAISS aborts the process (SIGABRT) on M=0
        ("HNSW1", "below"),  # ... and segfaults on M=1
        ("IVF0,Flat", "below"),
        ("IVF4,PQ8x0", "below"),  # segfault
        ("RR0,Flat", "below"),  # segfault
        ("IVF4,SQ0", "not supported"),  # segfault
        ("LSQ4x4", "not supported"),
        ("NSG32", "not supported"),  # hangs
        ("IMI2x20,Flat", "not supported"),
        ("IDMap,IDMap,Flat", "only come first"),
    ],
)
def test_factory_refused_before_faiss_builds(stub, factory, why):
    t0 = time.perf_counter()
    code, msg = call_code(_create, stub, "big", factory)
    assert code == C.INVALID_ARGUMENT, msg
    assert why in msg and "factory" in msg, msg
    assert time.perf_counter() - t0 < 5


# -- 3: per-text character cap ---------------------------------------------------------------------
def test_text_over_char_cap_refused_early_and_in_info(stub):
    assert stub.Info(pb.InfoRequest()).max_text_chars == MAX_CHARS
    big = "x" * (MAX_CHARS + 1)
    cases = [
        (stub.Embed, pb.EmbedRequest(texts=["ok", big]), "texts[1]"),
        (stub.Score, pb.ScoreRequest(pairs=[pb.TextPair(text_a="a", text_b=big)]), "pairs[0].text_b"),
        (stub.Rerank, pb.RerankRequest(query=big, texts=["a"]), "query:"),
        (stub.Rerank, pb.RerankRequest(query="q", texts=["a", big]), "texts[1]"),
    ]
    for method, req, field in cases:
        code, msg = call_code(method, req, timeout=30)
        assert code == C.INVALID_ARGUMENT and field in msg and str(MAX_CHARS) in msg, msg
    assert len(stub.Embed(pb.EmbedRequest(texts=["x" * MAX_CHARS])).embeddings) == 1


def test_big_request_tokenises_on_its_own_pool(tiny_bi_dir, tmp_path):
    # A request over big_request_chars must not take the shared tokenizer pool: while a slow
    # big request holds the big pool, a small Embed still answers at once.
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        data_dir=tmp_path,
        big_request_chars=1000,
        tokenizer_threads=1,
    )
    st = ServerThread(cfg).start()
    try:
        gate = threading.Event()
        tok = st.server.rt.bi_batcher.tokenizer
        real = tok.encode

        def slow_encode(texts):
            if sum(map(len, texts)) > 1000:
                assert gate.wait(30)
            return real(texts)

        tok.encode = slow_encode
        ch, s = stub_for(st.target)
        big = s.Embed.future(pb.EmbedRequest(texts=["y" * 1500]), timeout=60)
        time.sleep(0.3)
        t0 = time.perf_counter()
        assert len(s.Embed(pb.EmbedRequest(texts=["small"]), timeout=10).embeddings) == 1
        assert time.perf_counter() - t0 < 5  # would wait for the gate (30 s) on a shared pool
        assert not big.done()
        gate.set()
        assert len(big.result().embeddings) == 1
        ch.close()
    finally:
        st.stop()


# -- 4: insecure defaults ----------------------------------------------------------------------------
def test_default_bind_is_loopback_unless_key_or_host(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("k" * 32 + "\n")
    keys.chmod(0o600)
    assert ServeConfig().bind_host == "127.0.0.1"
    assert ServeConfig().metrics_host == "127.0.0.1"
    assert ServeConfig(api_key_file=keys).bind_host == "0.0.0.0"
    assert ServeConfig(host="0.0.0.0").bind_host == "0.0.0.0"
    assert ServeConfig(host="127.0.0.1", api_key_file=keys).bind_host == "127.0.0.1"


def test_metrics_endpoint_binds_its_own_host(server):
    port = server.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "pairsmith_inflight_requests" in text
    sock = server.server.metrics._http.socket
    assert sock.getsockname()[0] == "127.0.0.1"  # not 0.0.0.0 (it ignored --host before)


# -- 5: malformed protobuf ---------------------------------------------------------------------------
def _ld(field: int, payload: bytes) -> bytes:
    n, out = len(payload), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes([(field << 3) | 2]) + bytes(out) + payload


def _deep_struct(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):  # Struct{fields: {"x": Value{struct_value: inner}}}
        inner = _ld(1, _ld(1, b"x") + _ld(2, _ld(5, inner)))
    return inner


BAD_UTF8_EMBED = _ld(1, b"\xff\xfe")  # EmbedRequest.texts[0] = invalid UTF-8
DEEP_UPSERT = _ld(1, b"docs") + _ld(2, _ld(1, b"a") + _ld(2, b"t") + _ld(5, _deep_struct(60)))


def _raw(channel, method: str, kind: str):
    ident = lambda b: b  # noqa: E731
    path = f"/pairsmith.v1.PairsmithService/{method}"
    return getattr(channel, kind)(path, request_serializer=ident, response_deserializer=ident)


def test_malformed_protobuf_is_invalid_argument_on_unary_and_streams(server):
    ch = grpc.insecure_channel(server.target)
    before = server.server.metrics.decode_failures.labels("Embed")._value.get()
    cases = [
        (lambda: _raw(ch, "Embed", "unary_unary")(BAD_UTF8_EMBED, timeout=10)),
        (lambda: _raw(ch, "GetIndex", "unary_unary")(b"\x0a\x03\xff\xff\xff", timeout=10)),
        (lambda: list(_raw(ch, "EmbedStream", "stream_stream")(iter([BAD_UTF8_EMBED]), timeout=10))),
        (lambda: _raw(ch, "Upsert", "stream_unary")(iter([DEEP_UPSERT]), timeout=10)),
    ]
    for call in cases:
        code, msg = call_code(call)
        assert code == C.INVALID_ARGUMENT, (code, msg)
        assert "malformed" in msg and "Traceback" not in msg
    assert server.server.metrics.decode_failures.labels("Embed")._value.get() == before + 1
    assert health_status(ch) == SERVING
    ch.close()


# -- 6: SIGTERM drains an in-flight EmbedStream; health says NOT_SERVING meanwhile --------------------
def test_sigterm_drains_embed_stream_and_health_is_not_serving(tiny_bi_dir, tmp_path):
    srv = SubprocessServer(tmp_path, "--model", str(tiny_bi_dir), "--data-dir", str(tmp_path / "d")).start()
    ch = grpc.insecure_channel(srv.target)
    stub = pb_stub(ch)
    n = 40
    sent_five = threading.Event()

    def requests():
        for i in range(n):
            if i == 5:
                sent_five.set()
            yield pb.EmbedStreamRequest(texts=[f"message {i}"])
            time.sleep(0.05)

    replies: list = []
    errors: list = []

    def consume():
        try:
            for r in stub.EmbedStream(requests(), timeout=60):
                replies.append(r.sequence)
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")

    t = threading.Thread(target=consume)
    t.start()
    assert sent_five.wait(30)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ch2 = grpc.insecure_channel(srv.target)
    assert health_status(ch2) == NOT_SERVING  # UNAVAILABLE before the fix
    code, _ = call_code(pb_stub(ch2).Embed, pb.EmbedRequest(texts=["new call"]), timeout=10)
    assert code == C.UNAVAILABLE
    t.join(60)
    assert errors == [] and replies == list(range(n))
    assert srv.proc.wait(60) == 0
    log = srv.log.read_text()
    assert "never retrieved" not in log and "Traceback" not in log
    ch.close()
    ch2.close()


def pb_stub(channel):
    from tests.service_util import pb_grpc

    return pb_grpc.PairsmithServiceStub(channel)


# -- 7, 8, 9: index name, Rerank default top_n, empty Embed -----------------------------------------
@pytest.mark.parametrize(
    "name", ["abc\n", "abc\n\n", "../x", "a/b", "/abs", "a\x00b", "ａbc", "a" * 65, "Abc"]
)
def test_index_names_that_could_escape_or_confuse_are_refused(server, stub, name):
    code, msg = call_code(_create, stub, name)
    assert code == C.INVALID_ARGUMENT and "name" in msg
    root = server.config.store_root / "indexes"
    assert not [p for p in root.iterdir() if p.name.startswith("abc") or "\n" in p.name]


def test_rerank_without_top_n_returns_up_to_max_top_k(stub):
    texts = [f"candidate {i}" for i in range(MAX_TOP_K + 8)]
    res = stub.Rerank(pb.RerankRequest(query="q", texts=texts, method=pb.SCORE_METHOD_BI_ENCODER))
    assert len(res.results) == MAX_TOP_K  # refused with "top_n: must be in 1..16" before the fix
    code, msg = call_code(stub.Rerank, pb.RerankRequest(query="q", texts=texts, top_n=MAX_TOP_K + 1))
    assert code == C.INVALID_ARGUMENT and "top_n" in msg


def test_empty_embed_is_invalid_argument(stub):
    code, msg = call_code(stub.Embed, pb.EmbedRequest(texts=[]), timeout=10)
    assert code == C.INVALID_ARGUMENT and "texts" in msg and "empty" in msg
    code, msg = call_code(lambda: list(stub.EmbedStream(iter([pb.EmbedStreamRequest()]), timeout=10)))
    assert code == C.INVALID_ARGUMENT and "message[0].texts" in msg


# -- 10: safe normalisation ----------------------------------------------------------------------------
def test_huge_and_tiny_vectors_normalise_and_zero_is_refused(stub):
    _create(stub, "scale")
    rng = np.random.default_rng(1)
    u, w = rng.normal(size=DIM), rng.normal(size=DIM)
    items = [_vec_item("huge", 1e38 * u / np.abs(u).max()), _vec_item("tiny", 1e-30 * w)]
    stub.Upsert(iter([pb.UpsertRequest(index="scale", items=items)]))
    for ident, direction in (("huge", u), ("tiny", w)):
        for scale in (1e38 / np.abs(direction).max(), 1e-30, 1.0):
            q = (scale * direction).astype("<f4").tobytes()
            hits = stub.Search(pb.SearchRequest(index="scale", vector=q, top_k=2)).hits
            assert hits[0].id == ident and hits[0].score == pytest.approx(1.0, abs=1e-5)
    code, msg = call_code(
        stub.Upsert, iter([pb.UpsertRequest(index="scale", items=[_vec_item("z", np.zeros(DIM))])])
    )
    assert code == C.INVALID_ARGUMENT and "zero vector" in msg
    stub.DropIndex(pb.DropIndexRequest(name="scale"))


# -- 11: Upsert text size checked before embedding, naming the text ----------------------------------
def test_upsert_text_limits_name_the_text_and_embed_nothing(server, stub):
    _create(stub, "texts")
    batches_before = server.server.rt.bi_batcher.batches_run
    big = pb.UpsertItem(id="big", text="z" * (MAX_CHARS + 1))
    code, msg = call_code(stub.Upsert, iter([pb.UpsertRequest(index="texts", items=[big])]))
    assert code == C.INVALID_ARGUMENT and "items[0].text" in msg and str(MAX_CHARS) in msg, msg
    # A text under the char cap whose stored copy (payload.text) plus payload exceeds 64 KiB.
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update({"blob": "b" * 65_000})
    item = pb.UpsertItem(id="p", text="t" * 1000, payload=s)
    code, msg = call_code(stub.Upsert, iter([pb.UpsertRequest(index="texts", items=[item])]))
    assert code == C.INVALID_ARGUMENT and "items[0].text" in msg and "store_text" in msg, msg
    assert server.server.rt.bi_batcher.batches_run == batches_before  # refused before embedding


# -- 12: messages, metrics, start-up errors, leftovers, reflection --------------------------------------
def test_errors_leak_no_paths_or_index_names(server, stub):
    _create(stub, "secret-name")
    code, msg = call_code(stub.GetIndex, pb.GetIndexRequest(name="nope"))
    assert code == C.NOT_FOUND
    assert "secret-name" not in msg and str(server.config.store_root) not in msg and "/" not in msg
    code, msg = call_code(_create, stub, "pq", "IVF16,PQ7")  # 32 % 7 != 0: a FAISS C++ assertion
    assert code == C.INVALID_ARGUMENT, msg
    assert ".cpp" not in msg and "/" not in msg and "Error in" not in msg, msg


def test_inflight_gauge_moves(server, tiny_bi_dir):
    rt = server.server.rt
    seen: list[float] = []
    gate = threading.Event()
    tok = rt.bi_batcher.tokenizer
    real = tok.encode

    def slow(texts):
        gate.wait(10)
        return real(texts)

    tok.encode = slow
    try:
        ch, s = stub_for(server.target)
        fut = s.Embed.future(pb.EmbedRequest(texts=["held"]), timeout=30)
        for _ in range(100):
            seen.append(server.server.metrics.inflight._value.get())
            if seen[-1] >= 1:
                break
            time.sleep(0.02)
        gate.set()
        fut.result()
        ch.close()
    finally:
        tok.encode = real
        gate.set()
    assert max(seen) >= 1
    time.sleep(0.1)
    assert server.server.metrics.inflight._value.get() == 0


def _serve_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "pairsmith", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_busy_port_and_cert_mismatch_are_one_line_errors(server, tiny_bi_dir, tmp_path):
    res = _serve_cli("--model", str(tiny_bi_dir), "--data-dir", str(tmp_path), "--port", str(server.port))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "cannot listen on" in res.stderr, res.stderr[-2000:]
    for a, b in (("a", "b"),):
        for stem in (a, b):
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key",
                 "-out", f"{stem}.pem", "-days", "1", "-subj", "/CN=localhost"],
                cwd=tmp_path, check=True, capture_output=True,
            )  # fmt: skip
    res = _serve_cli(
        "--model", str(tiny_bi_dir), "--data-dir", str(tmp_path), "--port", "0",
        "--tls-cert", str(tmp_path / "a.pem"), "--tls-key", str(tmp_path / "b.key"),
    )  # fmt: skip
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "does not belong to the certificate" in res.stderr, res.stderr[
        -2000:
    ]


def test_leftover_create_and_drop_folders_are_cleaned_at_start(tmp_path):
    root = tmp_path / "indexes"
    root.mkdir()
    dropped = root / ".dropped-x-1234abcd"
    creating = root / ".creating-y-1234abcd"
    for d in (dropped, creating):
        d.mkdir()
        (d / "store.sqlite").write_bytes(b"junk")
    old = time.time() - 3600
    os.utime(creating, (old, old))
    IndexStore(tmp_path).close()
    assert not dropped.exists() and not creating.exists()


def test_reflection_v1_and_v1alpha_are_served(server):
    from grpc_reflection.v1alpha import reflection_pb2

    ch = grpc.insecure_channel(server.target)
    for version in ("v1", "v1alpha"):
        call = ch.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (resp,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in resp.list_services_response.service}
        assert "pairsmith.v1.PairsmithService" in names, version
    ch.close()


# -- issue 9: the warm-up must calibrate the batch planner ----------------------------------------------
@pytest.mark.parametrize("warmup", [True, False])
def test_warmup_calibrates_the_batch_planner(tiny_bi_dir, tiny_cross_dir, tmp_path, monkeypatch, warmup):
    # The planner weighs padding against the per-forward overhead it measures at warm-up; a server
    # that skips calibration plans every batch with the 64-token placeholder.
    from pairsmith.service.batcher import TokenBatcher

    calls: list[tuple[str, float]] = []
    real = TokenBatcher.calibrate

    def spy(self, *a, **kw):
        value = real(self, *a, **kw)
        calls.append((self.name, value))
        return value

    monkeypatch.setattr(TokenBatcher, "calibrate", spy)
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        cross_encoder=str(tiny_cross_dir),
        data_dir=tmp_path,
        warmup=warmup,
    )
    st = ServerThread(cfg).start()
    try:
        rt = st.server.rt
        if warmup:
            assert sorted(n for n, _ in calls) == ["bi", "cross"]
            measured = dict(calls)
            assert rt.bi_batcher.forward_overhead_tokens == measured["bi"]
            assert rt.cross_batcher.forward_overhead_tokens == measured["cross"]
        else:
            assert calls == []
    finally:
        st.stop()
