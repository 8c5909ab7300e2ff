"""API-key authentication (``authorization: Bearer <key>``) and TLS credentials.

Keys are read once from a file (one per line, ``#`` comments allowed) and
compared in constant time against every configured key. Health and
reflection stay open so that load balancers and ``grpcurl`` discovery work
without a key; every other method, including ones added later, is guarded
(the interceptor checks by prefix, not by a list of protected methods).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from pairsmith.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

# Method prefixes that never need a key.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def load_api_keys(path: str | Path) -> tuple[bytes, ...]:
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"api_key_file: {p} does not exist")
    mode = p.stat().st_mode
    if mode & 0o077:
        log.warning(
            "api_key_file %s is readable by group or others (mode %o); run: chmod 600 %s", p, mode & 0o777, p
        )
    keys = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if len(line) < 16:
                raise InvalidInput(f"api_key_file: {p}: keys must be at least 16 characters")
            keys.append(line.encode())
    if not keys:
        raise InvalidInput(f"api_key_file: {p} holds no key")
    return tuple(keys)


def key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """Constant-time in the key contents; compares against all keys (no early exit)."""
    return key_index(presented, keys) is not None


def key_index(presented: bytes, keys: tuple[bytes, ...]) -> int | None:
    """Which key matched (constant-time comparisons against every key), or None."""
    found = None
    for i, k in enumerate(keys):
        if hmac.compare_digest(presented, k) and found is None:
            found = i
    return found


def bearer_token(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
            return b""
    return None


def _deny(
    handler: grpc.RpcMethodHandler, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED
) -> grpc.RpcMethodHandler:
    async def abort_unary(request, context):
        await context.abort(code, message)

    async def abort_stream(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort_unary, des, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, des, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort_unary, des, ser)
    return grpc.stream_stream_rpc_method_handler(abort_stream, des, ser)


class RateLimiter:
    """Token bucket per key: ``rate`` calls per second, bursts up to ``2 x rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, 2.0 * self.rate)
        self._buckets: dict[int, tuple[float, float]] = {}  # key index -> (tokens, last time)

    def allow(self, key: int) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        return ok


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a valid key with UNAUTHENTICATED (before any work).

    ``rate_per_key`` > 0: each key may make that many calls per second (burst 2x); beyond,
    RESOURCE_EXHAUSTED. Health and reflection are neither authenticated nor limited.
    """

    def __init__(
        self,
        keys: tuple[bytes, ...],
        on_reject: Callable[[str], None] | None = None,
        rate_per_key: float = 0.0,
        on_limited: Callable[[str], None] | None = None,
    ) -> None:
        self._keys = keys
        self._on_reject = on_reject
        self._on_limited = on_limited
        self._limiter = RateLimiter(rate_per_key) if rate_per_key > 0 else None

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        which = key_index(token, self._keys) if token is not None else None
        handler = await continuation(handler_call_details)
        if which is not None:
            if handler is None or self._limiter is None or self._limiter.allow(which):
                return handler
            if self._on_limited is not None:
                self._on_limited(method)
            return _deny(
                handler,
                f"rate limit of {self._limiter.rate:g} calls/s for this API key exceeded; retry with backoff",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        if self._on_reject is not None:
            self._on_reject(method)
        why = "missing 'authorization: Bearer <key>' metadata" if token is None else "invalid API key"
        return _deny(handler, why)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS; with ``client_ca`` clients must present a certificate it signed (mutual TLS).

    The pair is checked first (gRPC would only fail later with "Failed to bind"): a key that
    does not belong to the certificate, or a file that is not PEM, is one clear error.
    """
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise InvalidInput(f"tls_key: {key} does not belong to the certificate {cert}") from None
        raise InvalidInput(
            f"tls_cert/tls_key: {cert} / {key} are not a PEM certificate and key ({reason})"
        ) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(str(client_ca))
        except ssl.SSLError as exc:
            raise InvalidInput(
                f"tls_client_ca: {client_ca} is not a PEM CA certificate ({exc.reason})"
            ) from None
    pair = [(Path(key).read_bytes(), Path(cert).read_bytes())]
    if client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=Path(client_ca).read_bytes(), require_client_auth=True
    )
