"""API keys (``authorization: Bearer <key>``), scopes, throttling, audit lines and TLS credentials.

The key file holds one key per line (``#`` comments allowed). A line is the key alone (every
scope, no quota: the original format) or the key followed by ``field=value`` words::

    3f9c...e1                                   # all scopes, id "key-<hash>"
    7a12...b0 name=search-ui scopes=read        # Embed, Score, Rerank, Search, ...
    c0de...77 name=ingest scopes=read,write max_indexes=4 max_vectors=1000000

Keys are compared in constant time against every configured key. Health (``Check``, ``Watch``)
and reflection (``ServerReflectionInfo``, v1 and v1alpha) are open by exact method name; every
other method, including ones added later, needs a key, and a method without a scope in
:data:`SCOPE_OF` needs ``admin``. Authentication failures are logged (rate-limited; a short
hash of the presented key, never the key) and throttled per peer address. The key table is
swapped in one assignment on :meth:`ApiKeyInterceptor.reload` (SIGHUP), so a call sees either
the old table or the new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pairsmith.errors import (
    DataFormatError,
    InvalidInput,
    NotFound,
    PairsmithError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from pairsmith.service.limits import CALLER, Buckets, Caller, FairShare, LogLimiter, TokenBucket, peer_address

log = logging.getLogger(__name__)

# Exactly these methods never need a key (load balancers and grpcurl discovery).
OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
SCOPES = ("read", "write", "admin")
_READ = ("Embed", "EmbedStream", "Score", "Rerank", "Search", "GetIndex", "ListIndexes", "Info")
SCOPE_OF = {
    **{f"/pairsmith.v1.PairsmithService/{m}": "read" for m in _READ},
    "/pairsmith.v1.PairsmithService/Upsert": "write",
    "/pairsmith.v1.PairsmithService/Delete": "write",
    "/pairsmith.v1.PairsmithService/CreateIndex": "admin",
    "/pairsmith.v1.PairsmithService/DropIndex": "admin",
}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_QUOTA_FIELDS = ("max_indexes", "max_vectors")


def scope_of(method: str) -> str:
    """The scope a method needs; ``admin`` for any method the table does not name."""
    return SCOPE_OF.get(method, "admin")


def key_hash(secret: bytes) -> str:
    """A short, stable id for a key that reveals nothing usable about it (for logs)."""
    return hashlib.sha256(secret).hexdigest()[:12]


@dataclass(frozen=True)
class ApiKey:
    secret: bytes = field(repr=False)
    id: str  # name= from the key file, else "key-<hash>"
    scopes: frozenset[str] = frozenset(SCOPES)
    max_indexes: int | None = None  # indexes this key may own (create); None: no per-key limit
    max_vectors: int | None = None  # vectors in the indexes it owns


@dataclass(frozen=True)
class KeyTable:
    keys: tuple[ApiKey, ...]

    @property
    def secrets(self) -> tuple[bytes, ...]:
        return tuple(k.secret for k in self.keys)

    def by_id(self, key_id: str) -> ApiKey | None:
        return next((k for k in self.keys if k.id == key_id), None)

    def match(self, presented: bytes) -> ApiKey | None:
        i = key_index(presented, self.secrets)
        return None if i is None else self.keys[i]


def _parse_line(p: Path, n: int, line: str) -> ApiKey:
    secret, *words = line.split()
    if len(secret) < 16:
        raise DataFormatError(p, "keys must be at least 16 characters", line=n)
    values: dict[str, str] = {}
    for w in words:
        name, eq, value = w.partition("=")
        if not eq or name not in ("name", "scopes", *_QUOTA_FIELDS):
            raise DataFormatError(
                p, f"{w!r}: expected name=, scopes=, max_indexes= or max_vectors= after the key", line=n
            )
        if name in values:
            raise DataFormatError(p, f"{name}= given twice", line=n)
        values[name] = value
    key_id = values.get("name") or f"key-{key_hash(secret.encode())}"
    if "name" in values and not _NAME_RE.fullmatch(values["name"]):
        raise DataFormatError(p, f"name={values['name']!r}: 1-64 of A-Z a-z 0-9 . _ -", line=n)
    scopes = frozenset(SCOPES)
    if "scopes" in values:
        scopes = frozenset(s for s in values["scopes"].split(",") if s)
        bad = sorted(scopes - set(SCOPES))
        if bad or not scopes:
            raise DataFormatError(p, f"scopes={values['scopes']!r}: choose from {','.join(SCOPES)}", line=n)
    quotas: dict[str, int] = {}
    for q in _QUOTA_FIELDS:
        if q in values:
            if not values[q].isdigit():
                raise DataFormatError(p, f"{q}={values[q]!r}: expected an integer >= 0", line=n)
            quotas[q] = int(values[q])
    return ApiKey(secret=secret.encode(), id=key_id, scopes=scopes, **quotas)


def load_key_table(path: str | Path) -> KeyTable:
    """Read and check a key file; errors name the file and line (the key itself is never shown)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"api_key_file: {p} does not exist")
    mode = p.stat().st_mode
    if mode & 0o077:
        log.warning(
            "api_key_file %s is readable by group or others (mode %o); run: chmod 600 %s", p, mode & 0o777, p
        )
    keys: list[ApiKey] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            k = _parse_line(p, n, line)
            if any(hmac.compare_digest(k.secret, o.secret) for o in keys):
                raise DataFormatError(p, "the same key appears twice", line=n)
            if any(k.id == o.id for o in keys):
                raise DataFormatError(p, f"key id {k.id!r} appears twice (names must be unique)", line=n)
            keys.append(k)
    if not keys:
        raise InvalidInput(f"api_key_file: {p} holds no key")
    return KeyTable(tuple(keys))


def load_api_keys(path: str | Path) -> tuple[bytes, ...]:
    """The key strings of a key file (clients send the first)."""
    return load_key_table(path).secrets


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


# -- the interceptor ------------------------------------------------------------------------------------
@dataclass
class AuthPolicy:
    """Limits applied by :class:`ApiKeyInterceptor` (0 turns each off)."""

    rate_per_key: float = 0.0  # calls per second per key, burst 2x
    bytes_per_key: float = 0.0  # request bytes per second per key, burst 2x (overdraw allowed)
    failures_per_minute: int = 20  # failed authentications per peer address before throttling


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, checks the scope and budgets, then runs the call with :data:`CALLER` set.

    Refusals go through the error table (``pairsmith.errors`` -> ``STATUS_FOR_KIND``):
    no or wrong key UNAUTHENTICATED; wrong scope PERMISSION_DENIED naming the scope; a peer
    over its failure budget, or a key over its call or byte budget, RESOURCE_EXHAUSTED with a
    retry hint (``grpc-retry-pushback-ms``). ``on_refused(method, code_name)`` and
    ``on_limited(method)`` feed the metrics.
    """

    def __init__(
        self,
        keys: KeyTable,
        policy: AuthPolicy | None = None,
        *,
        fair: FairShare | None = None,
        on_refused: Callable[[str, str], None] | None = None,
        on_limited: Callable[[str], None] | None = None,
    ) -> None:
        self._table = keys
        self.policy = policy or AuthPolicy()
        self.fair = fair
        if fair is not None:
            fair.n_keys = len(keys.keys)
        self._on_refused = on_refused
        self._on_limited = on_limited
        p = self.policy
        self._calls = Buckets(p.rate_per_key, max(1.0, 2.0 * p.rate_per_key)) if p.rate_per_key > 0 else None
        self._bytes = Buckets(p.bytes_per_key, 2.0 * p.bytes_per_key) if p.bytes_per_key > 0 else None
        fpm = p.failures_per_minute
        self._failures = Buckets(fpm / 60.0, fpm) if fpm > 0 else None
        self._log = LogLimiter()

    @property
    def table(self) -> KeyTable:
        return self._table

    def reload(self, path: str | Path) -> bool:
        """Read ``path`` again and swap the table in; a bad file keeps the keys in use (logged)."""
        try:
            table = load_key_table(path)
        except (PairsmithError, OSError, UnicodeDecodeError) as exc:
            log.error(
                "api_key_file %s not reloaded: %s; keeping the %d keys in use",
                path,
                exc,
                len(self._table.keys),
            )
            return False
        self._table = table
        if self.fair is not None:
            self.fair.n_keys = len(table.keys)
        log.info("api_key_file %s reloaded: %d keys", path, len(table.keys))
        return True

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if method in OPEN_METHODS or handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        stream = handler.stream_unary is not None or handler.stream_stream is not None
        return _wrap(
            handler, lambda context, cost: self._admit(method, token, context, cost, stream), self._pace
        )

    # Runs in the call's task, before the handler: peer throttle, key, scope, budgets.
    def _admit(
        self, method: str, token: bytes | None, context, cost: int, stream: bool = False
    ) -> PairsmithError | None:
        peer = peer_address(context.peer())
        failures = self._failures.get(peer) if self._failures is not None else None
        wait = failures.wait_s(1.0) if failures is not None else 0.0
        if wait > 0:
            self._log.log(log, logging.WARNING, "auth throttled: peer=%s method=%s (over %d failures/min)",
                          peer, method, self.policy.failures_per_minute)  # fmt: skip
            return self._refuse(method, _retry(ResourceExhausted(
                f"too many failed authentication attempts from this address; retry in {math.ceil(wait)} s"), wait))  # fmt: skip
        key = self._table.match(token) if token else None
        if key is None:
            if failures is not None:
                failures.take(1.0)
            why = "missing 'authorization: Bearer <key>' metadata" if token is None else "invalid API key"
            self._log.log(log, logging.WARNING, "auth failure: peer=%s method=%s reason=%s key_hash=%s",
                          peer, method, "no key" if token is None else "wrong key",
                          key_hash(token) if token else "-")  # fmt: skip
            return self._refuse(method, Unauthenticated(why))
        scope = scope_of(method)
        if scope not in key.scopes:
            self._log.log(log, logging.WARNING, "permission denied: peer=%s method=%s key=%s needs scope %s",
                          peer, method, key.id, scope)  # fmt: skip
            return self._refuse(method, PermissionDenied(
                f"API key {key.id!r} lacks the {scope!r} scope that {method.rsplit('/', 1)[-1]} needs "
                f"(its scopes: {','.join(s for s in SCOPES if s in key.scopes)})"))  # fmt: skip
        if self._calls is not None and not self._calls.get(key.id).take(1.0):
            wait = self._calls.get(key.id).wait_s()
            return self._limited(method, _retry(ResourceExhausted(
                f"rate limit of {self.policy.rate_per_key:g} calls/s for this API key exceeded; "
                f"retry in {wait:.2f} s with backoff"), wait))  # fmt: skip
        CALLER.set(Caller(key=key, peer=peer, stream=stream))
        return self._charge(method, cost)

    def _charge(self, method: str, cost: int) -> PairsmithError | None:
        """A unary request's bytes against the caller's byte budget: refused when it is in debt."""
        b = self._byte_bucket(cost)
        if b is None or b.take(float(cost), overdraw=True):
            return None
        wait = b.wait_s(0.0)
        kid = CALLER.get().key.id  # type: ignore[union-attr]  # _byte_bucket checked it
        return self._limited(method, _retry(ResourceExhausted(
            f"byte budget of {self.policy.bytes_per_key:g} request bytes/s for API key {kid!r} "
            f"used up; retry in {wait:.2f} s"), wait))  # fmt: skip

    def _pace(self, cost: int) -> float:
        """A stream message's bytes: taken now (0.0), or the seconds to wait before trying again.

        Streams are paced, not cut: a bulk Upsert over its budget slows to the budget's rate.
        """
        b = self._byte_bucket(cost)
        if b is None or b.take(float(cost), overdraw=True):
            return 0.0
        return max(0.001, b.wait_s(1.0))

    def _byte_bucket(self, cost: int) -> TokenBucket | None:
        c = CALLER.get()
        if self._bytes is None or c is None or c.key is None or cost <= 0:
            return None
        return self._bytes.get(c.key.id)

    def _refuse(self, method: str, err: PairsmithError) -> PairsmithError:
        if self._on_refused is not None:
            from pairsmith.service.status import STATUS_FOR_KIND

            self._on_refused(method, STATUS_FOR_KIND[err.kind].name)
        return err

    def _limited(self, method: str, err: PairsmithError) -> PairsmithError:
        if self._on_limited is not None:
            self._on_limited(method)
        return err


def _retry(err: PairsmithError, wait_s: float) -> PairsmithError:
    err.retry_after_s = wait_s  # type: ignore[attr-defined]
    return err


def _cost(request) -> int:
    if isinstance(request, (bytes, bytearray, memoryview)):
        return len(request)
    size = getattr(request, "ByteSize", None)
    return int(size()) if callable(size) else 0


async def _abort(context, err: PairsmithError) -> None:
    from pairsmith.service.status import STATUS_FOR_KIND

    wait = getattr(err, "retry_after_s", None)
    trailing = () if wait is None else (("grpc-retry-pushback-ms", str(max(1, int(wait * 1000)))),)
    await context.abort(STATUS_FOR_KIND[err.kind], err.message, trailing_metadata=trailing)


def _wrap(handler: grpc.RpcMethodHandler, admit, pace) -> grpc.RpcMethodHandler:
    """``handler`` with ``admit(context, cost)`` first; request streams wait ``pace(cost)`` per message."""
    des, ser = handler.request_deserializer, handler.response_serializer

    def metered(request_iterator):
        async def gen():
            async for msg in request_iterator:
                cost = _cost(msg)
                while (wait := pace(cost)) > 0:
                    await asyncio.sleep(wait)
                yield msg

        return gen()

    async def run(inner, request, context):
        result = inner(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        else:
            yield await result

    if handler.unary_unary is not None:

        async def uu(request, context):
            err = admit(context, _cost(request))
            if err is not None:
                await _abort(context, err)
            return await handler.unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(uu, des, ser)
    if handler.unary_stream is not None:

        async def us(request, context):
            err = admit(context, _cost(request))
            if err is not None:
                await _abort(context, err)
            async for item in run(handler.unary_stream, request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(us, des, ser)
    if handler.stream_unary is not None:

        async def su(request_iterator, context):
            err = admit(context, 0)
            if err is not None:
                await _abort(context, err)
            return await handler.stream_unary(metered(request_iterator), context)

        return grpc.stream_unary_rpc_method_handler(su, des, ser)

    async def ss(request_iterator, context):
        err = admit(context, 0)
        if err is not None:
            await _abort(context, err)
        async for item in run(handler.stream_stream, metered(request_iterator), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(ss, des, ser)


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
