"""The pairsmith.v1 RPCs. Validation at the top of each method, model work via batchers.

Every method has the signature ``(self, request, context, timer)`` and is
wrapped by :func:`pairsmith.service.status.rpc` (error table, request id,
timing metadata, metrics). Blocking store calls run on the store executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import TYPE_CHECKING

import numpy as np

from pairsmith import __version__
from pairsmith.encoders.postprocess import finalize_vectors, pair_cosine, sigmoid, softmax
from pairsmith.errors import FailedPrecondition, InvalidInput, ResourceExhausted, Unavailable
from pairsmith.service import convert
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc
from pairsmith.service.limits import CALLER, audit
from pairsmith.service.status import CallTimer, rpc

if TYPE_CHECKING:
    from pairsmith.service.server import Runtime

log = logging.getLogger(__name__)

UPSERT_CHUNK = 256  # items embedded and written per store call
DEFAULT_TOP_K = 10
METHOD_NAMES = {
    pb.SCORE_METHOD_BI_ENCODER: "BI_ENCODER",
    pb.SCORE_METHOD_CROSS_ENCODER: "CROSS_ENCODER",
    pb.SCORE_METHOD_UNI_ENCODER: "UNI_ENCODER",
}


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + max(0.0, remaining)


def _opt(msg, name: str, default):
    return getattr(msg, name) if msg.HasField(name) else default


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class PairsmithServicer(pb_grpc.PairsmithServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.config

    # -- hooks used by the rpc() wrapper -----------------------------------
    def observe(self, name: str, code, seconds: float) -> None:
        self.rt.metrics.observe_rpc(name, code.name, seconds)

    def track(self, delta: int) -> None:
        """Calls in flight: the ``pairsmith_inflight_requests`` gauge and the shutdown drain."""
        self.rt.inflight += delta
        self.rt.metrics.inflight.set(self.rt.inflight)
        if self.rt.inflight == 0:
            self.rt.drained.set()  # the shutdown drain waits on it

    def scrub(self, message: str) -> str:
        """No server filesystem paths in what a client reads (the log keeps them)."""
        for path in self._private_paths:
            message = message.replace(path, "<data-dir>")
        return message

    @property
    def _private_paths(self) -> list[str]:
        paths = []
        try:
            root = self.cfg.store_root
            paths = [str(root.resolve()), str(root)]
        except OSError:
            pass
        return sorted({p for p in paths if len(p) > 1}, key=len, reverse=True)

    # -- helpers -------------------------------------------------------------
    def _vectors(
        self, raw: np.ndarray, *, dimensions: int | None = None, normalize: bool = True
    ) -> np.ndarray:
        """The bi-encoder's post-processing (one copy, shared with BiEncoder.encode)."""
        backend = self.rt.models.bi.pipeline.backend
        return finalize_vectors(
            raw, dimensions=dimensions, normalize=normalize, already_normalized=backend.normalizes
        )

    def _models(self):
        """At the start of a call: the models, or UNAVAILABLE (loading, failed, shutting down).

        Only here: a call admitted before shutdown began (a stream) runs to its end.
        """
        if self.rt.load_error is not None:
            raise Unavailable("model failed to load; see the server log")
        if not self.rt.ready.is_set():
            raise Unavailable("models are loading; wait until health reports SERVING")
        if self.rt.shutting_down:
            raise Unavailable("server is shutting down")
        return self.rt.models

    def _check_texts(self, texts, field: str) -> None:
        """Refuse a text over ``max_text_chars`` before any tokenisation (cheap: len is O(1)).

        ``field`` names the i-th text: ``"texts[{i}]"``, ``"pairs[{i}].text_a"``, or a plain name.
        """
        limit = self.cfg.max_text_chars
        for i, t in enumerate(texts):
            if len(t) > limit:
                where = field.format(i=i)
                raise InvalidInput(
                    f"{where}: {len(t)} characters; the limit is {limit} per text (Info.max_text_chars)"
                )

    def _store(self):
        self._models()
        if self.rt.store is None:
            raise FailedPrecondition(f"index store is not available ({self.rt.store_error})")
        return self.rt.store

    async def _in_store(self, fn, *args):
        """A store write (create, upsert, delete, drop) on the single writer thread."""
        return await self._on(self.rt.store_executor, fn, *args)

    async def _read_store(self, fn, *args):
        """A store read (search, get, list, check_encoder) on the reader pool."""
        return await self._on(self.rt.read_executor, fn, *args)

    async def _on(self, executor, fn, *args):
        """Run a store call; an exhausted resource (disk, descriptors, memory) that the store did
        not name itself is RESOURCE_EXHAUSTED, never INTERNAL. Anything else propagates."""
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except MemoryError:
            raise ResourceExhausted(
                "index store: the server is out of memory for this request; retry smaller"
            ) from None
        except (OSError, sqlite3.Error) as exc:
            from pairsmith.service.store.db import resource_error

            err = resource_error(exc, "index store")
            if err is None:
                raise
            log.error("index store call %s: %s", getattr(fn, "__name__", fn), exc)
            raise err from None

    def _check_count(self, n: int, field: str, *, allow_empty: bool = False) -> None:
        if n == 0 and not allow_empty:
            raise InvalidInput(f"{field}: must not be empty")
        if n > self.cfg.max_texts_per_request:
            raise InvalidInput(f"{field}: {n} items, at most {self.cfg.max_texts_per_request} per request")

    def _method(self, method: int, field: str) -> int:
        m = self.rt.models
        if method == pb.SCORE_METHOD_UNSPECIFIED:
            return pb.SCORE_METHOD_CROSS_ENCODER if m.cross is not None else pb.SCORE_METHOD_BI_ENCODER
        if method not in METHOD_NAMES:
            raise InvalidInput(f"{field}: unknown ScoreMethod {method}")
        if method == pb.SCORE_METHOD_CROSS_ENCODER and m.cross is None:
            raise FailedPrecondition(
                f"{field}: CROSS_ENCODER needs a cross-encoder; start the server with --cross-encoder MODEL"
            )
        if method == pb.SCORE_METHOD_UNI_ENCODER and m.uni is None:
            raise FailedPrecondition(
                f"{field}: UNI_ENCODER needs a Uni-Encoder; start the server with --uni-encoder MODEL"
            )
        return method

    async def _uni_rank(
        self, query: str, texts: list[str], raw: bool, truncate: bool, timer, context, field: str = "texts"
    ) -> np.ndarray:
        """Uni-Encoder: a query and its candidates as one unit of work through the Uni batcher
        (tokenised off the model thread; admission, deadline and cancellation as every call).

        Scores: raw (logits, or a warm model's cosines), or (default) their softmax over this
        request's candidates at the model's temperature.
        """
        async with self._fair():
            res = await self.rt.uni_batcher.submit_groups(
                query, texts, truncate=truncate, deadline=_deadline(context), field=field
            )
        timer.queue_ms += res.queue_ms
        timer.tokenize_ms += res.tokenize_ms
        timer.inference_ms += res.inference_ms
        if raw:
            return res.values.astype(np.float32)
        return softmax(res.values, self.rt.models.uni.config.score_scale)

    def _fair(self):
        """The calling key's share of max_concurrent_requests (a no-op without keys)."""
        return self.rt.fair.slot() if self.rt.fair is not None else contextlib.nullcontext()

    async def _embed(self, texts, timer: CallTimer, context, *, truncate=True, field="texts"):
        async with self._fair():
            res = await self.rt.bi_batcher.submit_texts(
                texts, truncate=truncate, deadline=_deadline(context), field=field
            )
        timer.queue_ms += res.queue_ms
        timer.tokenize_ms += res.tokenize_ms
        timer.inference_ms += res.inference_ms
        return res

    async def _score(self, pairs, method: int, raw: bool, truncate: bool, timer, context, field="pairs"):
        """(scores, truncated) for (a, b) pairs by ``method`` (already resolved)."""
        if method == pb.SCORE_METHOD_UNI_ENCODER:
            raise InvalidInput(f"{field}: UNI_ENCODER ranks candidates for one query; use Rerank")
        if method == pb.SCORE_METHOD_CROSS_ENCODER:
            async with self._fair():
                res = await self.rt.cross_batcher.submit_pairs(
                    pairs, truncate=truncate, deadline=_deadline(context), field=field
                )
            timer.queue_ms += res.queue_ms
            timer.tokenize_ms += res.tokenize_ms
            timer.inference_ms += res.inference_ms
            vals = res.values if raw else sigmoid(res.values)
            return vals.astype(np.float32), res.truncated
        uniq = list(dict.fromkeys([t for p in pairs for t in p]))
        res = await self._embed(uniq, timer, context, truncate=truncate, field=field)
        pos = {t: i for i, t in enumerate(uniq)}
        ia = np.fromiter((pos[a] for a, _ in pairs), dtype=np.int64, count=len(pairs))
        ib = np.fromiter((pos[b] for _, b in pairs), dtype=np.int64, count=len(pairs))
        scores = pair_cosine(res.values[ia], res.values[ib])
        trunc = res.truncated[ia] | res.truncated[ib]
        return scores, trunc

    # -- RPCs ---------------------------------------------------------------
    @rpc("Info")
    async def Info(self, request, context, timer):
        m = self._models()
        versions = dict(self.rt.runtime_versions)
        resp = pb.InfoResponse(
            model_id=m.bi.model_id,
            encoder_fingerprint=m.bi.fingerprint,
            dim=m.bi.dim,
            similarity="cosine",
            backend=self.cfg.backend,
            rerank_methods=m.methods,
            max_texts_per_request=self.cfg.max_texts_per_request,
            max_input_tokens=m.bi.max_length,
            max_batch_tokens=self.cfg.max_batch_tokens,
            max_message_bytes=self.cfg.max_message_bytes,
            max_top_k=self.cfg.max_top_k,
            max_text_chars=self.cfg.max_text_chars,
            version=__version__,
            runtime_versions=versions,
            engine=m.bi.engine,
            cpu_isa=self.rt.cpu_isa,
        )
        if m.cross is not None:
            resp.cross_encoder_id = m.cross.model_id
        if m.uni is not None:
            resp.uni_encoder_id = m.uni.model_id
        resp.timing.CopyFrom(timer.message(pb))
        return resp

    def _embed_options(self, request, field: str):
        m = self.rt.models  # the call checked _models() at its start
        self._check_count(len(request.texts), f"{field}texts")
        self._check_texts(request.texts, f"{field}texts[{{i}}]")
        convert.check_format(request.format, f"{field}format")
        dims = _opt(request, "dimensions", None)
        if dims is not None and not 1 <= dims <= m.bi.dim:
            raise InvalidInput(f"{field}dimensions: must be in 1..{m.bi.dim}, got {dims}")
        return dims, _opt(request, "normalize", True), _opt(request, "truncate", True)

    async def _embed_reply(self, request, context, timer, field: str = ""):
        dims, normalize, truncate = self._embed_options(request, field)
        res = await self._embed(list(request.texts), timer, context, truncate=truncate, field=f"{field}texts")
        d = dims or self.rt.models.bi.dim
        vecs = (
            self._vectors(res.values, dimensions=dims, normalize=normalize) if len(res.values) else res.values
        )
        embs = convert.embeddings_pb(vecs, res.token_counts, res.truncated, request.format)
        return embs, d, int(res.token_counts.sum())

    @rpc("Embed")
    async def Embed(self, request, context, timer):
        self._models()
        embs, dim, tokens = await self._embed_reply(request, context, timer)
        return pb.EmbedResponse(embeddings=embs, dim=dim, total_tokens=tokens, timing=timer.message(pb))

    @rpc("EmbedStream")
    async def EmbedStream(self, request_iterator, context, timer):
        self._models()
        window: asyncio.Queue = asyncio.Queue(maxsize=self.cfg.max_stream_inflight)
        done = object()

        async def one(seq: int, req):
            t = CallTimer(request_id=timer.request_id)
            embs, dim, tokens = await self._embed_reply(req, context, t, field=f"message[{seq}].")
            timer.add(t)
            return pb.EmbedStreamResponse(
                sequence=seq, embeddings=embs, dim=dim, total_tokens=tokens, timing=t.message(pb)
            )

        async def reader():
            # Starts each message's work as it arrives (bounded by the window); the writer
            # below awaits them in arrival order, so replies keep the request order.
            seq = 0
            try:
                async for req in request_iterator:
                    await window.put(asyncio.ensure_future(one(seq, req)))
                    seq += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the inbound stream broke: hand the error to the writer
                await window.put(exc)
                return
            await window.put(done)

        read_task = asyncio.ensure_future(reader())
        try:
            while True:
                item = await window.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield await item
        finally:
            read_task.cancel()
            while not window.empty():
                item = window.get_nowait()
                if isinstance(item, asyncio.Future):
                    item.cancel()
                    item.add_done_callback(_retrieve)  # no "Task exception was never retrieved"

    @rpc("Score")
    async def Score(self, request, context, timer):
        self._models()
        self._check_count(len(request.pairs), "pairs")
        self._check_texts([p.text_a for p in request.pairs], "pairs[{i}].text_a")
        self._check_texts([p.text_b for p in request.pairs], "pairs[{i}].text_b")
        method = self._method(request.method, "method")
        pairs = [(p.text_a, p.text_b) for p in request.pairs]
        scores, trunc = await self._score(
            pairs, method, request.raw_scores, _opt(request, "truncate", True), timer, context
        )
        return pb.ScoreResponse(
            scores=scores.tolist(), method=method, truncated=trunc.tolist(), timing=timer.message(pb)
        )

    @rpc("Rerank")
    async def Rerank(self, request, context, timer):
        self._models()
        n = len(request.texts)
        self._check_count(n, "texts")
        self._check_texts([request.query], "query")
        self._check_texts(request.texts, "texts[{i}]")
        # Unset top_n: every candidate, up to max_top_k (the caller did not ask for a number).
        top_n = _opt(request, "top_n", min(n, self.cfg.max_top_k))
        if not 1 <= top_n <= self.cfg.max_top_k:
            raise InvalidInput(f"top_n: must be in 1..{self.cfg.max_top_k}, got {top_n}")
        method = self._method(request.method, "method")
        truncate = _opt(request, "truncate", True)
        if method == pb.SCORE_METHOD_UNI_ENCODER:
            scores = await self._uni_rank(
                request.query, list(request.texts), request.raw_scores, truncate, timer, context
            )
        else:
            pairs = [(request.query, t) for t in request.texts]
            scores, _ = await self._score(
                pairs, method, request.raw_scores, truncate, timer, context, field="texts"
            )
        order = np.argsort(-scores, kind="stable")[:top_n]
        results = []
        for i in order:
            r = pb.RerankResult(index=int(i), score=float(scores[i]))
            if request.return_text:
                r.text = request.texts[i]
            results.append(r)
        return pb.RerankResponse(results=results, method=method, timing=timer.message(pb))

    @rpc("Search")
    async def Search(self, request, context, timer):
        store = self._store()
        m = self.rt.models
        if not request.index:
            raise InvalidInput("index: must not be empty")
        top_k = _opt(request, "top_k", DEFAULT_TOP_K)
        if not 1 <= top_k <= self.cfg.max_top_k:
            raise InvalidInput(f"top_k: must be in 1..{self.cfg.max_top_k}, got {top_k}")
        which = request.WhichOneof("query")
        if which is None:
            raise InvalidInput("query: set one of text, vector, vector_values")
        stage = request.rerank if request.HasField("rerank") else None
        k = top_k
        method = None
        if stage is not None:
            method = self._method(stage.method, "rerank.method")
            k = _opt(stage, "candidates", min(4 * top_k, self.cfg.max_top_k))
            if not top_k <= k <= self.cfg.max_top_k:
                raise InvalidInput(
                    f"rerank.candidates: must be in top_k..{self.cfg.max_top_k} ({top_k}..), got {k}"
                )
            if which != "text":
                raise InvalidInput("rerank: a rerank stage needs a text query (set query.text, not a vector)")
        if which == "text":
            self._check_texts([request.text], "text")
        info = await self._read_store(store.get, request.index)
        if which == "text":
            await self._read_store(store.check_encoder, request.index, m.bi.fingerprint)
            res = await self._embed([request.text], timer, context, field="text")
            query = self._vectors(res.values)
        else:
            from pairsmith.service.store.faiss_index import check_norms

            query = convert.vector_from(request, which, "query", int(info.dim))[None, :]
            check_norms(query, info.metric, "query")
        t0 = time.perf_counter()
        hits = (await self._read_store(store.search, request.index, query, k))[0]
        timer.search_ms += (time.perf_counter() - t0) * 1e3
        first = {h.id: float(h.score) for h in hits}
        if stage is not None and hits:
            field = _opt(stage, "text_field", "text")
            # Only candidates with a string in the text field can be reranked; the others are left
            # out of the reranked hits (one document without text must not fail the whole search).
            with_text = [h for h in hits if isinstance((h.payload or {}).get(field), str)]
            if not with_text:
                raise FailedPrecondition(
                    f"rerank: none of the {len(hits)} candidates has a text in payload field {field!r}; "
                    "upsert texts with store_text=true or set rerank.text_field"
                )
            if len(with_text) < len(hits):
                log.info(
                    "Search request %s: %d of %d rerank candidates have no text in %r and are left out",
                    timer.request_id,
                    len(hits) - len(with_text),
                    len(hits),
                    field,
                )
            hits = with_text
            texts = [h.payload[field] for h in hits]
            if method == pb.SCORE_METHOD_UNI_ENCODER:
                scores = await self._uni_rank(request.text, texts, False, True, timer, context, "rerank")
            else:
                pairs = [(request.text, t) for t in texts]
                scores, _ = await self._score(pairs, method, False, True, timer, context, field="rerank")
            order = np.argsort(-scores, kind="stable")[:top_k]
            hits = [
                type(hits[i])(id=hits[i].id, score=float(scores[i]), payload=hits[i].payload) for i in order
            ]
        out = []
        for h in hits[:top_k]:
            hp = pb.Hit(id=h.id, score=float(h.score))
            if not request.omit_payload and h.payload is not None:
                hp.payload.CopyFrom(convert.payload_pb(h.payload))
            if stage is not None:
                hp.vector_score = first[h.id]
            out.append(hp)
        return pb.SearchResponse(hits=out, timing=timer.message(pb))

    # -- index lifecycle ------------------------------------------------------
    async def _refresh_index_metrics(self, name: str):
        info = await self._read_store(self.rt.store.get, name)
        self.rt.metrics.set_index(info.name, int(info.count), int(info.size_bytes or 0))
        return info

    @rpc("CreateIndex")
    async def CreateIndex(self, request, context, timer):
        store = self._store()
        m = self.rt.models
        if not request.name:
            raise InvalidInput("name: must not be empty")
        if request.metric not in (pb.METRIC_UNSPECIFIED, *convert.PB_TO_METRIC):
            raise InvalidInput(f"metric: unknown metric enum value {request.metric}")
        from pairsmith.service.store.index_store import IndexMetric

        metric = IndexMetric(convert.PB_TO_METRIC.get(request.metric, "cosine"))
        factory = _opt(request, "factory", "IDMap2,Flat")
        if not factory.strip():
            raise InvalidInput("factory: must not be empty")

        def create():
            return store.create(
                request.name,
                dim=m.bi.dim,
                factory=factory,
                metric=metric,
                encoder_fingerprint=m.bi.fingerprint,
                encoder_id=m.bi.model_id,
            )

        caller = CALLER.get()
        key = caller.key if caller is not None else None
        info = await self._in_store(self.rt.quotas.create, store, request.name, key, create)
        audit("CreateIndex", context, index=info.name, factory=repr(factory), metric=metric.value)
        self.rt.metrics.set_index(info.name, int(info.count), int(info.size_bytes or 0))
        return pb.CreateIndexResponse(index=convert.index_info_pb(info), timing=timer.message(pb))

    @rpc("Upsert")
    async def Upsert(self, request_iterator, context, timer):
        store = self._store()
        from pairsmith.service.store.faiss_index import check_norms
        from pairsmith.service.store.index_store import UpsertItem

        m = self.rt.models
        name = None
        info = None
        written = 0
        chunk: list[tuple[str, object, dict | None, bool]] = []  # (id, text | vector, payload, is_text)
        seq = -1

        async def flush():
            nonlocal written
            if not chunk:
                return
            texts = [c[1] for c in chunk if c[3]]
            vecs = None
            if texts:
                await self._read_store(store.check_encoder, name, m.bi.fingerprint)
                res = await self._embed(texts, timer, context, field="items.text")
                vecs = iter(self._vectors(res.values))
            items = [
                UpsertItem(id=i, vector=next(vecs) if is_text else v, payload=p) for i, v, p, is_text in chunk
            ]
            chunk.clear()
            t0 = time.perf_counter()
            written += await self._in_store(self.rt.quotas.upsert, store, name, items)
            timer.search_ms += (time.perf_counter() - t0) * 1e3

        try:
            async for req in request_iterator:
                seq += 1
                if name is None:
                    if not req.index:
                        raise InvalidInput("message[0].index: the first message must name the index")
                    name = req.index
                    info = await self._read_store(store.get, name)
                elif req.index and req.index != name:
                    raise InvalidInput(
                        f"message[{seq}].index: {req.index!r} differs from {name!r} in message[0]"
                    )
                self._check_count(len(req.items), f"message[{seq}].items", allow_empty=True)
                store_text = _opt(req, "store_text", True)
                for j, it in enumerate(req.items):
                    field = f"message[{seq}].items[{j}]"
                    convert.check_id(it.id, field)
                    which = it.WhichOneof("content")
                    if which is None:
                        raise InvalidInput(f"{field}: set one of text, vector, vector_values")
                    payload = convert.payload_to_dict(it, field)
                    if which == "text":
                        if len(it.text) > self.cfg.max_text_chars:
                            raise InvalidInput(
                                f"{field}.text: {len(it.text)} characters; the limit is "
                                f"{self.cfg.max_text_chars} per text (Info.max_text_chars)"
                            )
                        if store_text:
                            payload = dict(payload or {})
                            payload.setdefault("text", it.text)
                        convert.check_payload_size(payload, field, text_stored=store_text)
                        chunk.append((it.id, it.text, payload, True))
                    else:
                        vec = convert.vector_from(it, which, field, int(info.dim))
                        check_norms(vec, info.metric, f"{field}.{which}")
                        convert.check_payload_size(payload, field, text_stored=False)
                        chunk.append((it.id, vec, payload, False))
                    if len(chunk) >= UPSERT_CHUNK:
                        await flush()
            if name is None:
                raise InvalidInput("Upsert: the stream held no message; send at least one naming the index")
            await flush()
        except Exception as exc:
            if written and hasattr(exc, "args") and exc.args and isinstance(exc.args[0], str):
                exc.args = (f"{exc.args[0]} ({written} items before the failure were stored)",)
            raise
        info = await self._refresh_index_metrics(name)
        audit("Upsert", context, index=name, upserted=written, count=int(info.count))
        return pb.UpsertResponse(upserted=written, count=int(info.count), timing=timer.message(pb))

    @rpc("Delete")
    async def Delete(self, request, context, timer):
        store = self._store()
        if not request.index:
            raise InvalidInput("index: must not be empty")
        limit = self.cfg.max_texts_per_request  # the same per-request cap as texts and items
        if len(request.ids) > limit:
            raise InvalidInput(
                f"ids: {len(request.ids)} ids, at most {limit} per request (Info.max_texts_per_request)"
            )
        for i, item_id in enumerate(request.ids):
            if not item_id:
                raise InvalidInput(f"ids[{i}]: must not be empty")
        t0 = time.perf_counter()
        n = await self._in_store(store.delete, request.index, list(request.ids))
        timer.search_ms += (time.perf_counter() - t0) * 1e3
        info = await self._refresh_index_metrics(request.index)
        self.rt.quotas.set_count(info.name, int(info.count))
        audit("Delete", context, index=info.name, requested=len(request.ids), deleted=int(n))
        return pb.DeleteResponse(deleted=int(n), count=int(info.count), timing=timer.message(pb))

    @rpc("GetIndex")
    async def GetIndex(self, request, context, timer):
        self._store()
        if not request.name:
            raise InvalidInput("name: must not be empty")
        info = await self._refresh_index_metrics(request.name)
        return pb.GetIndexResponse(index=convert.index_info_pb(info), timing=timer.message(pb))

    @rpc("ListIndexes")
    async def ListIndexes(self, request, context, timer):
        store = self._store()
        infos = await self._read_store(store.list)
        self.rt.quotas.refresh(infos)
        for info in infos:
            self.rt.metrics.set_index(info.name, int(info.count), int(info.size_bytes or 0))
        infos = sorted(infos, key=lambda i: i.name)
        return pb.ListIndexesResponse(
            indexes=[convert.index_info_pb(i) for i in infos], timing=timer.message(pb)
        )

    @rpc("DropIndex")
    async def DropIndex(self, request, context, timer):
        store = self._store()
        if not request.name:
            raise InvalidInput("name: must not be empty")
        await self._in_store(store.drop, request.name)
        self.rt.quotas.dropped(request.name)
        audit("DropIndex", context, index=request.name)
        self.rt.metrics.forget_index(request.name)
        return pb.DropIndexResponse(timing=timer.message(pb))
