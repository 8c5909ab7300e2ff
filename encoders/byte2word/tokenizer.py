"""Byte2Word segmentation: text -> words -> UTF-8 byte chunks -> one packed byte stream.

Policy (pinned in docs/byte2word.md):

- Words are maximal runs of non-whitespace (``str.split()``); inside a run, every maximal run of
  Unicode punctuation (category ``P*``) is its own word: ``"good,"`` -> ``good`` ``,``;
  ``"it's"`` -> ``it`` ``'`` ``s``; ``"..."`` stays one word.
- A word is its UTF-8 bytes. A word longer than ``max_word_bytes`` is split into chunks of at most
  that many bytes at code-point boundaries (never inside a character); scripts written without
  spaces (a Chinese clause is one "word") are handled by the same byte cap. Each chunk is one unit
  the word-level encoder attends over (so ``max_length`` counts chunks).
- Byte ids: PAD=0, BOW=1 (first chunk of a word), EOW=2 (last chunk of a word), SEP=3 (the unit
  between the two texts of a pair), byte ``b`` -> ``b + 4``. A continuation chunk has no BOW; a
  chunk that does not end its word has no EOW.
- :meth:`ByteWordTokenizer.pad` packs the units of a batch back to back (no padding to the longest
  word) with ``cu_seqlens``; ``TokenBatch.input_ids`` (B, W) marks word slots (1) and padding (0).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from pairsmith.encoders.tokenize import check_pairs, check_texts
from pairsmith.encoders.types import Encoded, TokenBatch
from pairsmith.errors import InvalidInput

PAD, BOW, EOW, SEP = 0, 1, 2, 3
N_SPECIAL = 4
BYTE_VOCAB = 256 + N_SPECIAL
SEP_UNIT: tuple[int, ...] = (SEP,)


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def split_words(text: str) -> list[str]:
    """Whitespace words with punctuation runs split off (the documented punctuation policy)."""
    words: list[str] = []
    for run in text.split():
        cur = ""
        cur_punct = False
        for ch in run:
            p = _is_punct(ch)
            if cur and p != cur_punct:
                words.append(cur)
                cur = ""
            cur += ch
            cur_punct = p
        if cur:
            words.append(cur)
    return words


def chunk_word(word: str, max_word_bytes: int) -> list[bytes]:
    """UTF-8 chunks of at most ``max_word_bytes`` bytes, split only between code points.

    A single code point is at most 4 bytes, so ``max_word_bytes >= 4`` always makes progress.
    """
    out: list[bytes] = []
    cur = bytearray()
    for ch in word:
        b = ch.encode("utf-8")
        if cur and len(cur) + len(b) > max_word_bytes:
            out.append(bytes(cur))
            cur = bytearray()
        cur += b
    if cur:
        out.append(bytes(cur))
    return out


def word_units(word: str, max_word_bytes: int) -> list[tuple[int, ...]]:
    """One word -> its chunks as byte-id tuples with BOW on the first and EOW on the last."""
    chunks = chunk_word(word, max_word_bytes)
    units = []
    for i, c in enumerate(chunks):
        ids = [b + N_SPECIAL for b in c]
        if i == 0:
            ids.insert(0, BOW)
        if i == len(chunks) - 1:
            ids.append(EOW)
        units.append(tuple(ids))
    return units


def segment(text: str, max_word_bytes: int) -> list[tuple[int, ...]]:
    """Text -> units (byte-id tuples), in order."""
    return [u for w in split_words(text) for u in word_units(w, max_word_bytes)]


def decode_words(units: Sequence[Sequence[int]]) -> list[str]:
    """Inverse of :func:`segment` on the word level: join chunks from BOW to EOW, decode UTF-8."""
    words: list[str] = []
    cur = bytearray()
    for u in units:
        if tuple(u) == SEP_UNIT:
            continue
        cur += bytes(i - N_SPECIAL for i in u if i >= N_SPECIAL)
        if u and u[-1] == EOW:
            words.append(cur.decode("utf-8"))
            cur = bytearray()
    if cur:  # a word cut by truncation keeps what it has
        words.append(cur.decode("utf-8", errors="replace"))
    return words


def pack_units(units: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units -> (byte_ids (T,), byte_pos (T,) position inside its unit, cu_seqlens (N+1,)), int64."""
    lens = np.fromiter((len(u) for u in units), dtype=np.int64, count=len(units))  # (N,)
    cu = np.zeros(len(units) + 1, dtype=np.int64)  # (N+1,)
    np.cumsum(lens, out=cu[1:])
    flat = np.fromiter((i for u in units for i in u), dtype=np.int64, count=int(cu[-1]))  # (T,)
    pos = np.arange(int(cu[-1]), dtype=np.int64) - np.repeat(cu[:-1], lens)  # (T,)
    return flat, pos, cu


class ByteWordTokenizer:
    """The :class:`~pairsmith.encoders.tokenize.Tokenizer` of a Byte2Word model.

    ``encode`` rows hold one byte-id tuple per unit (word or word chunk); ``pad`` packs a batch:
    ``input_ids``/``attention_mask`` (B, W) word slots, ``extras``: ``byte_ids`` (T,),
    ``byte_pos`` (T,), ``cu_seqlens`` (N+1,) over the N real units in row-major order,
    ``word_slot`` (N,) the flat index b * W + w of each unit.
    """

    def __init__(self, max_length: int, max_word_bytes: int = 20) -> None:
        if max_length < 2:
            raise InvalidInput(f"max_length: must be >= 2, got {max_length}")
        if max_word_bytes < 4:
            raise InvalidInput(f"max_word_bytes: must be >= 4 (one code point), got {max_word_bytes}")
        self.max_length = int(max_length)
        self.max_word_bytes = int(max_word_bytes)

    def _row(self, text: str) -> tuple[list[tuple[int, ...]], bool]:
        units = segment(text, self.max_word_bytes) or [(BOW, EOW)]  # empty text: one empty word
        return units[: self.max_length], len(units) > self.max_length

    def encode(self, texts: Sequence[str]) -> Encoded:
        check_texts(texts, "texts")
        rows = [self._row(t) for t in texts]
        return Encoded(
            ids=[r for r, _ in rows],
            type_ids=[[0] * len(r) for r, _ in rows],
            truncated=np.fromiter((t for _, t in rows), dtype=bool, count=len(rows)),
        )

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> Encoded:
        """``a`` units, SEP, ``b`` units; the longer side is cut first when over ``max_length``."""
        check_pairs(pairs, "pairs")
        ids, types, trunc = [], [], []
        for a, b in pairs:
            ua = segment(a, self.max_word_bytes) or [(BOW, EOW)]
            ub = segment(b, self.max_word_bytes) or [(BOW, EOW)]
            budget = self.max_length - 1
            cut = len(ua) + len(ub) > budget
            while len(ua) + len(ub) > budget:
                if len(ua) >= len(ub):
                    ua = ua[:-1]
                else:
                    ub = ub[:-1]
            ids.append([*ua, SEP_UNIT, *ub])
            types.append([0] * (len(ua) + 1) + [1] * len(ub))
            trunc.append(cut)
        return Encoded(ids, types, np.array(trunc, dtype=bool))

    def pad(self, ids: list[Sequence[Sequence[int]]], type_ids: list[list[int]]) -> TokenBatch:
        """Pack rows of units; a bare ``int`` unit (the pipeline's synthetic calibration rows) is
        taken as a one-byte word ``BOW, byte, EOW``."""
        if any(isinstance(u, int) for row in ids for u in row):
            ids = [[(BOW, N_SPECIAL + u % 256, EOW) if isinstance(u, int) else u for u in row] for row in ids]
        b = len(ids)
        width = max(len(r) for r in ids)
        mask = np.zeros((b, width), dtype=np.int64)  # (B, W)
        types = np.zeros((b, width), dtype=np.int64)  # (B, W)
        slots = []
        for r, (row, trow) in enumerate(zip(ids, type_ids, strict=True)):
            mask[r, : len(row)] = 1
            types[r, : len(trow)] = trow
            slots.extend(r * width + w for w in range(len(row)))
        byte_ids, byte_pos, cu = pack_units([u for row in ids for u in row])
        extras = {
            "byte_ids": byte_ids,
            "byte_pos": byte_pos,
            "cu_seqlens": cu,
            "word_slot": np.asarray(slots, dtype=np.int64),
        }
        return TokenBatch(mask.copy(), mask, types, extras=extras)


__all__ = [
    "BOW",
    "BYTE_VOCAB",
    "ByteWordTokenizer",
    "EOW",
    "N_SPECIAL",
    "PAD",
    "SEP",
    "chunk_word",
    "decode_words",
    "pack_units",
    "segment",
    "split_words",
]
