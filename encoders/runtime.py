"""Backends: the narrow model interface every runtime implements (the TEI idea).

A backend turns one padded :class:`TokenBatch` into a typed :class:`ModelOutput`:
``embed`` for bi-encoders (pooled vectors, (B, D)), ``predict`` for scoring models
(one logit per row, or one per candidate span of a row), and ``health`` (raises when
the model cannot answer). The backend owns the model's own pooling and head;
tokenisation, batch planning and post-processing (normalise, ``dimensions``,
sigmoid) live outside it, once (``pipeline.py``, ``postprocess.py``).

Implementations: :class:`TorchBackend` (any torch module taking a feature dict, e.g.
a sentence-transformers pipeline) and, in ``onnx_runtime.py``, the onnxruntime one.
:class:`RunnerBackend` adapts any object with ``run(batch) -> ndarray``.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol, runtime_checkable

import numpy as np

from pairsmith.encoders.types import ModelOutput, OutputKind, TokenBatch
from pairsmith.errors import FailedPrecondition, InvalidInput, parse_enum

log = logging.getLogger(__name__)


class Backend(enum.Enum):
    """Which runtime runs the model (user-facing choice: ``--backend``)."""

    TORCH = "torch"
    ONNX = "onnx"
    OPENVINO = "openvino"  # the ONNX export on OpenVINO's CPU plugin (optional package)
    AUTO = "auto"  # CPU: the measured fastest engine for this CPU's feature set (engines.py); GPU: torch

    @classmethod
    def parse(cls, value: str | Backend) -> Backend:
        return parse_enum(cls, value, "backend")


@runtime_checkable
class ModelBackend(Protocol):
    """What the pipeline and the server call. ``kind`` says which of embed/predict applies.

    ``normalizes`` is True when the model's own head already L2-normalises its embeddings
    (post-processing then does not normalise a second time).
    """

    kind: OutputKind
    normalizes: bool
    variant: str  # "fp32" for full precision; lossy variants name themselves (e.g. qint8_avx2)

    def embed(self, batch: TokenBatch) -> ModelOutput: ...

    def predict(self, batch: TokenBatch) -> ModelOutput: ...

    def health(self) -> None: ...


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"device: {device!r} requested but no CUDA device is available")
    return device


def to_features(batch: TokenBatch, device: str) -> dict:
    """Every array of the batch as a torch tensor on ``device`` (names as in :meth:`TokenBatch.feeds`)."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.feeds().items()}


def grouped_from_spans(values: np.ndarray, spans: np.ndarray) -> ModelOutput:
    """Pack per-group scores (B, G) into a GROUPED_SCORES output using the groups each row has."""
    counts = np.array([len(np.unique(r[r >= 0])) for r in spans], dtype=np.int64)  # (B,)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = (
        np.concatenate([values[r, : counts[r]] for r in range(len(counts))]) if len(counts) else values[:0, 0]
    )
    return ModelOutput(OutputKind.GROUPED_SCORES, flat.astype(np.float32), offsets)


class _BackendBase:
    kind: OutputKind
    normalizes: bool = False
    variant: str = "fp32"
    streams: int = 1  # batches the pipeline may run at once (thread-safe runners only)

    def _raw(self, batch: TokenBatch) -> np.ndarray:
        raise NotImplementedError

    def _typed(self, raw: np.ndarray, batch: TokenBatch) -> ModelOutput:
        b = batch.shape[0]
        if self.kind is OutputKind.EMBEDDINGS:
            return ModelOutput(OutputKind.EMBEDDINGS, raw.reshape(b, -1))
        if self.kind is OutputKind.SCORES:
            return ModelOutput(OutputKind.SCORES, raw.reshape(b, -1)[:, 0].copy())
        if batch.spans is None:
            raise InvalidInput("grouped scores: the token batch carries no spans")
        return grouped_from_spans(raw.reshape(b, -1), batch.spans)

    def embed(self, batch: TokenBatch) -> ModelOutput:
        if self.kind is not OutputKind.EMBEDDINGS:
            raise FailedPrecondition(f"embed: this model returns {self.kind.value}, not embeddings")
        return self._typed(self._raw(batch), batch)

    def predict(self, batch: TokenBatch) -> ModelOutput:
        if self.kind is OutputKind.EMBEDDINGS:
            raise FailedPrecondition("predict: this model returns embeddings; use embed")
        return self._typed(self._raw(batch), batch)

    def forward(self, batch: TokenBatch) -> ModelOutput:
        """``embed`` or ``predict``, whichever this model's kind answers."""
        return self.embed(batch) if self.kind is OutputKind.EMBEDDINGS else self.predict(batch)

    def health(self) -> None:
        """Run a two-row probe batch; raises if the model does not answer with finite numbers."""
        ids = np.array([[1, 2, 3], [1, 2, 0]], dtype=np.int64)
        mask = (ids != 0).astype(np.int64)
        spans = (
            np.array([[-1, 0, 0], [-1, 0, -1]], dtype=np.int64)
            if self.kind is OutputKind.GROUPED_SCORES
            else None
        )
        out = self.forward(TokenBatch(ids, mask, np.zeros_like(ids), spans=spans))
        if not np.isfinite(out.values).all():
            raise FailedPrecondition("health: the model returned non-finite values")


class TorchBackend(_BackendBase):
    """A torch module called with the batch's feature dict; ``output`` names the key to read.

    For a sentence-transformers bi-encoder ``output="sentence_embedding"``, for its
    CrossEncoder ``"scores"``; a Uni-Encoder module returns ``"scores"`` as (B, G).
    """

    def __init__(
        self, module, device: str, output: str, kind: OutputKind, *, normalizes: bool = False
    ) -> None:
        self.module = module
        self.device = device
        self.output = output
        self.kind = kind
        self.normalizes = normalizes

    def describe(self) -> str:
        import torch

        return f"torch {self.device}, {torch.get_num_threads()} thread(s)"

    def _raw(self, batch: TokenBatch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            self.module.eval()
            out = self.module(to_features(batch, self.device))[self.output]
            return out.float().cpu().numpy()


class RunnerBackend(_BackendBase):
    """Adapts a runner with ``run(batch) -> ndarray`` (onnxruntime, OpenVINO, ...) to the protocol."""

    def __init__(self, runner, kind: OutputKind, *, normalizes: bool = False) -> None:
        self.runner = runner
        self.kind = kind
        self.normalizes = normalizes
        self.variant = str(getattr(runner, "variant", "fp32"))
        self.streams = int(getattr(runner, "streams", 1))

    def describe(self) -> str:
        fn = getattr(self.runner, "describe", None)
        return fn() if fn is not None else f"{type(self.runner).__name__} {self.variant}"

    def _raw(self, batch: TokenBatch) -> np.ndarray:
        return np.asarray(self.runner.run(batch), dtype=np.float32)
