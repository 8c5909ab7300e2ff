"""Prometheus metrics, served on their own port (never on the gRPC port).

Each server owns a private registry, so several servers (tests) can run in
one process. Names follow Prometheus conventions (``_total``, ``_seconds``).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.index_vectors = Gauge("pairsmith_index_vectors", "Items per index", ["index"], registry=r)
        self.index_bytes = Gauge("pairsmith_index_bytes", "Bytes on disk per index", ["index"], registry=r)
        self.ready = Gauge("pairsmith_ready", "1 when models are loaded and warmed", registry=r)
        self._http = None

    def observe_rpc(self, rpc: str, code: str, seconds: float) -> None:
        self.requests.labels(rpc, code).inc()
        self.latency.labels(rpc).observe(seconds)

    def set_index(self, name: str, count: int, size_bytes: int) -> None:
        self.index_vectors.labels(name).set(count)
        self.index_bytes.labels(name).set(size_bytes)

    def forget_index(self, name: str) -> None:
        for g in (self.index_vectors, self.index_bytes):
            try:
                g.remove(name)
            except KeyError:
                pass

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (``/metrics``); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
