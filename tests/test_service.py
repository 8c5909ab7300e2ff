"""End-to-end tests of the model RPCs on a real server (127.0.0.1, port 0, tiny random models)."""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from pairsmith.encoders import Activation, BiEncoder, CrossEncoder
from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import SERVING, health_status, pb, stub_for

TEXTS = [
    "A man is playing a guitar.",
    "Hi",
    "",
    "The quick brown fox jumps over the lazy dog near the quiet river bank at dawn.",
    "Ünïcödé tëxt wörks töö — 東京",
    "Stocks rallied sharply for three months.",
]
LONG = "word " * 300  # > 64 tokens, the tiny models' limit


@pytest.fixture(scope="module")
def server(tiny_bi_dir, tiny_cross_dir, tmp_path_factory):
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        cross_encoder=str(tiny_cross_dir),
        host="127.0.0.1",
        data_dir=tmp_path_factory.mktemp("svc-data"),
        max_texts_per_request=16,
        max_top_k=50,
        max_batch_tokens=512,
        metrics_port=0,
        metrics_host="127.0.0.1",
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


def _vectors(resp) -> np.ndarray:
    return np.stack([np.frombuffer(e.vector, dtype="<f4") for e in resp.embeddings])


def test_info(stub, bi, tiny_cross_dir):
    r = stub.Info(pb.InfoRequest())
    assert r.dim == bi.dim and r.encoder_fingerprint == bi.fingerprint
    assert r.max_texts_per_request == 16 and r.max_input_tokens == 64 and r.max_top_k == 50
    assert r.cross_encoder_id == str(tiny_cross_dir) and not r.HasField("uni_encoder_id")
    assert set(r.rerank_methods) == {pb.SCORE_METHOD_BI_ENCODER, pb.SCORE_METHOD_CROSS_ENCODER}
    assert "grpcio" in r.runtime_versions and r.version
    # The engine as chosen and this CPU's feature set (the test server runs torch on the CPU).
    assert r.engine.startswith("torch cpu") and r.cpu_isa in (
        "avx2",
        "avx512",
        "avx512_vnni",
        "amx",
        "generic",
        "arm64",
    )


def test_cli_client_info_and_embed(server, bi, capsys):
    """`pairsmith client info` prints Info as JSON (engine, CPU feature set); `client embed` the vectors."""
    import json

    from pairsmith.cli.main import main

    assert main(["client", "--target", server.target, "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dim"] == bi.dim and info["engine"].startswith("torch cpu") and info["cpuIsa"]
    assert main(["client", "--target", server.target, "embed", "a short text", "another"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = bi.encode(["a short text", "another"]).vectors
    assert [r["index"] for r in rows] == [0, 1]
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), want, atol=1e-5)


@pytest.mark.parametrize(
    "argv",
    [
        ["rerank", "--top-n", "-3", "q", "x"],
        ["search", "idx", "q", "--top-k", "-1"],
        ["embed", "--dimensions", "x", "t"],
    ],
)
def test_cli_client_refuses_negative_counts(server, argv, capsys):
    """Negative counts are usage errors naming the option (they reached protobuf and crashed before)."""
    from pairsmith.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["client", "--target", server.target, *argv])
    assert exc.value.code == 2
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_warmup_calibrated_the_batchers(server):
    """Fails when warm-up skips the planner's calibration (the overhead would stay the default)."""
    for b in (server.server.rt.bi_batcher, server.server.rt.cross_batcher):
        assert b.pipeline.calibrated and b.batches_run >= 1
        assert b.pipeline.max_rows == b.max_batch_rows  # calibrated on the server's own batch shape


def test_embed_equals_in_process_encode(stub, bi):
    resp, call = stub.Embed.with_call(pb.EmbedRequest(texts=TEXTS))
    ref = bi.encode(TEXTS)
    got = _vectors(resp)
    assert got.shape == ref.vectors.shape and resp.dim == bi.dim
    assert np.abs(got - ref.vectors).max() <= 1e-5
    assert [e.token_count for e in resp.embeddings] == ref.token_counts.tolist()
    assert resp.total_tokens == int(ref.token_counts.sum())
    md = dict(call.trailing_metadata())
    assert "total=" in md["pairsmith-timing-ms"] and len(md["x-request-id"]) == 16
    assert resp.timing.total_ms > 0 and resp.timing.inference_ms > 0


def test_embed_options(stub, bi):
    raw = bi.encode(TEXTS[:3], normalize=False).vectors
    r = stub.Embed(pb.EmbedRequest(texts=TEXTS[:3], normalize=False, format=pb.VECTOR_FORMAT_FLOAT_LIST))
    got = np.array([list(e.values) for e in r.embeddings], dtype=np.float32)
    assert np.abs(got - raw).max() <= 1e-5
    r = stub.Embed(pb.EmbedRequest(texts=TEXTS[:3], dimensions=8))
    pre = raw[:, :8] / np.linalg.norm(raw[:, :8], axis=1, keepdims=True)
    assert r.dim == 8 and np.abs(_vectors(r) - pre).max() <= 1e-5
    r = stub.Embed(pb.EmbedRequest(texts=["short", LONG]))
    assert [e.truncated for e in r.embeddings] == [False, True]
    assert r.embeddings[1].token_count == 64
    with pytest.raises(grpc.RpcError) as ei:  # empty texts: INVALID_ARGUMENT (the README's table)
        stub.Embed(pb.EmbedRequest(texts=[]))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_embed_stream_preserves_order(stub, bi):
    batches = [[f"sentence number {i} of batch {b}" for i in range(b % 5 + 1)] for b in range(40)]
    reqs = (pb.EmbedStreamRequest(texts=t) for t in batches)
    resps = list(stub.EmbedStream(reqs))
    assert [r.sequence for r in resps] == list(range(40))
    for texts, r in zip(batches, resps, strict=True):
        assert np.abs(_vectors(r) - bi.encode(texts).vectors).max() <= 1e-5


def test_score_bi_and_cross(stub, bi, tiny_cross_dir):
    pairs = [(TEXTS[0], TEXTS[3]), (TEXTS[1], TEXTS[1]), (TEXTS[4], TEXTS[5])]
    req = [pb.TextPair(text_a=a, text_b=b) for a, b in pairs]
    r = stub.Score(pb.ScoreRequest(pairs=req, method=pb.SCORE_METHOD_BI_ENCODER))
    ref = bi.similarity([a for a, _ in pairs], [b for _, b in pairs])
    assert r.method == pb.SCORE_METHOD_BI_ENCODER and np.allclose(r.scores, ref, atol=1e-5)
    ce = CrossEncoder.load(str(tiny_cross_dir), device="cpu", backend="torch")
    r = stub.Score(pb.ScoreRequest(pairs=req))  # default: cross-encoder when loaded
    assert r.method == pb.SCORE_METHOD_CROSS_ENCODER
    assert np.allclose(r.scores, ce.score(pairs).values, atol=1e-5)
    r = stub.Score(pb.ScoreRequest(pairs=req, raw_scores=True))
    assert np.allclose(r.scores, ce.score(pairs, activation=Activation.RAW).values, atol=1e-5)


@pytest.mark.parametrize("method", [pb.SCORE_METHOD_BI_ENCODER, pb.SCORE_METHOD_CROSS_ENCODER])
def test_rerank_sorted(stub, method):
    texts = TEXTS[1:]
    full = stub.Rerank(pb.RerankRequest(query=TEXTS[0], texts=texts, method=method))
    scores = [r.score for r in full.results]
    assert sorted(r.index for r in full.results) == list(range(len(texts)))
    assert scores == sorted(scores, reverse=True)
    pairs = [pb.TextPair(text_a=TEXTS[0], text_b=t) for t in texts]
    direct = stub.Score(pb.ScoreRequest(pairs=pairs, method=method)).scores
    for r in full.results:
        assert r.score == pytest.approx(direct[r.index], abs=1e-5) and not r.HasField("text")
    top = stub.Rerank(pb.RerankRequest(query=TEXTS[0], texts=texts, method=method, top_n=2, return_text=True))
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]
    assert [r.text for r in top.results] == [texts[r.index] for r in top.results]


def test_many_concurrent_clients(server, bi):
    texts = [f"client text {i} with some words" for i in range(64)]
    ref = bi.encode(texts).vectors
    errors: list[BaseException] = []

    def worker(c: int) -> None:
        ch, s = stub_for(server.target)
        try:
            for j in range(6):
                sl = slice((c * 7 + j) % 60, (c * 7 + j) % 60 + 4)
                r = s.Embed(pb.EmbedRequest(texts=texts[sl]), timeout=60)
                assert np.abs(_vectors(r) - ref[sl]).max() <= 1e-5
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)
        finally:
            ch.close()

    before = server.server.rt.bi_batcher.batches_run
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    # 144 requests were served in fewer forward batches: requests were merged.
    assert server.server.rt.bi_batcher.batches_run - before < 144


def test_metrics_endpoint(server, stub):
    stub.Embed(pb.EmbedRequest(texts=["metrics"]))
    with pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(texts=["x"], dimensions=0))
    port = server.server.metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'pairsmith_requests_total{code="OK",rpc="Embed"}' in body
    assert 'pairsmith_requests_total{code="INVALID_ARGUMENT",rpc="Embed"}' in body
    for name in (
        "pairsmith_request_seconds_bucket",
        "pairsmith_batch_size_bucket",
        "pairsmith_batch_tokens_bucket",
    ):
        assert name in body
    assert 'pairsmith_queue_depth{model="bi"}' in body and "pairsmith_ready 1.0" in body


def test_health_serving(server):
    ch, _ = stub_for(server.target)
    assert health_status(ch) == SERVING
    assert health_status(ch, "pairsmith.v1.PairsmithService") == SERVING
    ch.close()


def test_overload_is_resource_exhausted(tiny_bi_dir, tmp_path):
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        host="127.0.0.1",
        data_dir=tmp_path,
        max_concurrent_requests=1,
    )
    st = ServerThread(cfg).start()
    try:
        ch, s = stub_for(st.target)

        def call(_):
            try:
                s.Embed(pb.EmbedRequest(texts=[LONG] * 16), timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        with ThreadPoolExecutor(16) as ex:
            codes = list(ex.map(call, range(32)))
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert health_status(ch) == SERVING
        ch.close()
    finally:
        st.stop()


def test_missing_cross_encoder_names_the_flag(tiny_bi_dir, tmp_path):
    st = ServerThread(
        ServeConfig(backend="torch", model=str(tiny_bi_dir), host="127.0.0.1", data_dir=tmp_path)
    ).start()
    try:
        ch, s = stub_for(st.target)
        with pytest.raises(grpc.RpcError) as ei:
            s.Rerank(pb.RerankRequest(query="q", texts=["a"], method=pb.SCORE_METHOD_CROSS_ENCODER))
        assert (
            ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--cross-encoder" in ei.value.details()
        )
        r = s.Rerank(pb.RerankRequest(query="q", texts=["a", "b"]))  # default falls back to the bi-encoder
        assert r.method == pb.SCORE_METHOD_BI_ENCODER
        ch.close()
    finally:
        st.stop()


@pytest.mark.slow
def test_default_model_embed_and_demo_search(default_bi, tmp_path):
    """The packaged default model through gRPC: Embed parity and a search over the demo corpus."""
    import json
    from pathlib import Path

    corpus = Path(__file__).resolve().parent.parent / "service" / "demo" / "corpus.jsonl"
    docs = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    st = ServerThread(
        ServeConfig(backend="torch", model="default", host="127.0.0.1", data_dir=tmp_path)
    ).start()
    try:
        ch, s = stub_for(st.target)
        r = s.Embed(pb.EmbedRequest(texts=TEXTS))
        assert np.abs(_vectors(r) - default_bi.encode(TEXTS).vectors).max() <= 1e-5
        s.CreateIndex(pb.CreateIndexRequest(name="demo"))
        items = [pb.UpsertItem(id=d["id"], text=d["text"]) for d in docs]
        s.Upsert(
            iter([pb.UpsertRequest(index="demo", items=items[i : i + 32]) for i in range(0, len(items), 32)])
        )
        doc_vecs = default_bi.encode([d["text"] for d in docs]).vectors
        q = docs[5]["text"]
        hits = s.Search(pb.SearchRequest(index="demo", text=q, top_k=5)).hits
        want = np.argsort(-(doc_vecs @ default_bi.encode([q]).vectors[0]), kind="stable")[:5]
        assert [h.id for h in hits] == [docs[i]["id"] for i in want] and hits[0].id == docs[5]["id"]
        ch.close()
    finally:
        st.stop()
