"""A small synchronous Python client for the pairsmith.v1 API.

Example::

    from pairsmith.service.client import PairsmithClient

    with PairsmithClient("localhost:50051", api_key="...") as c:
        vecs = c.embed(["a cat sits", "a dog runs"]).vectors      # (2, 384) float32
        hits = c.search("demo", text="how do cats sleep", top_k=5)

Errors arrive as ``grpc.RpcError`` (``.code()``, ``.details()``); numpy
arrays come out, protobuf stays inside this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format

from pairsmith.service import convert
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc

METHODS = {
    "auto": pb.SCORE_METHOD_UNSPECIFIED,
    "bi": pb.SCORE_METHOD_BI_ENCODER,
    "cross": pb.SCORE_METHOD_CROSS_ENCODER,
    "uni": pb.SCORE_METHOD_UNI_ENCODER,
}
METRICS = {"cosine": pb.METRIC_COSINE, "ip": pb.METRIC_INNER_PRODUCT, "l2": pb.METRIC_L2}


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (N, D) float32
    token_counts: np.ndarray  # (N,) int64
    truncated: np.ndarray  # (N,) bool
    timing: dict[str, float]


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    payload: dict | None
    vector_score: float | None = None


def _timing(msg) -> dict[str, float]:
    return {
        k: float(getattr(msg, k))
        for k in ("queue_ms", "tokenize_ms", "inference_ms", "search_ms", "total_ms")
    }


def _embed_result(resp) -> EmbedResult:
    n, d = len(resp.embeddings), int(resp.dim)
    vecs = np.empty((n, d), dtype=np.float32)
    for i, e in enumerate(resp.embeddings):
        vecs[i] = np.frombuffer(e.vector, dtype="<f4") if e.vector else np.asarray(e.values, dtype=np.float32)
    return EmbedResult(
        vectors=vecs,
        token_counts=np.fromiter((e.token_count for e in resp.embeddings), dtype=np.int64, count=n),
        truncated=np.fromiter((e.truncated for e in resp.embeddings), dtype=bool, count=n),
        timing=_timing(resp.timing),
    )


def _vector_fields(vector) -> dict:
    arr = np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1))
    return {"vector": arr.tobytes()}


class PairsmithClient:
    """Blocking client. ``tls_ca`` (or ``tls=True`` for system roots) switches to TLS;
    ``client_cert``/``client_key`` add mutual TLS."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        server_name: str | None = None,
        timeout: float | None = 60.0,
        max_message_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls or tls_ca or client_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
                private_key=Path(client_key).read_bytes() if client_key else None,
                certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.PairsmithServiceStub(self.channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    # -- plumbing ----------------------------------------------------------
    def _call(self, method, request, timeout=None):
        return method(request, timeout=timeout or self.timeout, metadata=self._metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PairsmithClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until health reports SERVING (or raise TimeoutError)."""
        import time

        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not SERVING after {timeout} s")

    # -- RPCs ----------------------------------------------------------------
    def info(self) -> dict:
        return json_format.MessageToDict(self._call(self.stub.Info, pb.InfoRequest()))

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
        timeout: float | None = None,
    ) -> EmbedResult:
        req = pb.EmbedRequest(texts=list(texts), normalize=normalize, truncate=truncate)
        if dimensions is not None:
            req.dimensions = dimensions
        return _embed_result(self._call(self.stub.Embed, req, timeout))

    def embed_stream(
        self, batches: Iterable[Sequence[str]], *, normalize: bool = True, dimensions: int | None = None
    ) -> Iterator[EmbedResult]:
        """Embed many batches over one stream; yields results in the order sent."""

        def requests():
            for texts in batches:
                r = pb.EmbedStreamRequest(texts=list(texts), normalize=normalize)
                if dimensions is not None:
                    r.dimensions = dimensions
                yield r

        for resp in self.stub.EmbedStream(requests(), metadata=self._metadata):
            yield _embed_result(resp)

    def score(
        self, pairs: Sequence[tuple[str, str]], *, method: str = "auto", raw_scores: bool = False
    ) -> np.ndarray:
        req = pb.ScoreRequest(
            pairs=[pb.TextPair(text_a=a, text_b=b) for a, b in pairs],
            method=METHODS[method],
            raw_scores=raw_scores,
        )
        return np.asarray(self._call(self.stub.Score, req).scores, dtype=np.float32)

    def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        method: str = "auto",
        top_n: int | None = None,
        return_text: bool = False,
    ) -> list[dict]:
        req = pb.RerankRequest(
            query=query, texts=list(texts), method=METHODS[method], return_text=return_text
        )
        if top_n is not None:
            req.top_n = top_n
        resp = self._call(self.stub.Rerank, req)
        out = []
        for r in resp.results:
            d = {"index": int(r.index), "score": float(r.score)}
            if r.HasField("text"):
                d["text"] = r.text
            out.append(d)
        return out

    def search(
        self,
        index: str,
        *,
        text: str | None = None,
        vector=None,
        top_k: int = 10,
        rerank: str | None = None,
        candidates: int | None = None,
    ) -> list[SearchHit]:
        if (text is None) == (vector is None):
            raise ValueError("search: give exactly one of text or vector")
        req = pb.SearchRequest(index=index, top_k=top_k)
        if text is not None:
            req.text = text
        else:
            req.vector = _vector_fields(vector)["vector"]
        if rerank is not None:
            req.rerank.method = METHODS[rerank]
            if candidates is not None:
                req.rerank.candidates = candidates
        resp = self._call(self.stub.Search, req)
        return [
            SearchHit(
                id=h.id,
                score=float(h.score),
                payload=json_format.MessageToDict(h.payload) if h.HasField("payload") else None,
                vector_score=float(h.vector_score) if h.HasField("vector_score") else None,
            )
            for h in resp.hits
        ]

    def create_index(self, name: str, *, factory: str | None = None, metric: str = "cosine") -> dict:
        req = pb.CreateIndexRequest(name=name, metric=METRICS[metric])
        if factory is not None:
            req.factory = factory
        return json_format.MessageToDict(self._call(self.stub.CreateIndex, req).index)

    def upsert(
        self,
        index: str,
        items: Iterable[dict],
        *,
        chunk: int = 256,
        store_text: bool = True,
        timeout: float | None = None,
    ) -> int:
        """Stream ``items`` (``{"id", "text" | "vector", "payload"?}``); returns items written once durable."""

        def requests():
            buf: list = []
            first = True
            for item in items:
                it = pb.UpsertItem(id=str(item["id"]))
                if "text" in item and item["text"] is not None:
                    it.text = item["text"]
                else:
                    it.vector = _vector_fields(item["vector"])["vector"]
                if item.get("payload") is not None:
                    it.payload.CopyFrom(convert.payload_pb(item["payload"]))
                buf.append(it)
                if len(buf) >= chunk:
                    yield pb.UpsertRequest(index=index if first else "", items=buf, store_text=store_text)
                    first, buf = False, []
            if buf or first:
                yield pb.UpsertRequest(index=index if first else "", items=buf, store_text=store_text)

        resp = self.stub.Upsert(requests(), timeout=timeout or self.timeout, metadata=self._metadata)
        return int(resp.upserted)

    def delete(self, index: str, ids: Sequence[str]) -> int:
        return int(self._call(self.stub.Delete, pb.DeleteRequest(index=index, ids=list(ids))).deleted)

    def get_index(self, name: str) -> dict:
        return json_format.MessageToDict(self._call(self.stub.GetIndex, pb.GetIndexRequest(name=name)).index)

    def list_indexes(self) -> list[dict]:
        resp = self._call(self.stub.ListIndexes, pb.ListIndexesRequest())
        return [json_format.MessageToDict(i) for i in resp.indexes]

    def drop_index(self, name: str) -> None:
        self._call(self.stub.DropIndex, pb.DropIndexRequest(name=name))
