"""Tokenizers behind one protocol, and padding into :class:`TokenBatch`.

Everything downstream (the batch planner, the backends, the server's batcher)
depends on the :class:`Tokenizer` protocol, not on ``transformers``. The
WordPiece/BPE implementation, :class:`TextTokenizer`, drives the Rust
``tokenizers`` library directly (one pass, no Python loop per token) and can
be built from a Hugging Face fast tokenizer or straight from a model
directory's ``tokenizer.json`` (the ONNX backend loads no ``transformers``).
A byte- or word-level tokenizer implements the same four members.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tokenizers import Tokenizer as RustTokenizer

from pairsmith.encoders.types import Encoded, TokenBatch
from pairsmith.errors import FailedPrecondition, InvalidInput


@runtime_checkable
class Tokenizer(Protocol):
    """Texts -> :class:`Encoded` rows (unpadded, truncation reported) -> padded :class:`TokenBatch`."""

    max_length: int

    def encode(self, texts: Sequence[str]) -> Encoded: ...

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> Encoded: ...

    def pad(self, ids: list[Sequence[Any]], type_ids: list[list[int]]) -> TokenBatch: ...


class TextTokenizer:
    """A Hugging Face fast (Rust) tokenizer; truncation is reported, never silent."""

    def __init__(self, hf_tokenizer, max_length: int) -> None:
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise InvalidInput("tokenizer: a fast (Rust) tokenizer is required (tokenizer.json)")
        pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        uses_types = "token_type_ids" in getattr(hf_tokenizer, "model_input_names", [])
        self._setup(RustTokenizer.from_str(backend.to_str()), max_length, int(pad_id), uses_types)

    @classmethod
    def from_dir(
        cls, directory: str | Path, max_length: int, *, uses_type_ids: bool | None = None
    ) -> TextTokenizer:
        """Build from ``tokenizer.json`` (+ ``tokenizer_config.json``) without ``transformers``."""
        root = Path(directory)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise FailedPrecondition(
                f"tokenizer: {path} missing; a fast tokenizer (tokenizer.json) is required"
            )
        rust = RustTokenizer.from_file(str(path))
        cfg = _read(root / "tokenizer_config.json")
        pad_tok = cfg.get("pad_token")
        if isinstance(pad_tok, dict):
            pad_tok = pad_tok.get("content")
        pad_id = rust.token_to_id(pad_tok) if isinstance(pad_tok, str) else None
        if uses_type_ids is None:
            names = cfg.get("model_input_names")
            if names is not None:
                uses_type_ids = "token_type_ids" in names
            else:  # transformers' default for BERT-family tokenizers
                model_type = _read(root / "config.json").get("model_type", "")
                uses_type_ids = model_type in _TYPE_ID_MODELS
        self = cls.__new__(cls)
        self._setup(rust, max_length, int(pad_id or 0), bool(uses_type_ids))
        return self

    def _setup(self, rust: RustTokenizer, max_length: int, pad_id: int, uses_type_ids: bool) -> None:
        if max_length < 2:
            raise InvalidInput(f"max_length: must be >= 2, got {max_length}")
        self.max_length = int(max_length)
        # A private copy: enabling truncation must not change the caller's tokenizer.
        self._tok = rust
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length, strategy="longest_first")
        self.pad_id = pad_id
        self.uses_type_ids = uses_type_ids

    def encode(self, texts: Sequence[str]) -> Encoded:
        check_texts(texts, "texts")
        return self._wrap(self._tok.encode_batch(list(texts)))

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> Encoded:
        check_pairs(pairs, "pairs")
        return self._wrap(self._tok.encode_batch([(a, b) for a, b in pairs]))

    @staticmethod
    def _wrap(encs) -> Encoded:
        return Encoded(
            ids=[e.ids for e in encs],
            type_ids=[e.type_ids for e in encs],
            truncated=np.fromiter((bool(e.overflowing) for e in encs), dtype=bool, count=len(encs)),
        )

    def pad(self, ids: list[Sequence[Any]], type_ids: list[list[int]]) -> TokenBatch:
        return pad_rows(ids, type_ids, self.pad_id, self.uses_type_ids)


def one_token_type(hf_config) -> bool:  # noqa: ANN001
    """A backbone with a single token type (``type_vocab_size`` 1, RoBERTa-like): type id 1 would index
    past its table, so pairs must run without type ids. A config without the field says nothing (False)."""
    return int(getattr(hf_config, "type_vocab_size", 2) or 0) < 2


# BERT-family model types whose tokenizers emit token_type_ids by default.
_TYPE_ID_MODELS = {"bert", "electra", "albert", "xlnet", "deberta", "deberta-v2", "funnel"}


def pad_rows(
    ids: list[Sequence[Any]], type_ids: list[list[int]], pad_id: int, with_types: bool
) -> TokenBatch:
    """Right-pad integer rows into a (B, T) batch with a 0/1 attention mask."""
    width = max(len(x) for x in ids)
    b = len(ids)
    input_ids = np.full((b, width), pad_id, dtype=np.int64)
    mask = np.zeros((b, width), dtype=np.int64)
    types = np.zeros((b, width), dtype=np.int64)
    for r, (row, trow) in enumerate(zip(ids, type_ids, strict=True)):
        input_ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
        types[r, : len(trow)] = trow
    return TokenBatch(input_ids, mask, types if with_types else None)


def check_texts(texts: Sequence[str], field: str) -> None:
    if isinstance(texts, str):
        raise InvalidInput(f"{field}: expected a list of strings, got one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidInput(f"{field}[{i}]: expected a string, got {type(t).__name__}")


def check_pairs(pairs: Sequence[tuple[str, str]], field: str) -> None:
    for i, p in enumerate(pairs):
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            raise InvalidInput(f"{field}[{i}]: expected a (text_a, text_b) pair")
        check_texts(p, f"{field}[{i}]")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise FailedPrecondition(f"{path}: cannot read JSON ({exc})") from exc
