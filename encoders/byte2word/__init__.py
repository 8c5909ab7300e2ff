"""Byte2Word: a token-free encoder building word vectors from bytes (design: docs/byte2word.md)."""

from __future__ import annotations

from pairsmith.encoders.byte2word.model import BytePooler, WordEncoder
from pairsmith.encoders.byte2word.tokenizer import ByteWordTokenizer, decode_words, segment, split_words

__all__ = ["BytePooler", "ByteWordTokenizer", "WordEncoder", "decode_words", "segment", "split_words"]
