"""Model selection on a labeled dev set: pair scorers for models in training, and metrics.

Regression-like sets (STS) are scored by Spearman x100; binary sets (MRPC)
by accuracy x100 at the threshold that is best on the same set (selection
only; test accuracy uses a threshold chosen on validation, see
:func:`binary_metrics`).
"""

from __future__ import annotations

import enum

import numpy as np

from pairsmith.distill import metrics
from pairsmith.distill.data import PairSet
from pairsmith.encoders import Activation, BiEncoder, CrossEncoder
from pairsmith.encoders.source import ModelSource
from pairsmith.errors import InvalidInput


class PairMetric(enum.Enum):
    """How a labeled pair set scores a model: Spearman x100 (STS) or accuracy x100 (0/1 labels)."""

    SPEARMAN = "spearman"
    ACCURACY = "accuracy"


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict:
    """Accuracy and F1 (x100) of ``scores >= threshold``; with no threshold, the accuracy-best one."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels) > 0.5
    if len(s) != len(y) or len(s) == 0:
        raise InvalidInput(f"binary metrics: {len(s)} scores for {len(y)} labels")
    if threshold is None:
        cand = np.unique(s)
        mids = np.concatenate([[cand[0] - 1e-6], (cand[:-1] + cand[1:]) / 2, [cand[-1] + 1e-6]])
        order = np.argsort(s)
        ss, yy = s[order], y[order]
        # predicted positive = score >= t; count correct for each candidate threshold in one pass
        pos_above = np.cumsum(yy[::-1])[::-1]  # positives with index >= i
        neg_below = np.concatenate([[0], np.cumsum(~yy)])  # negatives with index < i
        idx = np.searchsorted(ss, mids, side="left")
        pos_total = np.concatenate([pos_above, [0]])
        correct = pos_total[idx] + neg_below[idx]
        threshold = float(mids[int(np.argmax(correct))])
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"accuracy": float((pred == y).mean() * 100), "f1": float(f1 * 100), "threshold": float(threshold)}


def pair_metric(scores: np.ndarray, gold: np.ndarray, metric: PairMetric) -> float:
    if metric is PairMetric.SPEARMAN:
        return metrics.spearman(scores, gold)
    return binary_metrics(scores, gold)["accuracy"]


def bi_scores(
    st_model, source: ModelSource, s1: list[str], s2: list[str], batch_size: int = 64
) -> np.ndarray:
    """Cosines of pairs from a SentenceTransformer that may be in training (left in eval mode)."""
    return BiEncoder.from_sentence_transformer(
        st_model, source=source, device=str(st_model.device)
    ).similarity(s1, s2, batch_size=batch_size)


def cross_scores(
    ce_model,
    source: ModelSource,
    s1: list[str],
    s2: list[str],
    *,
    symmetric: bool = False,
    batch_size: int = 64,
) -> np.ndarray:
    """Sigmoid scores of pairs from a sentence-transformers CrossEncoder that may be in training."""
    ce = CrossEncoder.from_st(ce_model, source=source, device=str(ce_model.device))
    pairs = list(zip(s1, s2, strict=True))
    return ce.score(pairs, activation=Activation.SIGMOID, symmetric=symmetric, batch_size=batch_size).values


def make_evaluator(
    kind: str, model, source: ModelSource, dev: PairSet, metric: PairMetric, *, symmetric=False
):
    """A no-argument callable returning the dev metric of ``model`` as it is now."""
    if dev.scores is None:
        raise InvalidInput(f"dev set {dev.name}: has no gold scores for model selection")
    gold = dev.scores

    def run() -> float:
        if kind == "bi":
            s = bi_scores(model, source, dev.s1, dev.s2)
        else:
            s = cross_scores(model, source, dev.s1, dev.s2, symmetric=symmetric)
        return pair_metric(s, gold, metric)

    return run
