"""Dynamic batching by token budget (the text-embeddings-inference scheme).

Each request is tokenised on its own (in a small thread pool), then queued.
One worker task per model pops queued requests in arrival order until the
next one would exceed ``max_batch_tokens`` real tokens, merges them into one
:class:`Encoded`, and hands that to the model's :class:`Pipeline` (the same one
``BiEncoder.encode`` uses: padding-aware sub-batches, backend, typed output) on
the model executor. The batcher only merges and splits; it has no model semantics. There is no delay
timer: the wait for the running batch is the coalescing window, so a lone
request starts at once and a busy server forms large batches by itself. An
optional bounded hold (``hold_fraction``, see :meth:`TokenBatcher._hold`)
keeps closed-loop clients from settling into alternating tiny/large batches.

Requests whose caller went away (cancelled future) or whose deadline passed
are dropped when popped. ``max_pending`` bounds queued + running requests;
beyond it :class:`ResourceExhausted` is raised at submit time.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from pairsmith.encoders.pipeline import Pipeline, concat_encoded
from pairsmith.encoders.types import Encoded, ModelOutput, OutputKind
from pairsmith.encoders.uni_tokenize import gather_scores
from pairsmith.errors import InvalidInput, ResourceExhausted, Unavailable
from pairsmith.service.status import RequestExpired

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """One request's share of the model output, in request order."""

    values: np.ndarray  # (N, D) float32 for EMBEDDINGS, (N,) for SCORES
    token_counts: np.ndarray  # (N,) int64
    truncated: np.ndarray  # (N,) bool
    queue_ms: float
    tokenize_ms: float
    inference_ms: float


@dataclass
class _Job:
    enc: Encoded
    future: asyncio.Future
    deadline: float | None  # time.monotonic() limit, or None
    enqueued: float
    n_tokens: int  # real tokens of all its inputs


class TokenBatcher:
    """Queues tokenised requests for one model and runs them in token-budget batches."""

    def __init__(
        self,
        name: str,
        pipeline: Pipeline,
        *,
        max_batch_tokens: int,
        max_pending: int,
        max_batch_rows: int = 32,
        hold_fraction: float = 0.0,
        model_executor: Executor,
        tokenize_executor: Executor,
        metrics=None,
        big_tokenize_executor: Executor | None = None,
        big_request_chars: int = 262_144,
    ) -> None:
        self.name = name
        self.pipeline = pipeline
        self.tokenizer = pipeline.tokenizer
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_pending = int(max_pending)
        self.max_batch_rows = int(max_batch_rows)
        self.hold_fraction = float(hold_fraction)
        self._model_executor = model_executor
        self._tok_executor = tokenize_executor
        # Requests with more characters than big_request_chars tokenise on their own pool, so a
        # few huge requests queue behind each other instead of in front of every small one.
        self._big_executor = big_tokenize_executor
        self._big_chars = int(big_request_chars)
        self._metrics = metrics
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_tokens = 0
        self._wake = asyncio.Event()
        self._pending = 0  # admitted and not yet answered
        self._task: asyncio.Task | None = None
        self._closed = False
        self.batches_run = 0

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(Unavailable("server is shutting down"))

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def pending(self) -> int:
        return self._pending

    # -- submit -------------------------------------------------------------
    async def submit_texts(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = True,
        deadline: float | None = None,
        field: str = "texts",
    ) -> BatchResult:
        return await self._submit(texts, None, truncate, deadline, field)

    async def submit_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        truncate: bool = True,
        deadline: float | None = None,
        field: str = "pairs",
    ) -> BatchResult:
        return await self._submit(None, pairs, truncate, deadline, field)

    async def submit_groups(
        self,
        context: str,
        candidates: Sequence[str],
        *,
        truncate: bool = True,
        deadline: float | None = None,
        field: str = "texts",
    ) -> BatchResult:
        """One context and its candidates (Uni-Encoder pipelines): one unit of work, admitted,
        queued, merged and dropped like any other request; ``values``: one score per candidate,
        in order (the rows a long candidate list is chunked into are put back together)."""
        return await self._submit(None, None, truncate, deadline, field, group=(context, list(candidates)))

    async def _submit(
        self, texts, pairs, truncate: bool, deadline: float | None, field: str, group=None
    ) -> BatchResult:
        if self._closed:
            raise Unavailable("server is shutting down")
        if self._pending >= self.max_pending:
            raise ResourceExhausted(
                f"server busy: {self._pending} requests in flight for the {self.name} model "
                f"(max_concurrent_requests={self.max_pending}); retry with backoff"
            )
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            if group is not None:
                n, chars = len(group[1]), len(group[0]) + sum(map(len, group[1]))
            else:
                n = len(texts) if texts is not None else len(pairs)
                chars = sum(map(len, texts)) if texts is not None else sum(len(a) + len(b) for a, b in pairs)
            if n == 0:
                return _empty(self.pipeline.kind)
            pool = self._tok_executor
            if self._big_executor is not None and chars > self._big_chars:
                pool = self._big_executor
            chunks = None
            try:
                if group is not None:  # encode_groups refuses over-limit input itself when truncate is off
                    enc, chunks, cand_trunc = await loop.run_in_executor(
                        pool, functools.partial(self.tokenizer.encode_groups, [group], truncate=truncate)
                    )
                elif texts is not None:
                    enc = await loop.run_in_executor(pool, self.tokenizer.encode, list(texts))
                else:
                    enc = await loop.run_in_executor(pool, self.tokenizer.encode_pairs, list(pairs))
            except MemoryError:
                raise ResourceExhausted(
                    f"{field}: the server ran out of memory tokenising {n} inputs; retry with fewer"
                ) from None
            tokenize_ms = (time.perf_counter() - t0) * 1e3
            if not truncate and enc.truncated.any():
                i = int(np.flatnonzero(enc.truncated)[0])
                raise InvalidInput(
                    f"{field}[{i}]: longer than the model's limit of {self.tokenizer.max_length} tokens "
                    f"(set truncate=true to cut it)"
                )
            fut: asyncio.Future = loop.create_future()
            job = _Job(
                enc=enc,
                future=fut,
                deadline=deadline,
                enqueued=time.perf_counter(),
                n_tokens=int(enc.token_counts.sum()),
            )
            self._queue.append(job)
            self._queued_tokens += job.n_tokens
            self._set_depth()
            self._wake.set()
            values, queue_ms, inference_ms = await fut
            token_counts, truncated = enc.token_counts, enc.truncated
            if chunks is not None:  # per row -> per candidate
                values = gather_scores(chunks, list(values), [n])[0]
                row = np.array([c.start for c in chunks])
                owner = np.searchsorted(row, np.arange(n), side="right") - 1  # (N,) row of each candidate
                token_counts, truncated = token_counts[owner], truncated[owner] | cand_trunc[0]
            return BatchResult(
                values=values,
                token_counts=token_counts,
                truncated=truncated,
                queue_ms=queue_ms,
                tokenize_ms=tokenize_ms,
                inference_ms=inference_ms,
            )
        finally:
            self._pending -= 1

    # -- worker -------------------------------------------------------------
    def _take(self) -> list[_Job]:
        """Pop live jobs in arrival order until the token budget is reached (at least one)."""
        jobs: list[_Job] = []
        tokens = 0
        now = time.monotonic()
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # caller cancelled
                self._pop()
                self._dropped()
                continue
            if job.deadline is not None and now >= job.deadline:
                self._pop()
                job.future.set_exception(RequestExpired("deadline passed while queued"))
                self._dropped()
                continue
            if jobs and tokens + job.n_tokens > self.max_batch_tokens:
                break
            self._pop()
            jobs.append(job)
            tokens += job.n_tokens
        self._set_depth()
        return jobs

    def _pop(self) -> _Job:
        job = self._queue.popleft()
        self._queued_tokens -= job.n_tokens
        return job

    async def _hold(self, last_tokens: int, last_end: float, last_s: float) -> None:
        """Bounded, load-adaptive hold (``hold_fraction`` > 0); never a fixed delay.

        Closed-loop clients answered by one batch come back together a moment later; taking
        the first of them alone locks the server into alternating tiny and large batches
        (1 + 15 requests with 16 clients), and tiny batches are inefficient on a CPU. So,
        right after a batch (within its own duration), while fewer than half of its tokens
        are queued, wait for more, at most ``hold_fraction`` x its forward time. An idle
        server, or a queue already holding half a batch, starts at once.
        """
        now = time.perf_counter()
        if self.hold_fraction <= 0 or not last_tokens or now - last_end > last_s:
            return
        until = now + self.hold_fraction * last_s
        while self._queued_tokens < last_tokens / 2:
            remaining = until - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        last_tokens, last_end, last_s = 0, 0.0, 0.0
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._hold(last_tokens, last_end, last_s)
            jobs = self._take()
            if not jobs:
                continue
            start = time.perf_counter()
            merged = concat_encoded([j.enc for j in jobs])
            ids = merged.ids
            try:
                out = await loop.run_in_executor(self._model_executor, self._run, merged)
            except asyncio.CancelledError:
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(Unavailable("server is shutting down"))
                raise
            except Exception as exc:  # a model failure fails this batch only
                log.exception("%s batch of %d inputs failed", self.name, len(ids))
                if isinstance(exc, MemoryError):
                    exc = ResourceExhausted(
                        f"the {self.name} model ran out of memory for a batch of {len(ids)} inputs; "
                        "retry with fewer or shorter texts"
                    )
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            last_end = time.perf_counter()
            inference_ms = (last_end - start) * 1e3
            last_tokens, last_s = sum(j.n_tokens for j in jobs), last_end - start
            self.batches_run += 1
            if self._metrics is not None:
                self._metrics.batch_size.labels(self.name).observe(len(ids))
                self._metrics.batch_tokens.labels(self.name).observe(sum(len(r) for r in ids))
                self._metrics.inference.labels(self.name).observe(inference_ms / 1e3)
            pos = 0
            for j in jobs:
                n = len(j.enc.ids)
                if not j.future.done():
                    queue_ms = (start - j.enqueued) * 1e3
                    j.future.set_result((out[pos : pos + n], queue_ms, inference_ms))
                pos += n

    @property
    def forward_overhead_tokens(self) -> float:
        return self.pipeline.overhead_tokens

    def calibrate(self, width: int = 16, reps: int = 3) -> float:
        """Model executor: measure the per-forward overhead (see :meth:`Pipeline.calibrate`); warm-up."""
        self.pipeline.max_rows = self.max_batch_rows
        return self.pipeline.calibrate(width, reps)

    def _run(self, merged: Encoded) -> np.ndarray:
        """Model executor: the merged rows through the pipeline (<= max_batch_rows rows and
        <= max_batch_tokens padded tokens per forward)."""
        out: ModelOutput = self.pipeline.forward(
            merged, max_rows=self.max_batch_rows, max_tokens=self.max_batch_tokens
        )
        if out.kind is OutputKind.GROUPED_SCORES:
            return np.asarray(out.groups(), dtype=object)  # one array of scores per row
        return out.values

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(self.name).set(len(self._queue))

    def _dropped(self) -> None:
        if self._metrics is not None:
            self._metrics.dropped.labels(self.name).inc()


def _empty(kind: OutputKind) -> BatchResult:
    shape = (0, 0) if kind is OutputKind.EMBEDDINGS else (0,)
    return BatchResult(
        values=np.zeros(shape, dtype=np.float32),
        token_counts=np.zeros(0, dtype=np.int64),
        truncated=np.zeros(0, dtype=bool),
        queue_ms=0.0,
        tokenize_ms=0.0,
        inference_ms=0.0,
    )
