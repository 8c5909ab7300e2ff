"""Extra training pairs for distillation, labelled by the teacher alone.

A teacher can score any pair, not only the labelled ones: pairing each
training sentence with other training sentences gives the student more of
the teacher's judgement to learn from (the "silver" pairs of Augmented SBERT,
Thakur et al., NAACL 2021; the DSE paper distils on the labelled pairs only,
so this is an option, off by default).

Sampling:

- ``knn``: each sentence with its ``k`` nearest other sentences under the
  student's starting embeddings (informative pairs: similar and near-miss);
- ``random``: each sentence with ``k`` random others (mostly dissimilar).

Only sentences of the training pairs are used. Pairs already in the training
set (either order) or in ``exclude`` (e.g. the dev/test pairs) are skipped;
each unordered pair is kept once (all compared on normalised text).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

import numpy as np

from pairsmith.distill.data import PairSet
from pairsmith.distill.fit_config import DEFAULT_SEED
from pairsmith.distill.textnorm import norm_pair_key
from pairsmith.errors import InvalidInput
from pairsmith.vectors import normalize_rows


class Sampling(enum.Enum):
    NONE = "none"
    KNN = "knn"
    RANDOM = "random"


def _unordered_keys(pairs: Iterable[tuple[str, str]]) -> set[str]:
    keys: set[str] = set()
    for a, b in pairs:
        keys.add(norm_pair_key(a, b))
        keys.add(norm_pair_key(b, a))
    return keys


def _knn(vectors: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """(N, k) indices of each row's nearest other rows by dot product (rows L2-normalised)."""
    n = len(vectors)
    kk = min(k + 1, n)
    out = np.empty((n, kk), dtype=np.int64)
    for s in range(0, n, chunk):
        sims = vectors[s : s + chunk] @ vectors.T  # (c, N)
        np.fill_diagonal(sims[:, s : s + chunk], -np.inf)  # never pair a sentence with itself
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[s : s + chunk] = np.take_along_axis(part, order, axis=1)
    return out[:, :k] if kk > k else out


def augment_pairs(
    train: PairSet,
    sampling: Sampling,
    k: int,
    *,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    exclude: Iterable[tuple[str, str]] = (),
    seed: int = DEFAULT_SEED,
) -> PairSet:
    """Unlabelled pairs built from ``train``'s sentences (see the module docstring)."""
    if sampling is Sampling.NONE:
        return PairSet(f"{train.name}+none", [], [])
    if k < 1:
        raise InvalidInput(f"--augment-k: must be >= 1, got {k}")
    sentences = list(dict.fromkeys([*train.s1, *train.s2]))
    if len(sentences) < 2:
        raise InvalidInput(f"--augment: {train.name} has fewer than 2 distinct sentences")
    if sampling is Sampling.KNN:
        if encode is None:
            raise InvalidInput("--augment knn needs an encoder for the training sentences")
        partners = _knn(normalize_rows(np.asarray(encode(sentences), dtype=np.float32)), k)
    else:
        rng = np.random.default_rng(seed)
        n = len(sentences)
        partners = rng.integers(0, n - 1, size=(n, min(k, n - 1)))
        partners += partners >= np.arange(n)[:, None]  # skip self: draws from the other n-1
    seen = _unordered_keys(train.pairs) | _unordered_keys(exclude)
    s1: list[str] = []
    s2: list[str] = []
    for i, row in enumerate(partners):
        for j in row:
            a, b = sentences[i], sentences[int(j)]
            key = norm_pair_key(a, b)
            if a == b or key in seen:
                continue
            seen.add(key)
            seen.add(norm_pair_key(b, a))
            s1.append(a)
            s2.append(b)
    return PairSet(f"{train.name}+{sampling.value}{k}", s1, s2)


__all__ = ["Sampling", "augment_pairs"]
