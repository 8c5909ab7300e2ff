"""Rerank UNI_ENCODER on a real server (127.0.0.1, port 0) with a tiny random Uni-Encoder."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from pairsmith.encoders import UniConfig, UniEncoder
from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import pb, stub_for
from tests.tiny import make_tiny_backbone

CANDS = ["Sounds tiring!", "The moon is made of cheese.", "Same here.", "ok"]


@pytest.fixture(scope="module")
def uni_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc-uni")
    d = make_tiny_backbone(root / "backbone", seed=5)
    cfg = UniConfig(max_context_tokens=48, max_candidate_tokens=16, max_row_tokens=256, max_groups=16)
    UniEncoder.from_backbone(str(d), config=cfg, device="cpu", seed=0).save(root / "uni")
    return root / "uni"


@pytest.fixture(scope="module")
def stub(tiny_bi_dir, uni_dir, tmp_path_factory):
    cfg = ServeConfig(
        backend="torch",
        model=str(tiny_bi_dir),
        uni_encoder=str(uni_dir),
        host="127.0.0.1",
        data_dir=tmp_path_factory.mktemp("svc-uni-data"),
        metrics_port=0,
        metrics_host="127.0.0.1",
    )
    st = ServerThread(cfg).start()
    ch, s = stub_for(st.target)
    yield s
    ch.close()
    st.stop()


def test_rerank_uni_matches_the_library(stub, uni_dir):
    want = UniEncoder.load(str(uni_dir), device="cpu", backend="torch").rank("How was your week?", CANDS)
    r = stub.Rerank(
        pb.RerankRequest(
            query="How was your week?", texts=CANDS, method=pb.SCORE_METHOD_UNI_ENCODER, raw_scores=True
        )
    )
    assert r.method == pb.SCORE_METHOD_UNI_ENCODER
    assert [x.index for x in r.results] == list(np.argsort(-want, kind="stable"))
    np.testing.assert_allclose([x.score for x in r.results], np.sort(want)[::-1], atol=1e-5)
    p = stub.Rerank(
        pb.RerankRequest(query="How was your week?", texts=CANDS, method=pb.SCORE_METHOD_UNI_ENCODER)
    )
    assert abs(sum(x.score for x in p.results) - 1.0) < 1e-5  # softmax over the request's candidates
    info = stub.Info(pb.InfoRequest())
    assert pb.SCORE_METHOD_UNI_ENCODER in info.rerank_methods and info.uni_encoder_id == str(uni_dir)


def test_rerank_uni_errors_are_clear_and_the_server_lives(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.Rerank(
            pb.RerankRequest(
                query="word " * 200, texts=["a"], method=pb.SCORE_METHOD_UNI_ENCODER, truncate=False
            )
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(
            pb.ScoreRequest(pairs=[pb.TextPair(text_a="a", text_b="b")], method=pb.SCORE_METHOD_UNI_ENCODER)
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "use Rerank" in e.value.details()
    ok = stub.Rerank(pb.RerankRequest(query="hi", texts=["a", "b"], method=pb.SCORE_METHOD_UNI_ENCODER))
    assert len(ok.results) == 2


class _SlowBackend:
    """Wraps the real backend; every forward first sleeps ``delay`` seconds."""

    def __init__(self, inner, delay: float) -> None:
        import threading

        self.inner, self.delay = inner, delay
        self.started = threading.Event()
        self.kind, self.normalizes, self.variant = inner.kind, inner.normalizes, inner.variant
        self.calls = 0

    def predict(self, batch):
        import time

        self.calls += 1
        self.started.set()
        time.sleep(self.delay)
        return self.inner.predict(batch)

    def health(self) -> None:
        self.inner.health()


def test_rerank_uni_goes_through_the_batcher_admission_and_deadline(tiny_bi_dir, uni_dir, tmp_path):
    """A Uni request is one unit of work in the Uni batcher: it is admitted against
    max_concurrent_requests (RESOURCE_EXHAUSTED beyond), and dropped unrun when its deadline
    passes in the queue (DEADLINE_EXCEEDED)."""
    import threading

    cfg = ServeConfig(
        model=str(tiny_bi_dir),
        uni_encoder=str(uni_dir),
        host="127.0.0.1",
        data_dir=tmp_path,
        max_concurrent_requests=2,
    )
    st = ServerThread(cfg).start()
    try:
        batcher = st.server.rt.uni_batcher
        slow = batcher.pipeline.backend = _SlowBackend(batcher.pipeline.backend, 1.5)
        ch, s = stub_for(st.target)
        uni = pb.SCORE_METHOD_UNI_ENCODER
        results: dict[str, object] = {}

        def call(name: str, timeout: float) -> None:
            try:
                results[name] = s.Rerank(
                    pb.RerankRequest(query="hi", texts=CANDS, method=uni), timeout=timeout
                )
            except grpc.RpcError as exc:
                results[name] = exc.code()

        first = threading.Thread(target=call, args=("first", 30))
        first.start()
        assert slow.started.wait(30)  # running on the model thread
        late = threading.Thread(target=call, args=("late", 0.4))
        late.start()  # queued behind the first; its deadline passes while it waits
        import time

        time.sleep(0.2)
        call("third", 30)  # two in flight already: refused at once
        assert results["third"] == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.join(30)
        late.join(30)
        assert results["late"] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(results["first"].results) == len(CANDS)
        time.sleep(0.2)
        assert st.server.metrics.dropped.labels("uni")._value.get() == 1
        assert slow.calls == 1  # the expired request never reached the model
        ok = s.Rerank(pb.RerankRequest(query="hi", texts=CANDS, method=uni, raw_scores=True), timeout=30)
        assert len(ok.results) == len(CANDS) and slow.calls == 2
        ch.close()
    finally:
        st.stop()


def test_uni_batcher_merges_requests_and_chunks_long_candidate_lists(stub, uni_dir):
    """Many candidates (more than one row holds) come back in order, equal to the library's."""
    many = [f"candidate number {i} says something" for i in range(40)]
    want = UniEncoder.load(str(uni_dir), device="cpu").rank("How was your week?", many)
    r = stub.Rerank(
        pb.RerankRequest(
            query="How was your week?", texts=many, method=pb.SCORE_METHOD_UNI_ENCODER, raw_scores=True
        )
    )
    got = np.empty(len(many), dtype=np.float32)
    for x in r.results:
        got[x.index] = x.score
    np.testing.assert_allclose(got, want, atol=1e-5)
