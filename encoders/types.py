"""Typed hand-offs between stages: token batches in, embeddings and scores out.

Small frozen dataclasses; numpy at the edges so that the same hand-off serves
the torch and the onnxruntime runtimes and the gRPC layer never sees a tensor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Pooling(enum.Enum):
    """How token states become one sentence vector."""

    MEAN = "mean"
    CLS = "cls"
    MAX = "max"
    LAST_TOKEN = "last-token"

    @property
    def st_mode(self) -> str:
        """The pooling_mode string sentence-transformers' Pooling module uses."""
        return {"mean": "mean", "cls": "cls", "max": "max", "last-token": "lasttoken"}[self.value]

    @classmethod
    def parse(cls, value: str | Pooling) -> Pooling:
        from pairsmith.errors import parse_enum

        return parse_enum(
            cls,
            str(value).replace("_", "-") if isinstance(value, str) else value,
            "pooling",
            aliases={"lasttoken": "last-token"},
        )


class Activation(enum.Enum):
    """What a cross-encoder returns: the raw logit or its sigmoid."""

    RAW = "raw"
    SIGMOID = "sigmoid"


class OutputKind(enum.Enum):
    """What a model returns for one token batch (the typed output contract)."""

    EMBEDDINGS = "embeddings"  # (B, D) float32, one vector per row
    SCORES = "scores"  # (B,) float32, one logit per row (cross-encoder)
    GROUPED_SCORES = "grouped-scores"  # one logit per candidate span of a row (Uni-Encoder)


@dataclass(frozen=True)
class TokenBatch:
    """One padded batch, ready for a backbone.

    ``input_ids``/``attention_mask``/``token_type_ids`` are int64 (B, T). The optional fields
    let a model ask for more than a plain padded batch:

    - ``position_ids`` (B, T) int64: explicit positions (Uni-Encoder candidates share theirs).
    - ``attention_bias`` (B, 1|H, T, T) float32, additive (0 = may attend, large negative =
      may not): a per-row attention pattern; when set it replaces the padding-only mask.
    - ``spans`` (B, T) int64: which output group each token belongs to (-1: none); a
      ``GROUPED_SCORES`` model returns one score per group id present in a row.
    - ``extras``: named arrays a non-WordPiece tokenizer hands its own embedder (e.g. packed
      bytes and ``cu_seqlens`` for a byte-level word encoder). Backends pass them by name.
    """

    input_ids: np.ndarray  # (B, T)
    attention_mask: np.ndarray  # (B, T)
    token_type_ids: np.ndarray | None  # (B, T) or None for models without segments
    position_ids: np.ndarray | None = None  # (B, T)
    attention_bias: np.ndarray | None = None  # (B, 1|H, T, T) additive float32
    spans: np.ndarray | None = None  # (B, T) group id per token, -1 outside groups
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b, t = self.input_ids.shape
        for name in ("attention_mask", "token_type_ids", "position_ids", "spans"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (b, t):
                raise ValueError(f"TokenBatch.{name}: shape {arr.shape}, expected {(b, t)}")
        bias = self.attention_bias
        if bias is not None and (bias.ndim != 4 or bias.shape[0] != b or bias.shape[2:] != (t, t)):
            raise ValueError(f"TokenBatch.attention_bias: shape {bias.shape}, expected ({b}, 1|H, {t}, {t})")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def feeds(self) -> dict[str, np.ndarray]:
        """Every array this batch carries, by its graph input name (for ONNX and plain modules)."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        for name in ("token_type_ids", "position_ids", "attention_bias", "spans"):
            arr = getattr(self, name)
            if arr is not None:
                out[name] = arr
        out.update(self.extras)
        return out


@dataclass(frozen=True)
class ModelOutput:
    """A backend's typed answer for one batch, rows in batch order.

    - ``EMBEDDINGS``: ``values`` (B, D).
    - ``SCORES``: ``values`` (B,).
    - ``GROUPED_SCORES``: ``values`` flat (sum of groups,), row r's scores are
      ``values[offsets[r]:offsets[r+1]]`` in group-id order.
    ``hidden_states`` holds every layer's token states ((L+1) x (B, T, H)) when the model was
    asked for them (a pooler reading all layers), else None.
    """

    kind: OutputKind
    values: np.ndarray
    offsets: np.ndarray | None = None  # (B+1,) int64, GROUPED_SCORES only
    hidden_states: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind is OutputKind.GROUPED_SCORES:
            if self.offsets is None or self.offsets[-1] != len(self.values):
                raise ValueError("ModelOutput: GROUPED_SCORES needs offsets ending at len(values)")
        elif self.kind is OutputKind.EMBEDDINGS and self.values.ndim != 2:
            raise ValueError(f"ModelOutput: EMBEDDINGS must be (B, D), got {self.values.shape}")
        elif self.kind is OutputKind.SCORES and self.values.ndim != 1:
            raise ValueError(f"ModelOutput: SCORES must be (B,), got {self.values.shape}")

    @property
    def rows(self) -> int:
        if self.kind is OutputKind.GROUPED_SCORES:
            return len(self.offsets) - 1  # type: ignore[arg-type]
        return int(self.values.shape[0])

    def groups(self) -> list[np.ndarray]:
        """GROUPED_SCORES: one array of scores per row."""
        off = self.offsets
        if off is None:
            raise ValueError("ModelOutput.groups: not a GROUPED_SCORES output")
        return [self.values[off[r] : off[r + 1]] for r in range(len(off) - 1)]


@dataclass(frozen=True)
class Encoded:
    """Texts (or pairs) tokenised without padding, in input order.

    A row is a sequence of *units* the model attends over: token ids for a WordPiece/BPE
    tokenizer, or whatever a tokenizer's ``pad`` understands (e.g. one ``bytes`` per word for a
    byte-level word encoder). The batch planner only needs their count.
    """

    ids: list[Sequence[Any]]
    type_ids: list[list[int]]
    truncated: np.ndarray  # (N,) bool: text was longer than max_length

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def token_counts(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def take(self, idx: Sequence[int]) -> Encoded:
        return Encoded(
            ids=[self.ids[i] for i in idx],
            type_ids=[self.type_ids[i] for i in idx],
            truncated=self.truncated[np.asarray(idx, dtype=np.int64)],
        )


@dataclass(frozen=True)
class Embeddings:
    """Sentence vectors in input order, with per-text token accounting."""

    vectors: np.ndarray  # (N, D) float32
    token_counts: np.ndarray  # (N,) int64, tokens fed to the model (after truncation)
    truncated: np.ndarray  # (N,) bool

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class Scores:
    """One score per pair, in input order."""

    values: np.ndarray  # (N,) float32
    token_counts: np.ndarray  # (N,) int64
    truncated: np.ndarray  # (N,) bool
