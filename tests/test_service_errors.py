"""A table of bad requests and the status code each must get; the server stays healthy."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import SERVING, health_status, pb, stub_for

C = grpc.StatusCode
LONG = "word " * 300
DIM = 32  # the tiny models' embedding size
MAX_TEXTS = 8
MAX_TOP_K = 20


@pytest.fixture(scope="module")
def server(tiny_bi_dir, tiny_cross_dir, tmp_path_factory):
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        cross_encoder=str(tiny_cross_dir),
        host="127.0.0.1",
        data_dir=tmp_path_factory.mktemp("err-data"),
        max_texts_per_request=MAX_TEXTS,
        max_top_k=MAX_TOP_K,
        max_message_bytes=128 * 1024,
    )
    st = ServerThread(cfg).start()
    ch, stub = stub_for(st.target)
    stub.CreateIndex(pb.CreateIndexRequest(name="docs"))
    stub.Upsert(iter([pb.UpsertRequest(index="docs", items=[pb.UpsertItem(id="a", text="alpha")])]))
    # An index recorded with another encoder: text queries and text upserts must be refused.
    from pairsmith.service.store.index_store import IndexMetric

    store = st.server.rt.store
    st.call(
        _in_thread(
            lambda: store.create(
                "other",
                dim=DIM,
                metric=IndexMetric.COSINE,
                encoder_fingerprint="0123456789abcdef",
                encoder_id="elsewhere",
            )
        )
    )
    ch.close()
    yield st
    st.stop()


async def _in_thread(fn):
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn)


def vec(n: int) -> bytes:
    return np.ones(n, dtype="<f4").tobytes()


def item(**kw) -> pb.UpsertItem:
    return pb.UpsertItem(**kw)


U, S = "unary", "stream"  # request kinds: one message, or a list of messages (client stream)
BAD = [
    # (id, rpc, kind, request(s), expected code)
    ("embed-too-many-texts", "Embed", U, pb.EmbedRequest(texts=["x"] * (MAX_TEXTS + 1)), C.INVALID_ARGUMENT),
    ("embed-dimensions-zero", "Embed", U, pb.EmbedRequest(texts=["x"], dimensions=0), C.INVALID_ARGUMENT),
    (
        "embed-dimensions-too-big",
        "Embed",
        U,
        pb.EmbedRequest(texts=["x"], dimensions=DIM + 1),
        C.INVALID_ARGUMENT,
    ),
    ("embed-unknown-format", "Embed", U, pb.EmbedRequest(texts=["x"], format=7), C.INVALID_ARGUMENT),
    (
        "embed-too-long-no-truncate",
        "Embed",
        U,
        pb.EmbedRequest(texts=["ok", LONG], truncate=False),
        C.INVALID_ARGUMENT,
    ),
    ("embed-message-too-big", "Embed", U, pb.EmbedRequest(texts=["x" * 200_000]), C.RESOURCE_EXHAUSTED),
    (
        "stream-bad-dimensions",
        "EmbedStream",
        S,
        [pb.EmbedStreamRequest(texts=["x"], dimensions=0)],
        C.INVALID_ARGUMENT,
    ),
    ("score-empty", "Score", U, pb.ScoreRequest(), C.INVALID_ARGUMENT),
    (
        "score-too-many",
        "Score",
        U,
        pb.ScoreRequest(pairs=[pb.TextPair(text_a="a")] * (MAX_TEXTS + 1)),
        C.INVALID_ARGUMENT,
    ),
    (
        "score-unknown-method",
        "Score",
        U,
        pb.ScoreRequest(pairs=[pb.TextPair()], method=9),
        C.INVALID_ARGUMENT,
    ),
    (
        "score-uni",
        "Score",
        U,
        pb.ScoreRequest(pairs=[pb.TextPair()], method=pb.SCORE_METHOD_UNI_ENCODER),
        C.FAILED_PRECONDITION,
    ),
    ("rerank-empty", "Rerank", U, pb.RerankRequest(query="q"), C.INVALID_ARGUMENT),
    ("rerank-top-n-zero", "Rerank", U, pb.RerankRequest(query="q", texts=["a"], top_n=0), C.INVALID_ARGUMENT),
    (
        "rerank-top-n-too-big",
        "Rerank",
        U,
        pb.RerankRequest(query="q", texts=["a"], top_n=MAX_TOP_K + 1),
        C.INVALID_ARGUMENT,
    ),
    (
        "rerank-uni",
        "Rerank",
        U,
        pb.RerankRequest(query="q", texts=["a"], method=pb.SCORE_METHOD_UNI_ENCODER),
        C.FAILED_PRECONDITION,
    ),
    (
        "rerank-long-no-truncate",
        "Rerank",
        U,
        pb.RerankRequest(query="q", texts=[LONG], truncate=False),
        C.INVALID_ARGUMENT,
    ),
    ("search-no-index", "Search", U, pb.SearchRequest(text="q"), C.INVALID_ARGUMENT),
    ("search-unknown-index", "Search", U, pb.SearchRequest(index="nope", text="q"), C.NOT_FOUND),
    ("search-no-query", "Search", U, pb.SearchRequest(index="docs"), C.INVALID_ARGUMENT),
    ("search-top-k-zero", "Search", U, pb.SearchRequest(index="docs", text="q", top_k=0), C.INVALID_ARGUMENT),
    (
        "search-top-k-too-big",
        "Search",
        U,
        pb.SearchRequest(index="docs", text="q", top_k=MAX_TOP_K + 1),
        C.INVALID_ARGUMENT,
    ),
    (
        "search-vector-bytes-wrong",
        "Search",
        U,
        pb.SearchRequest(index="docs", vector=vec(DIM - 1)),
        C.INVALID_ARGUMENT,
    ),
    (
        "search-vector-values-wrong",
        "Search",
        U,
        pb.SearchRequest(index="docs", vector_values=pb.FloatVector(values=[1.0])),
        C.INVALID_ARGUMENT,
    ),
    (
        "search-vector-nan",
        "Search",
        U,
        pb.SearchRequest(index="docs", vector=np.full(DIM, np.nan, "<f4").tobytes()),
        C.INVALID_ARGUMENT,
    ),
    (
        "search-candidates-below-top-k",
        "Search",
        U,
        pb.SearchRequest(index="docs", text="q", top_k=5, rerank=pb.RerankStage(candidates=2)),
        C.INVALID_ARGUMENT,
    ),
    (
        "search-rerank-vector-query",
        "Search",
        U,
        pb.SearchRequest(index="docs", vector=vec(DIM), rerank=pb.RerankStage()),
        C.INVALID_ARGUMENT,
    ),
    (
        "search-rerank-uni",
        "Search",
        U,
        pb.SearchRequest(index="docs", text="q", rerank=pb.RerankStage(method=pb.SCORE_METHOD_UNI_ENCODER)),
        C.FAILED_PRECONDITION,
    ),
    ("search-other-encoder", "Search", U, pb.SearchRequest(index="other", text="q"), C.FAILED_PRECONDITION),
    ("create-no-name", "CreateIndex", U, pb.CreateIndexRequest(), C.INVALID_ARGUMENT),
    ("create-path-traversal", "CreateIndex", U, pb.CreateIndexRequest(name="../evil"), C.INVALID_ARGUMENT),
    ("create-exists", "CreateIndex", U, pb.CreateIndexRequest(name="docs"), C.ALREADY_EXISTS),
    (
        "create-bad-factory",
        "CreateIndex",
        U,
        pb.CreateIndexRequest(name="bad", factory="NoSuchIndex42"),
        C.INVALID_ARGUMENT,
    ),
    (
        "create-unknown-metric",
        "CreateIndex",
        U,
        pb.CreateIndexRequest(name="m", metric=9),
        C.INVALID_ARGUMENT,
    ),
    ("get-unknown", "GetIndex", U, pb.GetIndexRequest(name="nope"), C.NOT_FOUND),
    ("get-no-name", "GetIndex", U, pb.GetIndexRequest(), C.INVALID_ARGUMENT),
    ("drop-unknown", "DropIndex", U, pb.DropIndexRequest(name="nope"), C.NOT_FOUND),
    ("delete-unknown-index", "Delete", U, pb.DeleteRequest(index="nope", ids=["a"]), C.NOT_FOUND),
    ("delete-empty-id", "Delete", U, pb.DeleteRequest(index="docs", ids=[""]), C.INVALID_ARGUMENT),
    ("upsert-empty-stream", "Upsert", S, [], C.INVALID_ARGUMENT),
    (
        "upsert-first-without-index",
        "Upsert",
        S,
        [pb.UpsertRequest(items=[item(id="a", text="t")])],
        C.INVALID_ARGUMENT,
    ),
    (
        "upsert-unknown-index",
        "Upsert",
        S,
        [pb.UpsertRequest(index="nope", items=[item(id="a", text="t")])],
        C.NOT_FOUND,
    ),
    (
        "upsert-no-content",
        "Upsert",
        S,
        [pb.UpsertRequest(index="docs", items=[item(id="a")])],
        C.INVALID_ARGUMENT,
    ),
    (
        "upsert-empty-id",
        "Upsert",
        S,
        [pb.UpsertRequest(index="docs", items=[item(text="t")])],
        C.INVALID_ARGUMENT,
    ),
    (
        "upsert-id-too-long",
        "Upsert",
        S,
        [pb.UpsertRequest(index="docs", items=[item(id="x" * 513, text="t")])],
        C.INVALID_ARGUMENT,
    ),
    (
        "upsert-vector-wrong-dim",
        "Upsert",
        S,
        [pb.UpsertRequest(index="docs", items=[item(id="a", vector=vec(3))])],
        C.INVALID_ARGUMENT,
    ),
    (
        "upsert-index-changes",
        "Upsert",
        S,
        [pb.UpsertRequest(index="docs"), pb.UpsertRequest(index="other")],
        C.INVALID_ARGUMENT,
    ),
    (
        "upsert-too-many-items",
        "Upsert",
        S,
        [pb.UpsertRequest(index="docs", items=[item(id="a", text="t")] * (MAX_TEXTS + 1))],
        C.INVALID_ARGUMENT,
    ),
    (
        "upsert-other-encoder-text",
        "Upsert",
        S,
        [pb.UpsertRequest(index="other", items=[item(id="a", text="t")])],
        C.FAILED_PRECONDITION,
    ),
]


def _payload_too_big() -> pb.UpsertRequest:
    s = struct_pb2.Struct()
    s.update({"blob": "y" * 70_000})
    return pb.UpsertRequest(index="docs", items=[pb.UpsertItem(id="big", text="t", payload=s)])


BAD.append(("upsert-payload-too-big", "Upsert", S, [_payload_too_big()], C.INVALID_ARGUMENT))


def test_table_is_large_enough():
    assert len(BAD) >= 25
    assert len({row[0] for row in BAD}) == len(BAD)


@pytest.mark.parametrize("case", BAD, ids=[row[0] for row in BAD])
def test_bad_request(server, case):
    _, rpc, kind, request, expected = case
    ch, stub = stub_for(server.target)
    method = getattr(stub, rpc)
    with pytest.raises(grpc.RpcError) as ei:
        if kind == U:
            method(request, timeout=30)
        elif rpc == "EmbedStream":
            list(method(iter(request), timeout=30))
        else:
            method(iter(request), timeout=30)
    err = ei.value
    assert err.code() == expected, err.details()
    assert err.details() and "internal error" not in err.details()
    ch.close()


def test_healthy_after_bad_requests(server):
    # Runs after the table (file order): the server still serves good requests.
    ch, stub = stub_for(server.target)
    assert health_status(ch) == SERVING
    assert len(stub.Embed(pb.EmbedRequest(texts=["still fine"])).embeddings) == 1
    assert stub.GetIndex(pb.GetIndexRequest(name="docs")).index.count == 1
    ch.close()


def test_messages_name_field_and_limit(server):
    ch, stub = stub_for(server.target)
    with pytest.raises(grpc.RpcError) as ei:
        stub.Embed(pb.EmbedRequest(texts=["x"] * (MAX_TEXTS + 1)))
    assert "texts" in ei.value.details() and str(MAX_TEXTS) in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Embed(pb.EmbedRequest(texts=["ok", LONG], truncate=False))
    assert "texts[1]" in ei.value.details() and "64" in ei.value.details()
    ch.close()


# Every row of the error table (docs/operations.md) and the tests that make a server answer it.
README_ROWS = {
    "INVALID_ARGUMENT": ["tests/test_service_errors.py::test_bad_request",
                         "tests/test_service_defects.py::test_empty_embed_is_invalid_argument",
                         "tests/test_service_defects.py::test_malformed_protobuf_is_invalid_argument_on_unary_and_streams",
                         "tests/test_service_defects.py::test_factory_refused_before_faiss_builds",
                         "tests/test_service_hardening.py::test_huge_finite_vectors_never_store_or_score_inf_or_nan"],
    "NOT_FOUND": ["tests/test_service_errors.py::test_bad_request",
                  "tests/test_service_defects.py::test_errors_leak_no_paths_or_index_names"],
    "ALREADY_EXISTS": ["tests/test_service_errors.py::test_bad_request"],
    "FAILED_PRECONDITION": ["tests/test_service_errors.py::test_bad_request"],
    "RESOURCE_EXHAUSTED": ["tests/test_service.py::test_overload_is_resource_exhausted",
                           "tests/reliability/test_security.py::test_oversized_message_refused_before_decoding",
                           "tests/reliability/test_security.py::test_rate_limit_per_key",
                           "tests/reliability/test_faults.py::test_full_disk_write_is_resource_exhausted_reads_keep_working",
                           "tests/test_service_hardening.py::test_create_index_on_full_disk_is_resource_exhausted_and_leaves_nothing",
                           "tests/test_service_hardening.py::test_more_indexes_than_descriptors_allow_open_all_answer"],
    "UNAUTHENTICATED": ["tests/test_service_auth.py::test_every_rpc_needs_the_key"],
    "PERMISSION_DENIED": ["tests/test_service_security.py::test_scopes_hold_on_every_rpc"],
    "UNAVAILABLE": ["tests/test_service_lifecycle.py::test_health_transitions",
                    "tests/test_service_defects.py::test_sigterm_drains_embed_stream_and_health_is_not_serving"],
    "DEADLINE_EXCEEDED": ["tests/test_service_lifecycle.py::test_graceful_stop_drains_and_queued_deadline_is_dropped"],
    "INTERNAL": ["tests/reliability/test_fuzz.py::test_server_healthy_after_fuzzing"],
}  # fmt: skip


def test_every_readme_error_row_is_exercised():
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    guide = repo / "docs" / "operations.md"  # the error table's home (moved out of README)
    if not guide.exists():
        pytest.skip("docs/operations.md (the error table) is not in this tree")
    lines = guide.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith("|status|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    assert sorted(rows) == sorted(README_ROWS), "README error table and README_ROWS differ"
    for status, tests in README_ROWS.items():
        for node in tests:
            path, name = node.split("::")
            names = {
                f.name
                for f in ast.walk(ast.parse((repo / path).read_text()))
                if isinstance(f, ast.FunctionDef)
            }
            assert name in names, f"{status}: {node} does not exist"
