"""Prometheus metrics, served on their own port (never on the gRPC port).

Each server owns a private registry, so several servers (tests) can run in
one process. Names follow Prometheus conventions (``_total``, ``_seconds``).
The endpoint answers ``GET /metrics`` only (404 elsewhere). Labels have a
bounded set of values (RPC names, status codes, model kinds): index names are
user data of unbounded number, so index figures are totals over all indexes
(per-index figures come from GetIndex / ListIndexes, behind authentication).
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_BATCH_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pairsmith_requests", "RPCs answered, by method and status code", ["rpc", "code"], registry=r
        )
        self.latency = Histogram(
            "pairsmith_request_seconds", "RPC latency", ["rpc"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "pairsmith_queue_depth", "Requests waiting for a batch", ["model"], registry=r
        )
        self.inflight = Gauge(
            "pairsmith_inflight_requests", "RPCs being handled (started and not yet answered)", registry=r
        )
        self.batch_size = Histogram(
            "pairsmith_batch_size",
            "Inputs per forward batch",
            ["model"],
            buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "pairsmith_batch_tokens",
            "Real (unpadded) tokens per forward batch",
            ["model"],
            buckets=_BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "pairsmith_inference_seconds",
            "Forward time per batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "pairsmith_dropped_requests",
            "Queued requests dropped (cancelled or past deadline)",
            ["model"],
            registry=r,
        )
        self.decode_failures = Counter(
            "pairsmith_decode_failures",
            "Request messages that were not valid protobuf (answered INVALID_ARGUMENT)",
            ["rpc"],
            registry=r,
        )
        self.rate_limited = Counter(
            "pairsmith_rate_limited", "Calls refused by the per-key rate limit", ["rpc"], registry=r
        )
        self.indexes = Gauge("pairsmith_indexes", "Indexes in the store", registry=r)
        self.index_vectors = Gauge("pairsmith_index_vectors", "Items in all indexes", registry=r)
        self.index_bytes = Gauge("pairsmith_index_bytes", "Bytes on disk of all indexes", registry=r)
        self.open_indexes = Gauge(
            "pairsmith_open_indexes", "Indexes open now (FAISS in memory, files open)", registry=r
        )
        self.open_indexes_max = Gauge(
            "pairsmith_open_indexes_max", "Most indexes kept open at once (--max-open-indexes)", registry=r
        )
        self.index_evictions = Gauge(
            "pairsmith_index_evictions", "Idle indexes closed to stay within the open-index bound", registry=r
        )
        self.ready = Gauge("pairsmith_ready", "1 when models are loaded and warmed", registry=r)
        self._index_figures: dict[str, tuple[int, int]] = {}  # name -> (vectors, bytes): the totals
        self._figures_lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None

    def observe_rpc(self, rpc: str, code: str, seconds: float) -> None:
        self.requests.labels(rpc, code).inc()
        self.latency.labels(rpc).observe(seconds)

    def set_index(self, name: str, count: int, size_bytes: int) -> None:
        with self._figures_lock:
            self._index_figures[name] = (int(count), int(size_bytes))
            self._totals()

    def forget_index(self, name: str) -> None:
        with self._figures_lock:
            self._index_figures.pop(name, None)
            self._totals()

    def _totals(self) -> None:
        figures = self._index_figures.values()
        self.indexes.set(len(self._index_figures))
        self.index_vectors.set(sum(f[0] for f in figures))
        self.index_bytes.set(sum(f[1] for f in figures))

    def set_store(self, store) -> None:
        """Open-index figures, read from the store at each scrape."""
        self.open_indexes.set_function(lambda: store.open_count)
        self.open_indexes_max.set(store.max_open)
        self.index_evictions.set_function(lambda: store.evictions)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (``GET /metrics`` only); returns the bound port."""
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line each
                pass

        import socket

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        server = Server((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="pairsmith-metrics", daemon=True).start()
        self._http = server
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
