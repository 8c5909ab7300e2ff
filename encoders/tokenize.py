"""Fast tokenisation and length-sorted padded batching, shared by every runtime.

Texts are tokenised once by the Rust tokenizer (no Python loop per token),
then sorted by length so each padded batch wastes few pad tokens. The
batches carry the input positions so results go back in input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer as RustTokenizer

from pairsmith.encoders.types import Encoded, TokenBatch
from pairsmith.errors import InvalidInput


class TextTokenizer:
    """Wraps a Hugging Face fast tokenizer; truncation is reported, never silent."""

    def __init__(self, hf_tokenizer, max_length: int) -> None:
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise InvalidInput("tokenizer: a fast (Rust) tokenizer is required (tokenizer.json)")
        if max_length < 2:
            raise InvalidInput(f"max_length: must be >= 2, got {max_length}")
        self.max_length = int(max_length)
        # A private copy: enabling truncation must not change the caller's tokenizer.
        self._tok = RustTokenizer.from_str(backend.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length, strategy="longest_first")
        self.pad_id = int(hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0)
        self.uses_type_ids = "token_type_ids" in getattr(hf_tokenizer, "model_input_names", [])

    def encode(self, texts: Sequence[str]) -> Encoded:
        _check_texts(texts, "texts")
        return self._wrap(self._tok.encode_batch(list(texts)))

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> Encoded:
        for i, p in enumerate(pairs):
            if not (isinstance(p, (tuple, list)) and len(p) == 2):
                raise InvalidInput(f"pairs[{i}]: expected a (text_a, text_b) pair")
            _check_texts(p, f"pairs[{i}]")
        return self._wrap(self._tok.encode_batch([(a, b) for a, b in pairs]))

    @staticmethod
    def _wrap(encs) -> Encoded:
        return Encoded(
            ids=[e.ids for e in encs],
            type_ids=[e.type_ids for e in encs],
            truncated=np.fromiter((bool(e.overflowing) for e in encs), dtype=bool, count=len(encs)),
        )

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts).token_counts

    def batches(
        self, enc: Encoded, *, batch_size: int = 32, max_tokens: int | None = None
    ) -> Iterator[tuple[np.ndarray, TokenBatch]]:
        """Yield ``(positions, batch)`` in descending length order.

        ``batch_size`` caps rows; ``max_tokens`` (optional) caps padded tokens
        (rows x longest row) so long texts form smaller batches.
        """
        if batch_size < 1:
            raise InvalidInput(f"batch_size: must be >= 1, got {batch_size}")
        lengths = enc.token_counts
        order = np.argsort(-lengths, kind="stable")
        start = 0
        n = len(order)
        while start < n:
            longest = int(lengths[order[start]])
            rows = batch_size
            if max_tokens is not None:
                rows = max(1, min(rows, max_tokens // max(longest, 1)))
            idx = order[start : start + rows]
            yield idx, self.pad([enc.ids[i] for i in idx], [enc.type_ids[i] for i in idx])
            start += rows

    def pad(self, ids: list[list[int]], type_ids: list[list[int]]) -> TokenBatch:
        width = max(len(x) for x in ids)
        b = len(ids)
        input_ids = np.full((b, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        types = np.zeros((b, width), dtype=np.int64)
        for r, (row, trow) in enumerate(zip(ids, type_ids, strict=True)):
            input_ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
            types[r, : len(trow)] = trow
        return TokenBatch(input_ids, mask, types if self.uses_type_ids else None)


def _check_texts(texts: Sequence[str], field: str) -> None:
    if isinstance(texts, str):
        raise InvalidInput(f"{field}: expected a list of strings, got one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidInput(f"{field}[{i}]: expected a string, got {type(t).__name__}")
