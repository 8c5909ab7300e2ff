"""Health transitions, load failures, graceful drain; kill -9 durability and SIGTERM (subprocess)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from pairsmith.errors import FailedPrecondition
from pairsmith.service import server as server_mod
from pairsmith.service.config import ServeConfig
from pairsmith.service.server import ServerThread
from tests.service_util import NOT_SERVING, SERVING, SubprocessServer, health_status, pb, stub_for

SVC = "pairsmith.v1.PairsmithService"


def test_health_transitions(tiny_bi_dir, tmp_path, monkeypatch):
    release = threading.Event()
    real = server_mod.load_models

    def gated(config):
        assert release.wait(60)
        return real(config)

    monkeypatch.setattr(server_mod, "load_models", gated)
    st = ServerThread(
        ServeConfig(backend="torch", model=str(tiny_bi_dir), host="127.0.0.1", data_dir=tmp_path)
    ).start(wait_ready=False)
    try:
        ch, stub = stub_for(st.target)
        assert health_status(ch) == NOT_SERVING and health_status(ch, SVC) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as ei:
            stub.Embed(pb.EmbedRequest(texts=["early"]))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in ei.value.details()
        release.set()
        st.call(st.server.wait_ready(60))
        assert health_status(ch) == SERVING and health_status(ch, SVC) == SERVING
        assert len(stub.Embed(pb.EmbedRequest(texts=["now"])).embeddings) == 1
        st.call(st.server.begin_shutdown())
        assert health_status(ch) == NOT_SERVING and health_status(ch, SVC) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as ei:
            stub.Embed(pb.EmbedRequest(texts=["late"]))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
    finally:
        release.set()
        st.stop()


def test_load_failure_keeps_not_serving(tmp_path):
    missing = tmp_path / "no-such-model"
    st = ServerThread(
        ServeConfig(backend="torch", model=str(missing), host="127.0.0.1", data_dir=tmp_path)
    ).start(wait_ready=False)
    try:
        with pytest.raises(FailedPrecondition, match="does not exist"):
            st.call(st.server.wait_ready(60))
        ch, stub = stub_for(st.target)
        assert health_status(ch) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as ei:
            stub.Info(pb.InfoRequest())
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and "failed to load" in ei.value.details()
        ch.close()
    finally:
        st.stop()


class _SlowBackend:
    """Wraps the real backend; every forward first sleeps ``delay`` seconds."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.started = threading.Event()
        self.kind, self.normalizes, self.variant = inner.kind, inner.normalizes, inner.variant

    def embed(self, batch):
        self.started.set()
        time.sleep(self.delay)
        return self.inner.embed(batch)

    predict = embed

    def health(self) -> None:
        self.inner.health()


def test_graceful_stop_drains_and_queued_deadline_is_dropped(tiny_bi_dir, tmp_path):
    st = ServerThread(
        ServeConfig(backend="torch", model=str(tiny_bi_dir), host="127.0.0.1", data_dir=tmp_path)
    ).start()
    batcher = st.server.rt.bi_batcher
    slow = batcher.pipeline.backend = _SlowBackend(batcher.pipeline.backend, 0.8)
    ch, stub = stub_for(st.target)
    results: dict[str, object] = {}

    def slow_call():
        results["slow"] = stub.Embed(pb.EmbedRequest(texts=["in flight"]), timeout=30)

    t = threading.Thread(target=slow_call)
    t.start()
    assert slow.started.wait(30)  # the slow request is now running on the model thread
    with pytest.raises(grpc.RpcError) as ei:  # queued behind it; its deadline passes while waiting
        stub.Embed(pb.EmbedRequest(texts=["too late"]), timeout=0.2)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    st.stop(grace=10)  # waits for the in-flight call
    t.join(10)
    assert len(results["slow"].embeddings) == 1
    dropped = st.server.metrics.dropped.labels("bi")._value.get()
    assert dropped == 1
    assert batcher.batches_run >= 2  # warm-up + the slow request; the expired one never ran
    ch.close()


def test_kill9_after_acknowledged_upserts_then_sigterm(tiny_bi_dir, tmp_path):
    data = tmp_path / "data"
    args = ("--model", str(tiny_bi_dir), "--data-dir", str(data))
    srv = SubprocessServer(tmp_path, *args).start()
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((300, 32)).astype(np.float32)
    ch, stub = stub_for(srv.target)
    stub.CreateIndex(pb.CreateIndexRequest(name="durable"))
    for lo in range(0, 300, 100):  # three streams, each acknowledged
        msgs = [
            pb.UpsertRequest(
                index="durable" if j == lo else "",
                items=[pb.UpsertItem(id=f"id{i}", vector=vecs[i].tobytes()) for i in range(j, j + 25)],
            )
            for j in range(lo, lo + 100, 25)
        ]
        assert stub.Upsert(iter(msgs), timeout=60).upserted == 100
    assert stub.Delete(pb.DeleteRequest(index="durable", ids=["id7", "id8"])).deleted == 2
    ch.close()
    srv.kill9()

    srv = SubprocessServer(tmp_path, *args).start()
    ch, stub = stub_for(srv.target)
    assert stub.GetIndex(pb.GetIndexRequest(name="durable")).index.count == 298
    for i in list(range(0, 300, 23)) + [7, 8, 299]:
        top = stub.Search(pb.SearchRequest(index="durable", vector=vecs[i].tobytes(), top_k=1)).hits[0]
        if i in (7, 8):
            assert top.id != f"id{i}"
        else:
            assert top.id == f"id{i}" and top.score == pytest.approx(1.0, abs=1e-4)
    ch.close()
    assert srv.terminate(60) == 0  # SIGTERM: NOT_SERVING, drain, clean exit
    assert "shutting down" in srv.log.read_text()
