"""Text normalisation for overlap, exclusion and deduplication of pairs.

The STS12-16 files are lower-cased and tokenised (``a man 's playing .``)
while STS-B and the STS companion hold the same pairs in original casing
(``A man's playing.``): exact string matching calls them different pairs.
:func:`normalise_text` maps both to the same key: Unicode NFKC, case-folded,
every character that is not a letter or digit removed (punctuation *and*
whitespace, so tokenisation that splits ``man's`` into ``man 's`` changes
nothing). Two different sentences that differ only in punctuation or spacing
are counted as one, which is what an overlap check should do.

Models always see the original text; only set arithmetic uses these keys.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_NOT_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


def normalise_text(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form of ``text`` (see the module docstring)."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


def norm_pair_key(a: str, b: str) -> str:
    """A stable hash of one ordered pair's normalised text."""
    h = hashlib.sha256()
    h.update(normalise_text(a).encode("utf-8"))
    h.update(b"\x00\x1f\x00")
    h.update(normalise_text(b).encode("utf-8"))
    return h.hexdigest()[:32]


def unordered_pair_keys(s1: list[str], s2: list[str]) -> set[str]:
    """:func:`norm_pair_key` of every pair in both orders: membership ignores order and surface form."""
    keys: set[str] = set()
    for a, b in zip(s1, s2, strict=True):
        keys.add(norm_pair_key(a, b))
        keys.add(norm_pair_key(b, a))
    return keys


__all__ = ["norm_pair_key", "normalise_text"]
