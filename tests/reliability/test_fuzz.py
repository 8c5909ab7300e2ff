"""Property-based fuzzing of every request message against a real server (hypothesis).

Random Unicode and control characters, invalid UTF-8 and random bytes at the wire level,
empty and huge strings, 100k-item lists, NaN/Inf and wrong-dimension vectors, out-of-range
``top_k``/``top_n``/``dimensions``/``candidates``, duplicate ids in one stream, malformed index
names and factory strings, unknown enum values, 1 ms deadlines and cancelled streams. Every
call must end in a documented status code (never INTERNAL, UNKNOWN or UNIMPLEMENTED) and the
server must stay healthy. Counts and codes seen are written to ``$PAIRSMITH_RELIABILITY_OUT``.
"""

from __future__ import annotations

import collections
import json
import os
import struct

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.reliability.conftest import FUZZ_EXAMPLES, RESULTS_DIR
from tests.service_util import SERVING, health_status, pb, stub_for

C = grpc.StatusCode
DIM = 32
# The README's error table: what a client may see. CANCELLED / DEADLINE_EXCEEDED come from
# the client's own cancel and 1 ms deadlines.
DOCUMENTED = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.ALREADY_EXISTS,
    C.FAILED_PRECONDITION,
    C.RESOURCE_EXHAUSTED,
    C.UNAVAILABLE,
    C.DEADLINE_EXCEEDED,
    C.CANCELLED,
}
SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("PAIRSMITH_FUZZ_RANDOM") != "1",  # reproducible unless asked
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def server(tiny_bi_dir, tiny_cross_dir, tmp_path_factory):
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        cross_encoder=str(tiny_cross_dir),
        data_dir=tmp_path_factory.mktemp("fuzz-data"),
        max_texts_per_request=64,
        max_top_k=50,
        max_text_chars=20_000,
        max_message_bytes=4 * 1024 * 1024,
    )
    st_ = ServerThread(cfg).start()
    ch, stub = stub_for(st_.target)
    stub.CreateIndex(pb.CreateIndexRequest(name="docs"))
    stub.CreateIndex(pb.CreateIndexRequest(name="graph", factory="HNSW16"))
    items = [pb.UpsertItem(id=f"d{i}", text=f"document number {i}") for i in range(40)]
    for name in ("docs", "graph"):
        stub.Upsert(iter([pb.UpsertRequest(index=name, items=items)]))
    ch.close()
    yield st_
    st_.stop()
    if RESULTS_DIR:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        doc = {rpc: {"examples": sum(c.values()), "codes": dict(c)} for rpc, c in sorted(SEEN.items())}
        with open(os.path.join(RESULTS_DIR, "fuzz.json"), "w") as fh:
            json.dump(doc, fh, indent=2)


@pytest.fixture(scope="module")
def stub(server):
    ch, s = stub_for(server.target, [("grpc.max_send_message_length", 64 * 1024 * 1024)])
    yield s
    ch.close()


def _call(rpc: str, fn) -> grpc.StatusCode:
    try:
        fn()
        code = C.OK
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details() or ""
        assert code in DOCUMENTED, f"{rpc}: undocumented {code.name}: {details[:500]}"
        assert "internal error" not in details and "Traceback" not in details, details[:500]
    SEEN[rpc][code.name] += 1
    return code


# -- strategies -------------------------------------------------------------------------------
chars = st.characters(blacklist_categories=("Cs",))  # lone surrogates cannot be encoded as UTF-8
texts = st.one_of(
    st.text(chars, max_size=200),
    st.sampled_from(["", " ", "\x00", "\n\t\r", "\u202e\u200b", "💥" * 50, "a" * 25_000, "word " * 2000]),
)
text_lists = st.one_of(
    st.lists(texts, max_size=12),
    st.sampled_from([[], [""] * 65, ["x"] * 100_000]),
)
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 31, 32, 33, 50, 51, 1000, 2**32 - 1]))
enum_values = st.integers(-3, 40)
names = st.one_of(
    st.sampled_from(
        [
            "docs",
            "graph",
            "",
            "..",
            "../docs",
            "a/b",
            "/etc",
            "a\x00b",
            "ｄocs",
            "docs\n",
            "x" * 65,
            "NEW",
            "new",
        ]
    ),
    st.text(chars, max_size=70),
)
factories = st.one_of(
    st.sampled_from(
        ["IDMap2,Flat", "Flat", "HNSW32", "IVF4,Flat", "IVF100000000,Flat", "PQ7", "IVF16,PQ8x16", "LSH99999999",
         "IMI2x30,Flat", "nonsense", "", " ", "HNSW0", "IVF0,Flat", "OPQ999999_64,IVF1,PQ8"]
    ),
    st.text(chars, max_size=40),
)  # fmt: skip
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
vector_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(floats, min_size=DIM, max_size=DIM).map(lambda v: struct.pack(f"<{len(v)}f", *v)),
    st.just(b"\x00" * 4 * DIM),
    st.just(struct.pack(f"<{DIM}f", *([1e38] * DIM))),
)
float_vectors = st.lists(floats, max_size=40).map(lambda v: pb.FloatVector(values=v))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(chars, max_size=30)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.one_of(st.none(), st.dictionaries(st.text(max_size=10), json_values, max_size=5))
timeouts = st.sampled_from([0.001, 30.0, 30.0, 30.0])


def _struct(d: dict | None):
    if d is None:
        return None
    s = struct_pb2.Struct()
    try:
        s.update(d)
    except (ValueError, TypeError):
        return None
    return s


@st.composite
def embed_requests(draw, cls=pb.EmbedRequest):
    req = cls(texts=draw(text_lists), format=draw(enum_values))
    for field, strat in (("normalize", st.booleans()), ("truncate", st.booleans()), ("dimensions", u32)):
        if draw(st.booleans()):
            setattr(req, field, draw(strat))
    return req


@st.composite
def score_requests(draw):
    pairs = draw(st.lists(st.tuples(texts, texts), max_size=10))
    req = pb.ScoreRequest(
        pairs=[pb.TextPair(text_a=a, text_b=b) for a, b in pairs],
        method=draw(enum_values),
        raw_scores=draw(st.booleans()),
    )
    if draw(st.booleans()):
        req.truncate = draw(st.booleans())
    return req


@st.composite
def rerank_requests(draw):
    req = pb.RerankRequest(
        query=draw(texts), texts=draw(text_lists), method=draw(enum_values), return_text=draw(st.booleans())
    )
    if draw(st.booleans()):
        req.top_n = draw(u32)
    return req


@st.composite
def search_requests(draw):
    req = pb.SearchRequest(index=draw(names), omit_payload=draw(st.booleans()))
    which = draw(st.sampled_from(["text", "vector", "vector_values", None]))
    if which == "text":
        req.text = draw(texts)
    elif which == "vector":
        req.vector = draw(vector_bytes)
    elif which == "vector_values":
        req.vector_values.CopyFrom(draw(float_vectors))
    if draw(st.booleans()):
        req.top_k = draw(u32)
    if draw(st.booleans()):
        req.rerank.method = draw(enum_values)
        if draw(st.booleans()):
            req.rerank.candidates = draw(u32)
        if draw(st.booleans()):
            req.rerank.text_field = draw(st.sampled_from(["text", "missing", ""]))
    return req


@st.composite
def upsert_items(draw):
    item = pb.UpsertItem(
        id=draw(st.one_of(st.sampled_from(["a", "a", "b", "", "x" * 600]), st.text(chars, max_size=20)))
    )
    which = draw(st.sampled_from(["text", "vector", "vector_values", None]))
    if which == "text":
        item.text = draw(texts)
    elif which == "vector":
        item.vector = draw(vector_bytes)
    elif which == "vector_values":
        item.vector_values.CopyFrom(draw(float_vectors))
    p = _struct(draw(payloads))
    if p is not None:
        item.payload.CopyFrom(p)
    return item


@st.composite
def upsert_streams(draw):
    msgs = []
    for _ in range(draw(st.integers(0, 3))):
        req = pb.UpsertRequest(index=draw(st.sampled_from(["docs", "graph", "", "nope", "docs"])))
        req.items.extend(draw(st.lists(upsert_items(), max_size=6)))
        if draw(st.booleans()):
            req.store_text = draw(st.booleans())
        msgs.append(req)
    return msgs


# -- one test per RPC ---------------------------------------------------------------------------
@FUZZ
@given(req=st.just(pb.InfoRequest()), timeout=timeouts)
def test_fuzz_info(stub, req, timeout):
    _call("Info", lambda: stub.Info(req, timeout=timeout))


@FUZZ
@given(req=embed_requests(), timeout=timeouts)
def test_fuzz_embed(stub, req, timeout):
    _call("Embed", lambda: stub.Embed(req, timeout=timeout))


@FUZZ
@given(
    msgs=st.lists(embed_requests(pb.EmbedStreamRequest), max_size=4),
    cancel_after=st.sampled_from([None, None, 0, 1]),
    timeout=timeouts,
)
def test_fuzz_embed_stream(stub, msgs, cancel_after, timeout):
    def go():
        call = stub.EmbedStream(iter(msgs), timeout=timeout)
        for n, _ in enumerate(call):
            if cancel_after is not None and n >= cancel_after:
                call.cancel()

    _call("EmbedStream", go)


@FUZZ
@given(req=score_requests(), timeout=timeouts)
def test_fuzz_score(stub, req, timeout):
    _call("Score", lambda: stub.Score(req, timeout=timeout))


@FUZZ
@given(req=rerank_requests(), timeout=timeouts)
def test_fuzz_rerank(stub, req, timeout):
    _call("Rerank", lambda: stub.Rerank(req, timeout=timeout))


@FUZZ
@given(req=search_requests(), timeout=timeouts)
def test_fuzz_search(stub, req, timeout):
    _call("Search", lambda: stub.Search(req, timeout=timeout))


@FUZZ
@given(name=names, factory=st.one_of(st.none(), factories), metric=enum_values, timeout=timeouts)
def test_fuzz_create_get_drop_index(stub, name, factory, metric, timeout):
    req = pb.CreateIndexRequest(name=name, metric=metric)
    if factory is not None:
        req.factory = factory
    code = _call("CreateIndex", lambda: stub.CreateIndex(req, timeout=timeout))
    _call("GetIndex", lambda: stub.GetIndex(pb.GetIndexRequest(name=name), timeout=timeout))
    if code == C.OK and name not in ("docs", "graph"):
        _call("DropIndex", lambda: stub.DropIndex(pb.DropIndexRequest(name=name), timeout=30))


@FUZZ
@given(name=names.filter(lambda n: n not in ("docs", "graph")), timeout=timeouts)
def test_fuzz_drop_index(stub, name, timeout):
    _call("DropIndex", lambda: stub.DropIndex(pb.DropIndexRequest(name=name), timeout=timeout))


@FUZZ
@given(msgs=upsert_streams(), timeout=timeouts)
def test_fuzz_upsert(stub, msgs, timeout):
    _call("Upsert", lambda: stub.Upsert(iter(msgs), timeout=timeout))


@FUZZ
@given(
    index=st.sampled_from(["docs", "graph", "nope", "", "../x"]),
    ids=st.one_of(st.lists(st.text(chars, max_size=20), max_size=10), st.just(["z"] * 200_000)),
    timeout=timeouts,
)
def test_fuzz_delete(stub, index, ids, timeout):
    _call("Delete", lambda: stub.Delete(pb.DeleteRequest(index=index, ids=ids), timeout=timeout))


@FUZZ
@given(timeout=timeouts)
def test_fuzz_list_indexes(stub, timeout):
    _call("ListIndexes", lambda: stub.ListIndexes(pb.ListIndexesRequest(), timeout=timeout))


METHODS = {
    m.name: (m.client_streaming, m.server_streaming)
    for m in pb.DESCRIPTOR.services_by_name["PairsmithService"].methods
}
VALID = {
    "Embed": pb.EmbedRequest(texts=["hello"]).SerializeToString(),
    "Search": pb.SearchRequest(index="docs", text="x", top_k=3).SerializeToString(),
    "Upsert": pb.UpsertRequest(index="docs", items=[pb.UpsertItem(id="m", text="t")]).SerializeToString(),
    "Score": pb.ScoreRequest(pairs=[pb.TextPair(text_a="a", text_b="b")]).SerializeToString(),
}


@FUZZ
@given(
    method=st.sampled_from(sorted(METHODS)),
    raw=st.one_of(
        st.binary(max_size=300),
        # flip bytes of a valid message: invalid UTF-8, broken lengths, unknown fields
        st.tuples(
            st.sampled_from(sorted(VALID)),
            st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=4),
        ),
    ),
)
def test_fuzz_raw_bytes_every_method(server, method, raw):
    if isinstance(raw, tuple):
        data = bytearray(VALID[raw[0]])
        for pos, val in raw[1]:
            if pos < len(data):
                data[pos] = val
        raw = bytes(data)
    ch = grpc.insecure_channel(server.target)
    ident = lambda b: b  # noqa: E731
    cs, ss = METHODS[method]
    kind = {(False, False): "unary_unary", (True, False): "stream_unary", (True, True): "stream_stream"}[
        (cs, ss)
    ]
    call = getattr(ch, kind)(
        f"/pairsmith.v1.PairsmithService/{method}", request_serializer=ident, response_deserializer=ident
    )

    def go():
        if kind == "unary_unary":
            call(raw, timeout=30)
        elif kind == "stream_unary":
            call(iter([raw]), timeout=30)
        else:
            list(call(iter([raw]), timeout=30))

    try:
        _call(f"raw:{method}", go)
    finally:
        ch.close()


def test_server_healthy_after_fuzzing(server, stub):
    # Runs last in this file: the server answers, and nothing INTERNAL was ever counted.
    ch = grpc.insecure_channel(server.target)
    assert health_status(ch) == SERVING
    assert len(stub.Embed(pb.EmbedRequest(texts=["still fine"])).embeddings) == 1
    ch.close()
    codes = server.server.metrics.requests
    internal = sum(
        s.value for m in codes.collect() for s in m.samples if s.labels.get("code") in ("INTERNAL", "UNKNOWN")
    )
    assert internal == 0
