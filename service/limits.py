"""Who is calling and what they may use: the caller of the current RPC, audit lines, token
buckets, a rate-limited log, and each API key's fair share of the admission cap.

:data:`CALLER` is set by the API-key interceptor in the call's own task (tasks the call starts
inherit it), so the servicer can name the key in audit lines, charge its quotas and hold its
share of ``max_concurrent_requests`` without passing the key around.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pairsmith.errors import ResourceExhausted

if TYPE_CHECKING:
    from pairsmith.service.auth import ApiKey

audit_log = logging.getLogger("pairsmith.audit")


def peer_address(peer: str | None) -> str:
    """``ipv4:10.0.0.7:51234`` -> ``ipv4:10.0.0.7`` (throttling is per address, not per connection)."""
    if not peer:
        return "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None  # None: the server has no key file
    peer: str
    stream: bool = False  # a client-streaming call (Upsert, EmbedStream)

    @property
    def key_id(self) -> str:
        return self.key.id if self.key is not None else "-"


CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("pairsmith_caller", default=None)


def audit(action: str, context=None, **fields: object) -> None:
    """One ``pairsmith.audit`` line: the action, its fields, the caller's key id and peer address."""
    c = CALLER.get()
    if c is None:
        c = Caller(key=None, peer=peer_address(context.peer() if context is not None else None))
    words = " ".join(f"{k}={v}" for k, v in fields.items())
    audit_log.info("%s %s key=%s peer=%s", action, words, c.key_id, c.peer)


# -- budgets ----------------------------------------------------------------------------------------
class TokenBucket:
    """``rate`` units per second, up to ``burst``. ``take`` may overdraw (a call bigger than the
    burst passes once the bucket is not in debt; later calls wait for the refill)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.last = self.burst, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def take(self, cost: float, *, overdraw: bool = False) -> bool:
        self._refill()
        if self.tokens >= (min(cost, 1e-9) if overdraw else cost):
            self.tokens -= cost
            return True
        return False

    def wait_s(self, need: float = 1.0) -> float:
        """Seconds until ``need`` units are there."""
        self._refill()
        return max(0.0, (need - self.tokens) / self.rate) if self.rate > 0 else float("inf")

    @property
    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst


class Buckets:
    """One :class:`TokenBucket` per name; at most ``max_entries`` (full buckets are forgotten first)."""

    def __init__(self, rate: float, burst: float, max_entries: int = 65_536) -> None:
        self.rate, self.burst, self.max_entries = rate, burst, max_entries
        self._b: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def get(self, name: str) -> TokenBucket:
        b = self._b.get(name)
        if b is None:
            if len(self._b) >= self.max_entries:
                for k in [k for k, v in self._b.items() if v.full] or [next(iter(self._b))]:
                    del self._b[k]
            b = self._b[name] = TokenBucket(self.rate, self.burst)
        self._b.move_to_end(name)
        return b


class LogLimiter:
    """Lets ``burst`` lines through, then one per ``interval_s``; counts what it held back."""

    def __init__(self, burst: int = 10, interval_s: float = 1.0) -> None:
        self._bucket = TokenBucket(1.0 / interval_s, burst)
        self.suppressed = 0

    def log(self, logger: logging.Logger, level: int, fmt: str, *args: object) -> bool:
        if not self._bucket.take(1.0):
            self.suppressed += 1
            return False
        if self.suppressed:
            fmt += " (%d similar lines suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        logger.log(level, fmt, *args)
        return True


class FairShare:
    """Per-key model requests in flight: each of N keys may hold ``total // N`` (at least 1), so
    the shares add up to the server's ``max_concurrent_requests`` and no key can use another's.

    Past its share a unary call is refused (RESOURCE_EXHAUSTED); a message of a client stream
    waits for the key's next free slot instead (a stream already bounds its own window, and
    ending a bulk stream because it ran ahead of its share would lose the caller's place).
    """

    def __init__(self, total: int, n_keys: int) -> None:
        self.total = int(total)
        self.n_keys = max(1, int(n_keys))
        self._inflight: collections.Counter[str] = collections.Counter()
        self._freed: asyncio.Event | None = None  # set (and replaced) whenever a slot is released

    @property
    def share(self) -> int:
        return max(1, self.total // self.n_keys)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        c = CALLER.get()
        if c is None or c.key is None or self.n_keys < 2:
            yield
            return
        kid = c.key.id
        while self._inflight[kid] >= self.share:
            if not c.stream:
                raise ResourceExhausted(
                    f"API key {kid!r} has {self.share} model requests in flight, its share of "
                    f"max_concurrent_requests={self.total} across {self.n_keys} keys; retry with backoff"
                )
            if self._freed is None:
                self._freed = asyncio.Event()
            await self._freed.wait()
        self._inflight[kid] += 1
        try:
            yield
        finally:
            self._inflight[kid] -= 1
            if not self._inflight[kid]:
                del self._inflight[kid]
            freed, self._freed = self._freed, None
            if freed is not None:
                freed.set()
