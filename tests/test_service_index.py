"""Index lifecycle and Search through the real server (tiny models, real FAISS + SQLite)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from pairsmith.encoders import BiEncoder, CrossEncoder
from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import pb, stub_for

DOCS = [
    f"document {i} talks about {w} and {v}"
    for i, (w, v) in enumerate(
        (w, v)
        for w in ("cats", "dogs", "stocks", "rivers", "music", "code", "tea")
        for v in ("rain", "sun", "snow", "wind", "fog", "ice")
    )
]
QUERIES = ["a question about cats in the rain", "music on a sunny day", "how do rivers freeze", "code"]


@pytest.fixture(scope="module")
def server(tiny_bi_dir, tiny_cross_dir, tmp_path_factory):
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        cross_encoder=str(tiny_cross_dir),
        host="127.0.0.1",
        data_dir=tmp_path_factory.mktemp("idx-data"),
    )
    st = ServerThread(cfg).start()
    yield st
    st.stop()


@pytest.fixture(scope="module")
def stub(server):
    ch, s = stub_for(server.target)
    yield s
    ch.close()


@pytest.fixture(scope="module")
def bi(tiny_bi_dir):
    return BiEncoder.load(str(tiny_bi_dir), device="cpu", backend="torch")


def _payload(**kw) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


def _upsert(stub, name, items, per_message=10, store_text=None):
    msgs = []
    for i in range(0, len(items), per_message):
        m = pb.UpsertRequest(index=name if i == 0 else "", items=items[i : i + per_message])
        if store_text is not None:
            m.store_text = store_text
        msgs.append(m)
    return stub.Upsert(iter(msgs), timeout=60)


@pytest.fixture(scope="module")
def flat(stub):
    info = stub.CreateIndex(pb.CreateIndexRequest(name="flat")).index
    items = [pb.UpsertItem(id=f"d{i}", text=t, payload=_payload(n=i, tag="x")) for i, t in enumerate(DOCS)]
    r = _upsert(stub, "flat", items)
    assert r.upserted == len(DOCS) and r.count == len(DOCS)
    return info


def test_create_get_list(stub, flat, bi):
    assert flat.factory == "IDMap2,Flat" and flat.metric == pb.METRIC_COSINE and flat.dim == bi.dim
    assert flat.encoder_fingerprint == bi.fingerprint
    got = stub.GetIndex(pb.GetIndexRequest(name="flat")).index
    assert got.count == len(DOCS) and got.size_bytes > 0
    names = [i.name for i in stub.ListIndexes(pb.ListIndexesRequest()).indexes]
    assert "flat" in names and names == sorted(names)


def test_search_flat_equals_brute_force(stub, flat, bi):
    doc_vecs = bi.encode(DOCS).vectors
    for q in QUERIES:
        qv = bi.encode([q]).vectors[0]
        scores = doc_vecs @ qv
        order = np.argsort(-scores, kind="stable")[:5]
        r = stub.Search(pb.SearchRequest(index="flat", text=q, top_k=5))
        assert [h.id for h in r.hits] == [f"d{i}" for i in order]
        assert np.allclose([h.score for h in r.hits], scores[order], atol=1e-5)
        assert r.hits[0].payload["tag"] == "x" and r.hits[0].payload["text"] == DOCS[order[0]]
        assert r.timing.search_ms > 0
        # The same query as a vector (bytes and float list) gives the same hits.
        rv = stub.Search(
            pb.SearchRequest(index="flat", vector=qv.astype("<f4").tobytes(), top_k=5, omit_payload=True)
        )
        assert [h.id for h in rv.hits] == [h.id for h in r.hits] and not rv.hits[0].HasField("payload")
        rl = stub.Search(
            pb.SearchRequest(index="flat", vector_values=pb.FloatVector(values=qv.tolist()), top_k=5)
        )
        assert [h.id for h in rl.hits] == [h.id for h in r.hits]


def test_search_with_rerank_stage(stub, flat, bi, tiny_cross_dir):
    ce = CrossEncoder.load(str(tiny_cross_dir), device="cpu", backend="torch")
    q = QUERIES[0]
    first = stub.Search(pb.SearchRequest(index="flat", text=q, top_k=12))
    r = stub.Search(
        pb.SearchRequest(
            index="flat",
            text=q,
            top_k=3,
            rerank=pb.RerankStage(method=pb.SCORE_METHOD_CROSS_ENCODER, candidates=12),
        )
    )
    cand = [h.id for h in first.hits]
    ce_scores = ce.score([(q, DOCS[int(i[1:])]) for i in cand]).values
    best = [cand[i] for i in np.argsort(-ce_scores, kind="stable")[:3]]
    assert [h.id for h in r.hits] == best
    vec_score = {h.id: h.score for h in first.hits}
    for h in r.hits:
        assert h.vector_score == pytest.approx(vec_score[h.id], abs=1e-5)


def test_upsert_replace_vectors_delete_drop(stub, bi):
    stub.CreateIndex(
        pb.CreateIndexRequest(name="life", factory="IDMap2,Flat", metric=pb.METRIC_INNER_PRODUCT)
    )
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((20, bi.dim)).astype(np.float32)
    items = [pb.UpsertItem(id=f"v{i}", vector=v.astype("<f4").tobytes()) for i, v in enumerate(vecs)]
    items.append(pb.UpsertItem(id="t0", text="plain text item"))
    assert _upsert(stub, "life", items, per_message=7).count == 21
    # Replacing an id keeps the count; the new vector wins.
    _upsert(
        stub, "life", [pb.UpsertItem(id="v0", vector_values=pb.FloatVector(values=(vecs[1] * 3).tolist()))]
    )
    info = stub.GetIndex(pb.GetIndexRequest(name="life")).index
    assert info.count == 21 and info.metric == pb.METRIC_INNER_PRODUCT
    r = stub.Search(pb.SearchRequest(index="life", vector=vecs[1].tobytes(), top_k=3))
    ip = vecs @ vecs[1]
    assert r.hits[0].id == "v0" and r.hits[0].score == pytest.approx(3 * ip[1], rel=1e-4)
    d = stub.Delete(pb.DeleteRequest(index="life", ids=["v0", "v1", "nope"]))
    assert d.deleted == 2 and d.count == 19
    ids = {h.id for h in stub.Search(pb.SearchRequest(index="life", vector=vecs[1].tobytes(), top_k=21)).hits}
    assert "v0" not in ids and "v1" not in ids and len(ids) == 19
    stub.DropIndex(pb.DropIndexRequest(name="life"))
    with pytest.raises(grpc.RpcError) as ei:
        stub.GetIndex(pb.GetIndexRequest(name="life"))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


def test_store_text_false_keeps_payload_and_blocks_rerank(stub):
    stub.CreateIndex(pb.CreateIndexRequest(name="notext"))
    _upsert(stub, "notext", [pb.UpsertItem(id="a", text="alpha", payload=_payload(k="v"))], store_text=False)
    hit = stub.Search(pb.SearchRequest(index="notext", text="alpha", top_k=1)).hits[0]
    assert dict(hit.payload) == {"k": "v"}
    with pytest.raises(grpc.RpcError) as ei:
        stub.Search(pb.SearchRequest(index="notext", text="alpha", top_k=1, rerank=pb.RerankStage()))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "text" in ei.value.details()


def test_batch_built_index_serves_search_with_rerank(server, stub, bi, tmp_path):
    """An index from `pairsmith index build` keeps its texts, so the rerank stage works on it."""
    import json

    from pairsmith.service.store.build import BuildConfig, build_index
    from pairsmith.service.store.index_store import IndexStore

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"b{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    # Build into a separate home with the server's encoder, then copy into the server's data dir.
    home = tmp_path / "home"
    with IndexStore(home) as store:
        build_index(store, bi, BuildConfig(corpus, "built"), progress=False)
    import shutil

    shutil.copytree(home / "indexes" / "built", server.config.data_dir / "indexes" / "built")
    r = stub.Search(
        pb.SearchRequest(
            index="built",
            text=QUERIES[1],
            top_k=3,
            rerank=pb.RerankStage(method=pb.SCORE_METHOD_CROSS_ENCODER, candidates=10),
        )
    )
    assert len(r.hits) == 3
    assert all(h.payload.fields["text"].string_value in DOCS for h in r.hits)


def test_client_embed_stream_list_and_drop(server, bi):
    """The Python client's embed_stream, list_indexes and drop_index against the real server."""
    from pairsmith.service.client import PairsmithClient

    batches = [DOCS[:3], DOCS[3:4], DOCS[4:9]]
    with PairsmithClient(server.target, timeout=60) as c:
        got = list(c.embed_stream(iter(batches)))
        assert [len(r.vectors) for r in got] == [3, 1, 5]  # one result per batch, in order sent
        for texts, res in zip(batches, got, strict=True):
            np.testing.assert_allclose(res.vectors, bi.encode(texts).vectors, atol=1e-5)
        short = next(c.embed_stream([DOCS[:2]], dimensions=8, normalize=False))
        assert short.vectors.shape == (2, 8)

        c.create_index("to-drop")
        c.upsert("to-drop", iter([{"id": "a", "text": DOCS[0]}, {"id": "b", "text": DOCS[1]}]))
        listed = {i["name"]: i for i in c.list_indexes()}
        assert int(listed["to-drop"]["count"]) == 2
        c.drop_index("to-drop")
        assert "to-drop" not in {i["name"] for i in c.list_indexes()}
        with pytest.raises(grpc.RpcError) as err:
            c.drop_index("to-drop")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
