"""Pseudo-label post-processing for distillation: range, normalisation, averaging.

Trans-Encoder passes scores between models as training targets:

- bi -> cross: raw cosines in [-1, 1] become BCE targets. The official code
  feeds them unchanged; a negative BCE target is ill-posed, so pairsmith clamps
  to [0, 1] by default (:attr:`LabelRange.CLAMP`) and keeps the official
  behaviour as :attr:`LabelRange.RAW`. :attr:`LabelRange.MINMAX` rescales
  linearly instead of clipping.
- mutual distillation: every model trains on the average of all models'
  labels. The official code averages raw values (:attr:`Combine.MEAN`); the
  cosine scales of different encoders differ, so :attr:`Combine.RANK` and
  :attr:`Combine.ZSCORE` normalise each model's scores first and map the
  result back onto the scale of the plain mean (see :func:`combine`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

import numpy as np

from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)


class LabelRange(enum.Enum):
    """What happens to pseudo-labels outside [0, 1] before they become targets."""

    CLAMP = "clamp"  # clip to [0, 1] (pairsmith default)
    RAW = "raw"  # unchanged (the official Trans-Encoder code)
    MINMAX = "minmax"  # (y - min) / (max - min) over the whole label set


class Combine(enum.Enum):
    """How several models' scores for the same pairs become one label per pair."""

    MEAN = "mean"  # plain mean of raw scores (the official mutual-distillation code)
    RANK = "rank"  # mean of per-model ranks, mapped onto the quantiles of the plain mean
    ZSCORE = "zscore"  # mean of per-model z-scores, rescaled to the plain mean's mean and std


def apply_range(y: np.ndarray, mode: LabelRange) -> np.ndarray:
    """Post-process targets; never modifies ``y`` in place."""
    y = np.asarray(y, dtype=np.float32)
    if mode is LabelRange.RAW:
        return y.copy()
    if mode is LabelRange.CLAMP:
        return np.clip(y, 0.0, 1.0)
    if len(y) == 0:
        return y.copy()
    lo, hi = float(y.min()), float(y.max())
    if hi - lo < 1e-12:
        return np.full_like(y, 0.5)
    return ((y - lo) / (hi - lo)).astype(np.float32)


def _ranks01(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share a rank) scaled to [0, 1]."""
    from scipy.stats import rankdata

    n = len(x)
    if n < 2:
        return np.zeros(n, dtype=np.float64)
    return (rankdata(x, method="average") - 1.0) / (n - 1.0)


def combine(scores: Sequence[np.ndarray], mode: Combine = Combine.MEAN) -> np.ndarray:
    """One label per pair from several models' scores (all arrays of the same length).

    With one model every mode returns the scores unchanged. ``RANK`` keeps the
    marginal distribution of the plain mean (sorted values) and reorders it by
    the mean rank; ``ZSCORE`` averages standardised scores and restores the
    plain mean's location and spread. Both therefore stay on a cosine- or
    probability-like scale, so the range step after them means the same thing.
    """
    arrs = [np.asarray(s, dtype=np.float64) for s in scores]
    if not arrs:
        raise InvalidInput("combine: no scores given")
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise InvalidInput(f"combine: score arrays differ in length {[len(a) for a in arrs]}")
    mean = np.mean(arrs, axis=0)
    if len(arrs) == 1 or mode is Combine.MEAN or n == 0:
        return mean.astype(np.float32)
    if mode is Combine.RANK:
        avg_rank = np.mean([_ranks01(a) for a in arrs], axis=0)
        order = np.argsort(avg_rank, kind="stable")
        out = np.empty(n, dtype=np.float64)
        out[order] = np.sort(mean)
        return out.astype(np.float32)
    zs = []
    for a in arrs:
        sd = a.std()
        zs.append((a - a.mean()) / (sd if sd > 1e-12 else 1.0))
    z = np.mean(zs, axis=0)
    zsd = z.std()
    z = z / (zsd if zsd > 1e-12 else 1.0)
    return (z * mean.std() + mean.mean()).astype(np.float32)


def label_stats(y: np.ndarray, *, bins: int = 10) -> dict:
    """Summary of a label vector for reports: moments, quantiles, out-of-range share, histogram."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return {"n": 0}
    q = np.quantile(y, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    lo, hi = min(float(y.min()), 0.0), max(float(y.max()), 1.0)
    counts, edges = np.histogram(y, bins=bins, range=(lo, hi))
    return {
        "n": int(len(y)),
        "mean": round(float(y.mean()), 5),
        "std": round(float(y.std()), 5),
        "min": round(float(y.min()), 5),
        "max": round(float(y.max()), 5),
        "quantiles": {
            k: round(float(v), 5)
            for k, v in zip(("p1", "p5", "p25", "p50", "p75", "p95", "p99"), q, strict=True)
        },
        "frac_below_0": round(float((y < 0).mean()), 5),
        "frac_above_1": round(float((y > 1).mean()), 5),
        "histogram": {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]},
    }


def log_stats(name: str, stats: dict) -> None:
    if stats.get("n", 0) == 0:
        log.info("%s: no labels", name)
        return
    log.info(
        "%s: n=%d mean=%.3f std=%.3f min=%.3f max=%.3f <0: %.1f%% >1: %.1f%%",
        name,
        stats["n"],
        stats["mean"],
        stats["std"],
        stats["min"],
        stats["max"],
        100 * stats["frac_below_0"],
        100 * stats["frac_above_1"],
    )
