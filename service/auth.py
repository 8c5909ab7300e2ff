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
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(presented, k)
    return ok


def bearer_token(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
            return b""
    return None


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def abort_unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort_unary, des, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, des, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort_unary, des, ser)
    return grpc.stream_stream_rpc_method_handler(abort_stream, des, ser)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a valid key with UNAUTHENTICATED (before any work)."""

    def __init__(self, keys: tuple[bytes, ...], on_reject: Callable[[str], None] | None = None) -> None:
        self._keys = keys
        self._on_reject = on_reject

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is not None and key_matches(token, self._keys):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        if self._on_reject is not None:
            self._on_reject(method)
        why = "missing 'authorization: Bearer <key>' metadata" if token is None else "invalid API key"
        return _deny(handler, why)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS; with ``client_ca`` clients must present a certificate it signed (mutual TLS)."""
    pair = [(Path(key).read_bytes(), Path(cert).read_bytes())]
    if client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=Path(client_ca).read_bytes(), require_client_auth=True
    )
