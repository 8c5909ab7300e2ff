"""Typed hand-offs between stages: token batches in, embeddings and scores out.

Small frozen dataclasses; numpy at the edges so that the same hand-off serves
the torch and the onnxruntime runtimes and the gRPC layer never sees a tensor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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


@dataclass(frozen=True)
class TokenBatch:
    """One padded batch, ready for a backbone. All arrays int64, shape (B, T)."""

    input_ids: np.ndarray  # (B, T)
    attention_mask: np.ndarray  # (B, T)
    token_type_ids: np.ndarray | None  # (B, T) or None for models without segments

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass(frozen=True)
class Encoded:
    """Texts (or pairs) tokenised without padding, in input order."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    truncated: np.ndarray  # (N,) bool: text was longer than max_length

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def token_counts(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass(frozen=True)
class Embeddings:
    """Sentence vectors in input order, with per-text token accounting."""

    vectors: np.ndarray  # (N, D) float32
    token_counts: np.ndarray  # (N,) int64, tokens fed to the model (after truncation)
    truncated: np.ndarray  # (N,) bool

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


@dataclass(frozen=True)
class Scores:
    """One score per pair, in input order."""

    values: np.ndarray  # (N,) float32
    token_counts: np.ndarray  # (N,) int64
    truncated: np.ndarray  # (N,) bool
