"""gRPC status codes for :mod:`pairsmith.errors`, and the RPC wrapper that applies them.

The error *kinds* are defined once, in :mod:`pairsmith.errors`; this module
only maps each kind to its gRPC status code (``STATUS_FOR_KIND``). Every
servicer method is wrapped by :func:`rpc`: it gives the call a request id and
a :class:`CallTimer`, maps :class:`PairsmithError` through the table, reports
``(rpc, code, seconds)`` to the servicer's ``observe``, and sends timing and
request id as trailing metadata. Anything else is a bug: it is logged with the
request id and answered as INTERNAL with that id (nothing from the exception text).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from pairsmith.errors import ErrorKind, PairsmithError

log = logging.getLogger(__name__)

STATUS_FOR_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

TIMING_KEY = "pairsmith-timing-ms"
REQUEST_ID_KEY = "x-request-id"


class RequestExpired(Exception):
    """The caller's deadline passed while the request waited (DEADLINE_EXCEEDED)."""


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, PairsmithError):
        return STATUS_FOR_KIND.get(exc.kind, grpc.StatusCode.INTERNAL)
    if isinstance(exc, RequestExpired):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


@dataclass
class CallTimer:
    """Where one call's time went (milliseconds); becomes the ``Timing`` message."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    start: float = field(default_factory=time.perf_counter)
    queue_ms: float = 0.0
    tokenize_ms: float = 0.0
    inference_ms: float = 0.0
    search_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1e3

    def add(self, other: CallTimer) -> None:
        self.queue_ms += other.queue_ms
        self.tokenize_ms += other.tokenize_ms
        self.inference_ms += other.inference_ms
        self.search_ms += other.search_ms

    def message(self, pb):
        """The ``pairsmith.v1.Timing`` message (``pb`` is the generated module)."""
        return pb.Timing(
            queue_ms=self.queue_ms,
            tokenize_ms=self.tokenize_ms,
            inference_ms=self.inference_ms,
            search_ms=self.search_ms,
            total_ms=self.total_ms,
        )

    def header(self) -> str:
        return (
            f"queue={self.queue_ms:.3f},tokenize={self.tokenize_ms:.3f},inference={self.inference_ms:.3f},"
            f"search={self.search_ms:.3f},total={self.total_ms:.3f}"
        )


def _finish(context, timer: CallTimer) -> None:
    try:
        context.set_trailing_metadata(((TIMING_KEY, timer.header()), (REQUEST_ID_KEY, timer.request_id)))
    except Exception:  # the call may already be closed (cancelled client)
        pass


async def _abort(self, context, rpc_name: str, timer: CallTimer, exc: BaseException) -> grpc.StatusCode:
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s request %s failed: internal error", rpc_name, timer.request_id, exc_info=exc)
        message = f"internal error (request id {timer.request_id}); see the server log"
    elif isinstance(exc, PairsmithError):
        message = self.scrub(exc.message)
    else:
        message = self.scrub(str(exc) or code.name)
    _finish(context, timer)
    await context.abort(code, message)
    return code  # not reached: abort raises


def rpc(name: str) -> Callable:
    """Wrap a servicer method ``(self, request, context, timer)`` with the error table.

    Works for coroutines (unary and client-streaming) and async generators
    (server- and bidi-streaming). From the servicer: ``self.observe(name, code, seconds)``,
    ``self.track(+1 | -1)`` (calls in flight: the gauge and the shutdown drain) and
    ``self.scrub(message)`` (no server paths in what a client reads).
    """

    def deco(fn: Callable) -> Callable:
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream_wrapper(self, request, context):
                timer = CallTimer()
                code = grpc.StatusCode.OK
                self.track(1)
                try:
                    async for item in fn(self, request, context, timer):
                        yield item
                    _finish(context, timer)
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    if _is_abort(exc):
                        code = _context_code(context)
                        raise
                    code = status_for(exc)
                    await _abort(self, context, name, timer, exc)
                finally:
                    self.track(-1)
                    self.observe(name, code, timer.total_ms / 1e3)

            return stream_wrapper

        @functools.wraps(fn)
        async def wrapper(self, request, context):
            timer = CallTimer()
            code = grpc.StatusCode.OK
            self.track(1)
            try:
                result = await fn(self, request, context, timer)
                _finish(context, timer)
                return result
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                if _is_abort(exc):
                    code = _context_code(context)
                    raise
                code = status_for(exc)
                await _abort(self, context, name, timer, exc)
            finally:
                self.track(-1)
                self.observe(name, code, timer.total_ms / 1e3)

        return wrapper

    return deco


def _is_abort(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError"


def _context_code(context) -> grpc.StatusCode:
    try:
        code = context.code()
    except Exception:
        return grpc.StatusCode.UNKNOWN
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN
