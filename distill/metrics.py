"""Evaluation metrics, each checked in tests against a scipy/numpy reference.

Ranking metrics follow trec_eval conventions: nDCG with linear gain
(``rel``) and log2 discount; MRR@k and MAP use binary relevance (grade > 0);
AP divides by the number of relevant documents, retrieved or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr as _spearmanr

from pairsmith.errors import InvalidInput


def spearman(pred: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation x 100."""
    pred = np.asarray(pred, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if pred.shape != gold.shape or pred.ndim != 1:
        raise InvalidInput(f"spearman: shapes {pred.shape} and {gold.shape} differ or are not 1-D")
    if len(pred) < 2:
        raise InvalidInput("spearman: need at least 2 pairs")
    return float(_spearmanr(pred, gold).statistic * 100.0)


def ndcg_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    gains = np.array([rels.get(d, 0) for d in ranking[:k]], dtype=np.float64)
    disc = 1.0 / np.log2(np.arange(2, len(gains) + 2))
    dcg = float((gains * disc).sum())
    ideal = np.sort(np.array([g for g in rels.values() if g > 0], dtype=np.float64))[::-1][:k]
    idcg = float((ideal * (1.0 / np.log2(np.arange(2, len(ideal) + 2)))).sum())
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranking[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def average_precision(ranking: Sequence[str], rels: Mapping[str, int]) -> float:
    n_rel = sum(1 for g in rels.values() if g > 0)
    if n_rel == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(ranking):
        if rels.get(d, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / n_rel


def recall_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int = 100) -> float:
    relevant = {d for d, g in rels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def rank_of_first(scores: np.ndarray) -> int:
    """1-based rank of candidate 0 among ``scores`` (ties count against it)."""
    return int(1 + (scores[1:] >= scores[0]).sum())


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first. scores: (Q, N)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
