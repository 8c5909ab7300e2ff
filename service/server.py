"""The gRPC server: lifecycle, model loading, health, reflection, shutdown.

``await build_server(config, port=0)`` binds the port at once (so tests and
load balancers can connect) and loads and warms the models in the
background; health says NOT_SERVING until that is done, and again from the
moment shutdown starts. Model forwards run on a one-thread executor (one
forward at a time: intra-op threads already use every core), tokenisation on
a small pool, store calls on their own thread; the event loop only moves
messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from pairsmith.service.batcher import TokenBatcher
from pairsmith.service.config import ServeConfig
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb
from pairsmith.service.telemetry import Metrics

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PairsmithService"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
WARMUP_TEXTS = ("pairsmith warm-up", "a slightly longer sentence to warm up the model with more tokens.")


@dataclass
class Models:
    bi: object  # BiEncoder
    cross: object | None = None  # CrossEncoder
    uni_requested: str | None = None  # --uni-encoder value
    uni: object | None = None  # UniEncoder (Rerank UNI_ENCODER)

    @property
    def methods(self) -> list[int]:
        out = [pb.SCORE_METHOD_BI_ENCODER]
        if self.cross is not None:
            out.append(pb.SCORE_METHOD_CROSS_ENCODER)
        if self.uni is not None:
            out.append(pb.SCORE_METHOD_UNI_ENCODER)
        return out


@dataclass
class Runtime:
    """Shared state of one server: config, models, batchers, store, executors, metrics."""

    config: ServeConfig
    metrics: Metrics
    model_executor: ThreadPoolExecutor
    tokenize_executor: ThreadPoolExecutor
    store_executor: ThreadPoolExecutor  # writes (one writer)
    read_executor: ThreadPoolExecutor  # searches and lookups (readers use immutable snapshots)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    models: Models | None = None
    bi_batcher: TokenBatcher | None = None
    cross_batcher: TokenBatcher | None = None
    uni_batcher: TokenBatcher | None = None
    store: object | None = None
    store_error: str | None = None
    load_error: str | None = None
    shutting_down: bool = False
    inflight: int = 0  # RPCs between the start of their handler and their reply
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # set while inflight == 0
    runtime_versions: dict[str, str] = field(default_factory=dict)
    cpu_isa: str = ""  # this CPU's feature set (avx2, avx512, avx512_vnni, amx), for Info
    big_tokenize_executor: ThreadPoolExecutor | None = None  # requests over big_request_chars
    fair: object | None = None  # limits.FairShare: per-key share of max_concurrent_requests
    quotas: object | None = None  # quota.Quotas: index and vector limits


def load_models(config: ServeConfig) -> Models:
    """Blocking: load the encoders named in ``config``."""
    from pairsmith.encoders import BiEncoder, CrossEncoder, UniEncoder

    common = dict(device=config.device, backend=config.backend, auto_export=config.auto_export)
    streams = config.streams or None
    bi = BiEncoder.load(config.model, **common, streams=streams)
    cross = None
    if config.cross_encoder:
        cross = CrossEncoder.load(
            config.cross_encoder, **common, streams=streams, last_layer=config.cross_last_layer
        )
    uni = None
    if config.uni_encoder:
        uni = UniEncoder.load(config.uni_encoder, **common)
    return Models(bi=bi, cross=cross, uni_requested=config.uni_encoder, uni=uni)


def open_store(config: ServeConfig):
    from pairsmith.service.store.index_store import IndexStore

    root = config.store_root
    root.mkdir(parents=True, exist_ok=True)
    return IndexStore(root, config=config.store_config)


def _cpu_isa() -> str:
    from pairsmith.encoders.onnx_quant import feature_set

    return feature_set().value


def runtime_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in (
        "grpcio",
        "protobuf",
        "torch",
        "sentence-transformers",
        "transformers",
        "faiss-cpu",
        "onnxruntime",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def decoding_handler(servicer, metrics) -> grpc.GenericRpcHandler:
    """The pairsmith.v1 methods, decoding requests themselves.

    gRPC's own deserializer turns a malformed message (invalid UTF-8 in a string field, a
    Struct nested past the decoder's depth limit) into UNKNOWN or INTERNAL; here it is
    INVALID_ARGUMENT naming the message, and counted in ``pairsmith_decode_failures_total``.
    """
    from pairsmith.errors import InvalidInput

    service = pb.DESCRIPTOR.services_by_name["PairsmithService"]
    handlers = {}
    for m in service.methods:
        in_cls = getattr(pb, m.input_type.name)
        out_ser = getattr(pb, m.output_type.name).SerializeToString
        fn = getattr(servicer, m.name)
        name = m.name

        def decode(raw: bytes, where: str, in_cls=in_cls, name=name):
            try:
                return in_cls.FromString(raw)
            except DecodeError as exc:
                metrics.decode_failures.labels(name).inc()
                raise InvalidInput(
                    f"{where}: malformed {in_cls.DESCRIPTOR.name} message ({_decode_reason(exc)})"
                ) from None

        if m.client_streaming:

            def wrap(fn=fn, decode=decode, server_streaming=m.server_streaming):
                async def decoded(raw_iter):
                    seq = 0
                    async for raw in raw_iter:
                        yield decode(raw, f"message[{seq}]")
                        seq += 1

                if server_streaming:

                    async def call(raw_iter, context):
                        async for reply in fn(decoded(raw_iter), context):
                            yield reply

                    return call

                async def call_unary(raw_iter, context):
                    return await fn(decoded(raw_iter), context)

                return call_unary

            kind = (
                grpc.stream_stream_rpc_method_handler
                if m.server_streaming
                else grpc.stream_unary_rpc_method_handler
            )
        else:

            def wrap(fn=fn, decode=decode, name=name):
                async def call(raw, context):
                    try:
                        request = decode(raw, "request")
                    except InvalidInput as exc:
                        servicer.observe(name, grpc.StatusCode.INVALID_ARGUMENT, 0.0)
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
                    return await fn(request, context)

                return call

            kind = grpc.unary_unary_rpc_method_handler
        handlers[m.name] = kind(wrap(), request_deserializer=None, response_serializer=out_ser)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _decode_reason(exc: DecodeError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("Error parsing message") and ": " in text else text


def enable_reflection(server: grpc.aio.Server) -> None:
    """Server reflection under both names clients use: v1alpha and v1 (same messages, new package)."""
    names = (
        SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
        REFLECTION_V1,
    )
    servicer = reflection.aio.ReflectionServicer(names)
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


class PairsmithServer:
    """One running server. Use :func:`build_server`, then ``wait_ready()`` / ``stop()``."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.rt = Runtime(
            config=config,
            metrics=self.metrics,
            model_executor=ThreadPoolExecutor(1, thread_name_prefix="pairsmith-model"),
            tokenize_executor=ThreadPoolExecutor(
                config.tokenizer_threads, thread_name_prefix="pairsmith-tok"
            ),
            store_executor=ThreadPoolExecutor(1, thread_name_prefix="pairsmith-store-w"),
            read_executor=ThreadPoolExecutor(2, thread_name_prefix="pairsmith-store-r"),
            runtime_versions=runtime_versions(),
            cpu_isa=_cpu_isa(),
            big_tokenize_executor=ThreadPoolExecutor(1, thread_name_prefix="pairsmith-tok-big"),
        )
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._load_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self.auth = None  # auth.ApiKeyInterceptor when a key file is configured

    async def start(self, port: int | None = None) -> int:
        cfg = self.config
        cfg.check_exposure()
        interceptors = self._auth_interceptors()
        host = cfg.bind_host
        if cfg.api_key_file is None and cfg.insecure:
            log.warning("binding %s without an API key: anyone who can reach it can call every RPC", host)
        elif cfg.insecure and not cfg.tls:
            log.warning("binding %s in plaintext (--insecure): API keys cross the network in clear", host)
        credentials = None
        if cfg.tls:
            from pairsmith.service.auth import server_credentials

            credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        server.add_generic_rpc_handlers((decoding_handler(self._servicer(), self.metrics),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server)
        for svc in ("", SERVICE_NAME):
            await self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{host}:{cfg.port if port is None else port}"
        try:
            if credentials is not None:
                bound = server.add_secure_port(address, credentials)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            from pairsmith.errors import Unavailable

            raise Unavailable(
                f"cannot listen on {address}: the port is in use or the address is not on this machine"
            )
        await server.start()
        self._server = server
        self.port = bound
        if cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
            except OSError as exc:
                from pairsmith.errors import Unavailable

                await server.stop(0)
                raise Unavailable(
                    f"metrics: cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc.strerror or exc})"
                ) from None
        log.info("pairsmith listening on %s:%d (%s)", host, bound, "TLS" if cfg.tls else "plaintext")
        self._load_task = asyncio.get_running_loop().create_task(self._load())
        return bound

    def _servicer(self):
        from pairsmith.service.servicer import PairsmithServicer

        return PairsmithServicer(self.rt)

    def _auth_interceptors(self) -> list:
        """The API-key interceptor (with a key file), the fair share and the quotas."""
        from pairsmith.service.auth import ApiKeyInterceptor, AuthPolicy, load_key_table
        from pairsmith.service.limits import FairShare
        from pairsmith.service.quota import Quotas

        cfg = self.config
        self.auth = None
        if cfg.api_key_file is not None:
            self.rt.fair = FairShare(cfg.max_concurrent_requests, 1)
            policy = AuthPolicy(
                rate_per_key=cfg.rate_limit_per_key,
                bytes_per_key=cfg.rate_limit_bytes_per_key,
                failures_per_minute=cfg.auth_failures_per_minute,
            )
            self.auth = ApiKeyInterceptor(
                load_key_table(cfg.api_key_file),
                policy,
                fair=self.rt.fair,
                on_refused=lambda m, code: self.metrics.requests.labels(m.rsplit("/", 1)[-1], code).inc(),
                on_limited=lambda m: self.metrics.rate_limited.labels(m.rsplit("/", 1)[-1]).inc(),
            )
        auth = self.auth
        self.rt.quotas = Quotas(
            cfg.max_indexes, cfg.max_vectors, key_by_id=lambda i: auth.table.by_id(i) if auth else None
        )
        return [auth] if auth is not None else []

    def reload_keys(self) -> bool:
        """SIGHUP: read the key file again; a bad file keeps the keys in use (the log says why)."""
        if self.auth is None:
            log.warning("SIGHUP: no api_key_file configured; nothing to reload")
            return False
        return self.auth.reload(self.config.api_key_file)

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            models = await loop.run_in_executor(self.rt.model_executor, load_models, cfg)
            self.rt.models = models
            common = dict(
                max_batch_tokens=cfg.max_batch_tokens,
                max_batch_rows=cfg.max_batch_rows,
                hold_fraction=cfg.batch_hold_fraction,
                max_pending=cfg.max_concurrent_requests,
                model_executor=self.rt.model_executor,
                tokenize_executor=self.rt.tokenize_executor,
                metrics=self.metrics,
                big_tokenize_executor=self.rt.big_tokenize_executor,
                big_request_chars=cfg.big_request_chars,
            )
            self.rt.bi_batcher = TokenBatcher("bi", models.bi.pipeline, **common)
            self.rt.bi_batcher.start()
            if models.cross is not None:
                self.rt.cross_batcher = TokenBatcher("cross", models.cross.pipeline, **common)
                self.rt.cross_batcher.start()
            if models.uni is not None:  # Rerank UNI_ENCODER: one request = one context + its candidates
                self.rt.uni_batcher = TokenBatcher(
                    "uni", models.uni.pipeline(), **{**common, "hold_fraction": 0.0}
                )
                self.rt.uni_batcher.start()
            try:
                self.rt.store = await loop.run_in_executor(self.rt.store_executor, open_store, cfg)
                self.metrics.set_store(self.rt.store)
                infos = await loop.run_in_executor(self.rt.read_executor, self.rt.store.list)
                for info in infos:
                    self.metrics.set_index(info.name, int(info.count), int(info.size_bytes or 0))
                owners = self.auth is not None
                await loop.run_in_executor(
                    self.rt.store_executor, lambda: self.rt.quotas.load(self.rt.store, infos, owners=owners)
                )
            except Exception as exc:  # the model RPCs still work without a store
                self.rt.store_error = str(exc) or type(exc).__name__
                log.error("index store unavailable: %s", self.rt.store_error)
            if cfg.warmup:
                await self.rt.bi_batcher.submit_texts(list(WARMUP_TEXTS))
                if self.rt.cross_batcher is not None:
                    await self.rt.cross_batcher.submit_pairs([WARMUP_TEXTS])
                for b in (self.rt.bi_batcher, self.rt.cross_batcher):
                    if b is not None:  # per-forward overhead, for padding-aware sub-batches
                        await loop.run_in_executor(self.rt.model_executor, b.calibrate)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.rt.load_error = str(exc) or type(exc).__name__
            log.error("model loading failed: %s", self.rt.load_error, exc_info=True)
            return
        if self.rt.shutting_down:
            return
        self.rt.ready.set()
        self.metrics.ready.set(1)
        for svc in ("", SERVICE_NAME):
            await self.health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        log.info("models loaded and warmed: serving %s on %s", models.bi.model_id, models.bi.engine)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the models are loaded; raises the load error if loading failed."""
        from pairsmith.errors import FailedPrecondition

        assert self._load_task is not None, "start() first"
        await asyncio.wait_for(asyncio.shield(self._load_task), timeout)
        if self.rt.load_error is not None:
            raise FailedPrecondition(f"model loading failed: {self.rt.load_error}")

    async def begin_shutdown(self) -> None:
        """Health to NOT_SERVING for every service (load balancers stop sending)."""
        self.rt.shutting_down = True
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``.

        While draining, the gRPC server keeps accepting connections so that health checks
        answer NOT_SERVING (not UNAVAILABLE) and in-flight streams keep reading their requests;
        new pairsmith calls are refused with UNAVAILABLE. Once nothing is in flight (or the
        grace period is over) the gRPC server stops and cancels whatever is left.
        """
        if self._stopped.is_set():
            return
        grace = self.config.shutdown_grace_s if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self.begin_shutdown()
        if self.rt.inflight > 0:
            # Woken by the last reply, not by polling: while draining, the event loop stays as
            # quiet as in normal service, and the model threads keep the cores.
            self.rt.drained.clear()
            try:
                await asyncio.wait_for(self.rt.drained.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass
        if self.rt.inflight:
            log.warning("shutdown grace over: cancelling %d calls still in flight", self.rt.inflight)
        if self._server is not None:
            await self._server.stop(max(0.0, deadline - loop.time()))
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        for b in (self.rt.bi_batcher, self.rt.cross_batcher, self.rt.uni_batcher):
            if b is not None:
                await b.close()
        if self.rt.store is not None:
            await loop.run_in_executor(self.rt.store_executor, self.rt.store.close)
        for ex in (
            self.rt.model_executor,
            self.rt.tokenize_executor,
            self.rt.store_executor,
            self.rt.read_executor,
            self.rt.big_tokenize_executor,
        ):
            if ex is not None:
                ex.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
        self._stopped.set()
        log.info("pairsmith stopped")


async def build_server(config: ServeConfig, port: int | None = None) -> tuple[PairsmithServer, int]:
    """Create and start a server; returns it and the bound port (``port=0``: any free one).

    ``port`` overrides ``config.port``. Models load in the background; use
    ``await server.wait_ready()`` or watch health.
    """
    server = PairsmithServer(config)
    bound = await server.start(port)
    return server, bound


class ServerThread:
    """A server on its own event loop in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, config: ServeConfig, port: int = 0) -> None:
        self.config = config
        self._port_arg = port
        self.loop = asyncio.new_event_loop()
        self.server: PairsmithServer | None = None
        self.port: int | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="pairsmith-server", daemon=True)

    def start(self, wait_ready: bool = True, timeout: float = 300.0) -> ServerThread:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(build_server(self.config, self._port_arg), self.loop)
        self.server, self.port = fut.result(timeout)
        if wait_ready:
            self.call(self.server.wait_ready(timeout), timeout)
        return self

    def call(self, coro, timeout: float | None = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace), timeout=grace + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
