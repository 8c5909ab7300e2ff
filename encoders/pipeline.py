"""The one inference pipeline: tokenize -> plan batches -> backend -> typed output in input order.

``BiEncoder.encode``, ``CrossEncoder.score``, the Uni-Encoder and the server's batcher all run
through :class:`Pipeline`; the server's batcher only merges queued requests into one
:class:`Encoded` and calls :meth:`Pipeline.forward`. Post-processing (normalise, dimensions,
sigmoid) is applied by the caller from ``postprocess.py``.

Batch planning: inputs are sorted by length and split into the contiguous sub-batches that
minimise padded tokens plus a per-forward overhead (:func:`plan_batches`, an exact dynamic
programme), each at most ``max_rows`` rows and ``max_tokens`` padded tokens. The overhead is
measured once by :meth:`Pipeline.calibrate` (the server does it at warm-up).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pairsmith.encoders.runtime import ModelBackend
from pairsmith.encoders.source import ModelSource
from pairsmith.encoders.tokenize import Tokenizer
from pairsmith.encoders.types import Encoded, ModelOutput, OutputKind
from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

DEFAULT_OVERHEAD_TOKENS = 64.0  # a forward's fixed cost in token-equivalents, until calibrated


def plan_batches(
    lengths: np.ndarray, max_rows: int, max_tokens: int | None, overhead_tokens: float
) -> list[tuple[int, int]]:
    """Split inputs sorted by length (descending) into contiguous sub-batches of least cost.

    Cost of a sub-batch = its padded tokens (rows x its first, longest row) + ``overhead_tokens``
    (one forward's fixed cost). Exact dynamic programme over the split points, O(n x max_rows).
    A merged batch of mixed lengths then runs as a few near-uniform forwards instead of padding
    every short text to the longest one.
    """
    n = len(lengths)
    if n == 0:
        return []
    if max_rows < 1:
        raise InvalidInput(f"batch_size: must be >= 1, got {max_rows}")
    limit = np.inf if max_tokens is None else float(max_tokens)
    lens = np.asarray(lengths, dtype=np.float64)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        lo = max(0, j - max_rows)
        starts = np.arange(lo, j)
        width = np.maximum(lens[starts], 1.0)
        rows = j - starts
        cost = best[starts] + rows * width + overhead_tokens
        cost[rows * width > limit] = np.inf
        cost[rows == 1] = best[j - 1] + width[-1] + overhead_tokens  # one row always fits
        k = int(np.argmin(cost))
        best[j] = cost[k]
        cut[j] = starts[k]
    plan = []
    j = n
    while j > 0:
        plan.append((int(cut[j]), j))
        j = int(cut[j])
    return plan[::-1]


def split_plan(plan: list[tuple[int, int]], streams: int) -> list[tuple[int, int]]:
    """With fewer batches than ``streams``, cut each into near-equal parts so every stream works.

    A lone request of 8 texts becomes two batches of 4 on 2 streams: two single-thread runs of
    half the rows finish sooner than one run of all rows on one thread.
    """
    if not plan or len(plan) >= streams:
        return plan
    parts = -(-streams // len(plan))  # ceil
    out: list[tuple[int, int]] = []
    for start, end in plan:  # every planned batch has at least one row
        k = min(parts, end - start)
        cuts = [start + round(i * (end - start) / k) for i in range(k + 1)]
        out.extend((a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a)
    return out


def concat_encoded(parts: Sequence[Encoded]) -> Encoded:
    """Several requests' rows as one :class:`Encoded` (row order kept)."""
    return Encoded(
        ids=[row for p in parts for row in p.ids],
        type_ids=[row for p in parts for row in p.type_ids],
        truncated=np.concatenate([p.truncated for p in parts]) if parts else np.zeros(0, dtype=bool),
    )


class Pipeline:
    """A tokenizer and a backend, with the padding-aware batch planner between them."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        backend: ModelBackend,
        *,
        max_rows: int = 32,
        max_tokens: int | None = None,
        overhead_tokens: float = DEFAULT_OVERHEAD_TOKENS,
    ) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.max_rows = int(max_rows)
        self.max_tokens = max_tokens
        self.overhead_tokens = float(overhead_tokens)
        self.calibrated = False
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    @property
    def kind(self) -> OutputKind:
        return self.backend.kind

    def forward(
        self,
        enc: Encoded,
        *,
        max_rows: int | None = None,
        max_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ModelOutput:
        """Run every row of ``enc``; the output's rows are in input order."""
        rows_cap = int(max_rows or self.max_rows)
        tok_cap = max_tokens if max_tokens is not None else self.max_tokens
        lengths = enc.token_counts
        order = np.argsort(-lengths, kind="stable")
        plan = plan_batches(lengths[order], rows_cap, tok_cap, self.overhead_tokens)
        n = len(enc)
        vectors: np.ndarray | None = None
        groups: list[np.ndarray | None] = [None] * n
        call = self.backend.embed if self.kind is OutputKind.EMBEDDINGS else self.backend.predict
        streams = int(getattr(self.backend, "streams", 1))
        if streams > 1:
            plan = split_plan(plan, streams)

        def run(span: tuple[int, int]):
            idx = order[span[0] : span[1]]
            batch = self.tokenizer.pad([enc.ids[i] for i in idx], [enc.type_ids[i] for i in idx])
            return idx, call(batch)

        # Several streams: batches run concurrently on one thread-safe session (results in plan order).
        results = (
            self._stream_pool(streams).map(run, plan) if streams > 1 and len(plan) > 1 else map(run, plan)
        )
        for idx, out in results:
            if out.kind is OutputKind.GROUPED_SCORES:
                for r, g in zip(idx, out.groups(), strict=True):
                    groups[r] = g
            else:
                if vectors is None:
                    shape = (n,) if out.kind is OutputKind.SCORES else (n, out.values.shape[1])
                    vectors = np.empty(shape, dtype=np.float32)
                vectors[idx] = out.values
            if progress is not None:
                progress(len(idx))
        if self.kind is OutputKind.GROUPED_SCORES:
            counts = [0 if g is None else len(g) for g in groups]
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            flat = np.concatenate([g for g in groups if g is not None] or [np.zeros(0, np.float32)])
            return ModelOutput(OutputKind.GROUPED_SCORES, flat.astype(np.float32), offsets)
        if vectors is None:  # no rows
            vectors = np.zeros((0,) if self.kind is OutputKind.SCORES else (0, 0), dtype=np.float32)
        return ModelOutput(self.kind, vectors)

    def _stream_pool(self, streams: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_size != streams:
            self._pool = ThreadPoolExecutor(streams, thread_name_prefix="pairsmith-stream")
            self._pool_size = streams
        return self._pool

    def health(self) -> None:
        """The model answers a real tokenised input with finite numbers (raises otherwise).

        Goes through this pipeline's own tokenizer, so models whose inputs are not plain token
        ids (packed bytes, spans) are probed with what they really read.
        """
        enc = (
            self.tokenizer.encode(["health check", "ok"])
            if self.kind is not OutputKind.GROUPED_SCORES
            else None
        )
        if enc is None:
            self.backend.health()
            return
        out = self.forward(enc)
        if not np.isfinite(out.values).all():
            from pairsmith.errors import FailedPrecondition

            raise FailedPrecondition("health: the model returned non-finite values")

    def calibrate(self, width: int = 16, reps: int = 3) -> float:
        """Measure one forward's fixed cost, in token-equivalents, and use it for planning.

        Fits ``time = a * padded_tokens + b`` from forwards of 1 and ``max_rows`` rows; ``b / a``
        is what one extra forward costs, which :func:`plan_batches` weighs against padding.
        """
        pad_id = int(getattr(self.tokenizer, "pad_id", 0))

        def timed(rows: int) -> float:
            batch = self.tokenizer.pad([[pad_id + 1] * width] * rows, [[0] * width] * rows)
            call = self.backend.embed if self.kind is OutputKind.EMBEDDINGS else self.backend.predict
            if self.kind is OutputKind.GROUPED_SCORES:
                return 0.0
            call(batch)
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                call(batch)
                out.append(time.perf_counter() - t0)
            return statistics.median(out)

        rows = max(2, self.max_rows)
        t1, tr = timed(1), timed(rows)
        per_token = (tr - t1) / ((rows - 1) * width)
        # per_token <= 0: a full batch costs no more than one row (a tiny model, or noise): the
        # fixed per-forward cost dominates, so the planner should favour few, full forwards.
        overhead = (t1 - per_token * width) / per_token if per_token > 0 else 4096.0
        self.overhead_tokens = float(min(max(overhead, 1.0), 4096.0))
        self.calibrated = True
        log.info("one forward costs about %.0f tokens of work", self.overhead_tokens)
        return self.overhead_tokens


class PipelineFacts:
    """Facts every pipeline-backed encoder answers alike (mixed into BiEncoder and CrossEncoder)."""

    pipeline: Pipeline
    source: ModelSource
    engine_why: str = ""  # set by load(backend="auto"): which engine auto picked and why

    @property
    def tokenizer(self) -> Tokenizer:
        return self.pipeline.tokenizer

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def model_id(self) -> str:
        return self.source.display_id

    @property
    def engine(self) -> str:
        """What runs the model, in one line (runtime, variant, streams x threads; why, for ``auto``)."""
        fn = getattr(self.pipeline.backend, "describe", None)
        what = fn() if fn is not None else type(self.pipeline.backend).__name__
        return f"{what}; {self.engine_why}" if self.engine_why else what
