"""Model selection on a labeled dev set: pair scorers for models in training, and metrics.

Regression-like sets (STS) are scored by Spearman x100; binary sets (MRPC)
by accuracy x100 at the threshold that is best on the same set (selection
only; test accuracy uses a threshold chosen on validation, see
:func:`binary_metrics`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from pairsmith.distill import metrics
from pairsmith.distill.data import PairSet
from pairsmith.distill.fit_config import DROP_MARGIN, EXIT_NOT_IMPROVED, LABEL_STD_FLOOR, RANK_FLOOR
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


# --------------------------------------------------------------------------- selection split


def _contained_in_any(needles: list[str], haystack: list[str]) -> set[int]:
    """Indices of ``needles`` that occur inside some string of ``haystack`` (normalised text)."""
    big = "\x00".join(haystack)  # "\x00" never occurs in normalised text: no match spans two strings
    return {i for i, t in enumerate(needles) if t and t in big}


def _containing_any(haystack: list[str], needles: list[str]) -> set[int]:
    """Indices of ``haystack`` strings that contain some string of ``needles`` (normalised text)."""
    import bisect

    big = "\x00".join(haystack)
    starts = [0]
    for t in haystack[:-1]:
        starts.append(starts[-1] + len(t) + 1)
    hit: set[int] = set()
    for s in set(needles):
        if not s:
            continue
        at = big.find(s)
        while at != -1:
            hit.add(bisect.bisect_right(starts, at) - 1)
            at = big.find(s, at + 1)
    return hit


def selection_split(ps: PairSet, n: int, seed: int) -> tuple[PairSet, PairSet, dict]:
    """Split labeled pairs into (training, selection) that share no text.

    ``n`` rows (seeded) become the selection set. A training row is dropped when one of
    its sentences, normalised (:mod:`pairsmith.distill.textnorm`), equals, contains or is
    contained in a selection sentence, so neither side holds a phrase of the other.
    Returns the two sets and counts for the report.
    """
    from pairsmith.distill.textnorm import normalise_text

    if not 1 <= n < len(ps):
        raise InvalidInput(f"selection split: need 1 <= n < {len(ps)} rows, got {n}")
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(len(ps), size=n, replace=False))
    is_sel = np.zeros(len(ps), dtype=bool)
    is_sel[sel] = True
    sel_text = [normalise_text(t) for i in sel for t in (ps.s1[i], ps.s2[i])]
    rest = np.flatnonzero(~is_sel)
    rest_text = [normalise_text(t) for i in rest for t in (ps.s1[i], ps.s2[i])]
    bad = _contained_in_any(rest_text, sel_text) | _containing_any(rest_text, sel_text)
    keep = [int(rest[k]) for k in range(len(rest)) if 2 * k not in bad and 2 * k + 1 not in bad]

    def take(idx, name: str) -> PairSet:
        sc = ps.scores[np.asarray(idx, dtype=np.int64)] if ps.scores is not None else None
        return PairSet(name, [ps.s1[i] for i in idx], [ps.s2[i] for i in idx], sc)

    info = {"selection_rows": int(n), "train_rows": len(keep), "dropped_sharing_text": len(rest) - len(keep)}
    return take(keep, f"{ps.name}:train"), take(sel.tolist(), f"{ps.name}:selection"), info


# --------------------------------------------------------------------------- never worse than the start

# EXIT_NOT_IMPROVED (the ``--require-improvement`` exit code) lives in fit_config: the CLI reads it torch-free.


class StartCandidate:
    """The best weights of a model seen so far, the model's start included.

    Built before training with the start's selection score (``None``: no selection set, nothing
    is tracked). Each evaluation :meth:`offer`\\ s the current score; only a strictly higher one
    replaces the kept weights, so a tie keeps the start. :meth:`restore` loads the kept weights:
    when nothing trained beat the start, the model is the start model again, bit for bit.
    """

    def __init__(self, model, start_score: float | None) -> None:
        self.model = model
        self.start_score = None if start_score is None else float(start_score)
        self.best_score = self.start_score
        self.best_step: int | None = 0 if start_score is not None else None
        self.trained_score: float | None = None  # the best score a trained state reached
        self._state = _snapshot(model) if start_score is not None else None

    def offer(self, score: float, step: int) -> bool:
        """Keep the current weights if ``score`` beats the best so far; returns whether it did."""
        if self.trained_score is None or score > self.trained_score:
            self.trained_score = float(score)
        if self.best_score is not None and not score > self.best_score:
            return False
        self.best_score, self.best_step = float(score), step
        self._state = _snapshot(self.model)
        return True

    def restore(self) -> None:
        if self._state is not None:
            self.model.load_state_dict(self._state)


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def outcome(start_score: float | None, trained_score: float | None) -> dict:
    """The report keys of every training job, all on the selection set.

    ``start_score``: the start model; ``trained_score``: the best any trained model reached;
    ``best_score``: the exported model's (the higher of the two; the start wins a tie);
    ``improved``: True only when a trained model scored strictly above the start (False when
    nothing was trained). All None when the job had no selection set to compare on.
    """
    improved = best = None
    if start_score is not None:  # nothing trained at all (e.g. the guard stopped it) is not an improvement
        improved = trained_score is not None and bool(trained_score > start_score)
        best = trained_score if improved else start_score
    r = lambda x: None if x is None else round(float(x), 4)  # noqa: E731
    return {
        "start_score": r(start_score),
        "best_score": r(best),
        "trained_score": r(trained_score),
        "improved": improved,
    }


def finish(report: dict, what: str, *, require_improvement: bool = False, out=None) -> int:
    """The exit code of a finished job; prints the one-line notice when nothing beat the start."""
    import sys

    if report.get("improved") is False:
        print(
            f"{what}: nothing trained beat the start model on the selection set "
            f"(start {report.get('start_score')}, best trained {report.get('trained_score')}); "
            "the start model is exported unchanged",
            file=out or sys.stderr,
        )
        return EXIT_NOT_IMPROVED if require_improvement else 0
    return 0


# --------------------------------------------------------------------------- collapse guard

# Documented floors (docs/distillation.md). Healthy pseudo-labels on STS-like pairs spread with a
# standard deviation of 0.15-0.25 on the [0, 1] scale and agree with the other model's scores at a
# Spearman of 0.6-0.9; a cross-encoder that learned nothing gives std ~0.01 and agreement near 0.
# The floors' values: LABEL_STD_FLOOR, RANK_FLOOR, DROP_MARGIN in fit_config (torch-free, for the CLI).


@dataclass(frozen=True)
class Collapse:
    """Why a cycle stopped: which model, which figure, its value and the floor it fell below."""

    model: str
    figure: str  # label_std | rank_agreement | fit_drop
    value: float
    floor: float

    def message(self) -> str:
        return (
            f"collapse guard: {self.model}: {self.figure} {self.value:.4g} is below the floor "
            f"{self.floor:.4g}; this cycle stops here"
        )

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "figure": self.figure,
            "value": round(self.value, 5),
            "floor": self.floor,
        }


@dataclass(frozen=True)
class CollapseGuard:
    """Checks that stop a self-training cycle before it trains on (or exports) a collapsed model.

    - pseudo-labels whose standard deviation is below ``std_floor``;
    - pseudo-labels whose Spearman with the other model's scores of the same pairs is below
      ``rank_floor``;
    - a fit whose best trained selection score is more than ``drop_margin`` below its start.
    """

    std_floor: float = LABEL_STD_FLOOR
    rank_floor: float = RANK_FLOOR
    drop_margin: float = DROP_MARGIN
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.std_floor < 0 or not -1.0 <= self.rank_floor <= 1.0 or self.drop_margin < 0:
            raise InvalidInput(
                "collapse guard: need a label-std floor >= 0, a rank floor in [-1, 1] and a drop margin >= 0"
            )

    def check_labels(
        self, model: str, labels: np.ndarray, other: np.ndarray | None = None
    ) -> Collapse | None:
        """``labels`` of ``model`` for the pool; ``other``: the other model's scores of the same pairs."""
        if not self.enabled:
            return None
        sd = float(np.std(labels))
        if sd < self.std_floor:
            return Collapse(model, "label_std", sd, self.std_floor)
        if other is not None:
            rho = metrics.spearman(labels, other) / 100.0
            if not rho >= self.rank_floor:  # NaN (a constant side) counts as no agreement
                return Collapse(model, "rank_agreement", rho, self.rank_floor)
        return None

    def check_fit(self, model: str, start: float | None, trained: float | None) -> Collapse | None:
        if not self.enabled or start is None or trained is None:
            return None
        if trained < start - self.drop_margin:
            return Collapse(model, "fit_drop", trained - start, -self.drop_margin)
        return None
