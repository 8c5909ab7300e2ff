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
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pairsmith.service.batcher import TokenBatcher
from pairsmith.service.config import ServeConfig
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb
from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc
from pairsmith.service.telemetry import Metrics

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PairsmithService"].full_name
WARMUP_TEXTS = ("pairsmith warm-up", "a slightly longer sentence to warm up the model with more tokens.")


@dataclass
class Models:
    bi: object  # BiEncoder
    cross: object | None = None  # CrossEncoder
    uni_requested: str | None = None  # --uni-encoder value (not servable yet)

    @property
    def methods(self) -> list[int]:
        out = [pb.SCORE_METHOD_BI_ENCODER]
        if self.cross is not None:
            out.append(pb.SCORE_METHOD_CROSS_ENCODER)
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
    store: object | None = None
    store_error: str | None = None
    load_error: str | None = None
    shutting_down: bool = False
    runtime_versions: dict[str, str] = field(default_factory=dict)


def load_models(config: ServeConfig) -> Models:
    """Blocking: load the encoders named in ``config``."""
    from pairsmith.encoders import BiEncoder, CrossEncoder

    bi = BiEncoder.load(config.model, device=config.device, backend=config.backend)
    cross = None
    if config.cross_encoder:
        cross = CrossEncoder.load(config.cross_encoder, device=config.device, backend=config.backend)
    if config.uni_encoder:
        log.warning(
            "--uni-encoder %s: the Uni-Encoder is not available in this build yet", config.uni_encoder
        )
    return Models(bi=bi, cross=cross, uni_requested=config.uni_encoder)


def open_store(config: ServeConfig):
    from pairsmith.service.store.index_store import IndexStore

    root = config.store_root
    root.mkdir(parents=True, exist_ok=True)
    return IndexStore(root)


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
        )
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._load_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    async def start(self, port: int | None = None) -> int:
        cfg = self.config
        interceptors = []
        if cfg.api_key_file is not None:
            from pairsmith.service.auth import ApiKeyInterceptor, load_api_keys

            keys = load_api_keys(cfg.api_key_file)
            interceptors.append(ApiKeyInterceptor(keys, on_reject=self._count_rejected))
        options = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        pb_grpc.add_PairsmithServiceServicer_to_server(self._servicer(), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        for svc in ("", SERVICE_NAME):
            await self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{cfg.host}:{cfg.port if port is None else port}"
        if cfg.tls:
            from pairsmith.service.auth import server_credentials

            bound = server.add_secure_port(
                address, server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
            )
        else:
            bound = server.add_insecure_port(address)
        if bound == 0:
            from pairsmith.errors import Unavailable

            raise Unavailable(f"cannot bind {address}")
        await server.start()
        self._server = server
        self.port = bound
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
        log.info("pairsmith listening on %s:%d (%s)", cfg.host, bound, "TLS" if cfg.tls else "plaintext")
        self._load_task = asyncio.get_running_loop().create_task(self._load())
        return bound

    def _servicer(self):
        from pairsmith.service.servicer import PairsmithServicer

        return PairsmithServicer(self.rt)

    def _count_rejected(self, method: str) -> None:
        self.metrics.requests.labels(method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()

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
            )
            self.rt.bi_batcher = TokenBatcher("bi", models.bi.pipeline, **common)
            self.rt.bi_batcher.start()
            if models.cross is not None:
                self.rt.cross_batcher = TokenBatcher("cross", models.cross.pipeline, **common)
                self.rt.cross_batcher.start()
            try:
                self.rt.store = await loop.run_in_executor(self.rt.store_executor, open_store, cfg)
                for info in await loop.run_in_executor(self.rt.read_executor, self.rt.store.list):
                    self.metrics.set_index(info.name, int(info.count), int(info.size_bytes or 0))
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
        log.info("models loaded and warmed: serving %s", models.bi.model_id)

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
        """Graceful: NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``."""
        if self._stopped.is_set():
            return
        grace = self.config.shutdown_grace_s if grace is None else grace
        await self.begin_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        for b in (self.rt.bi_batcher, self.rt.cross_batcher):
            if b is not None:
                await b.close()
        loop = asyncio.get_running_loop()
        if self.rt.store is not None:
            await loop.run_in_executor(self.rt.store_executor, self.rt.store.close)
        for ex in (
            self.rt.model_executor,
            self.rt.tokenize_executor,
            self.rt.store_executor,
            self.rt.read_executor,
        ):
            ex.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
        self._stopped.set()
        log.info("pairsmith stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


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
