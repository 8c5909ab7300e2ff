"""Encoders: bi-encoder, cross-encoder, pooling, tokenisation, runtimes."""

from __future__ import annotations

from pairsmith.encoders.bi_encoder import BiEncoder
from pairsmith.encoders.cross_encoder import CrossEncoder
from pairsmith.encoders.runtime import Backend
from pairsmith.encoders.source import DEFAULT_MODEL, default_model_dir, fingerprint, resolve_model
from pairsmith.encoders.types import Activation, Embeddings, Pooling, Scores, TokenBatch
from pairsmith.encoders.uni_encoder import UniEncoder
from pairsmith.encoders.uni_tokenize import UniConfig, UniMask

__all__ = [
    "Activation",
    "Backend",
    "BiEncoder",
    "CrossEncoder",
    "DEFAULT_MODEL",
    "Embeddings",
    "Pooling",
    "Scores",
    "TokenBatch",
    "UniConfig",
    "UniEncoder",
    "UniMask",
    "default_model_dir",
    "fingerprint",
    "resolve_model",
]
