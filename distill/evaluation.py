"""Evaluation tasks: STS (Spearman), retrieval/reranking (nDCG, MRR, MAP, recall), response selection.

A *scorer* is any ``(left_texts, right_texts) -> scores`` callable, so a
bi-encoder, a cross-encoder or an ensemble are evaluated the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from pairsmith.distill import metrics
from pairsmith.distill.data import STS7, DialogueSet, RetrievalSet, load_sts_set
from pairsmith.encoders import Activation, BiEncoder, CrossEncoder

log = logging.getLogger(__name__)

Scorer = Callable[[list[str], list[str]], np.ndarray]

__all__ = ["STS7", "Scorer", "bi_scorer", "cross_scorer", "eval_sts", "eval_retrieval", "eval_response"]


def bi_scorer(enc: BiEncoder, batch_size: int = 64) -> Scorer:
    """Cosine of the two sentences' embeddings (each distinct sentence embedded once)."""

    def score(a: list[str], b: list[str]) -> np.ndarray:
        return enc.similarity(a, b, batch_size=batch_size)

    return score


def cross_scorer(ce: CrossEncoder, symmetric: bool = False, batch_size: int = 32) -> Scorer:
    """Sigmoid of the cross-encoder's logit; ``symmetric`` averages both orders."""

    def score(a: list[str], b: list[str]) -> np.ndarray:
        pairs = list(zip(a, b, strict=True))
        return ce.score(
            pairs, activation=Activation.SIGMOID, symmetric=symmetric, batch_size=batch_size
        ).values

    return score


def eval_sts(
    scorer: Scorer, sets: Sequence[str] = tuple(STS7), root: str | os.PathLike[str] | None = None
) -> dict[str, float]:
    """Spearman x 100 per set (a named set or a file path) and their mean under ``avg``."""
    out: dict[str, float] = {}
    for name in tqdm(list(sets), desc="sts", unit="set", disable=len(sets) < 2):
        ps = load_sts_set(name, root)
        if ps.scores is None:
            from pairsmith.errors import InvalidInput

            raise InvalidInput(f"STS set {name}: has no gold scores to evaluate against")
        out[ps.name] = metrics.spearman(scorer(ps.s1, ps.s2), ps.scores)
    out["avg"] = float(np.mean([v for k, v in out.items() if k != "avg"]))
    return out


@dataclass(frozen=True)
class RetrievalResult:
    ndcg_at_10: float
    mrr_at_10: float
    map: float
    recall_at_100: float
    n_queries: int

    def as_dict(self) -> dict[str, float]:
        return {
            "nDCG@10": self.ndcg_at_10 * 100,
            "MRR@10": self.mrr_at_10 * 100,
            "MAP": self.map * 100,
            "Recall@100": self.recall_at_100 * 100,
            "queries": self.n_queries,
        }


def eval_retrieval(
    ds: RetrievalSet,
    enc: BiEncoder,
    reranker: CrossEncoder | None = None,
    *,
    first_stage_k: int = 100,
    batch_size: int = 64,
) -> RetrievalResult:
    """First stage: bi-encoder top-``first_stage_k`` (over the corpus, or over each question's
    candidates for answer selection); optional cross-encoder rerank of that list."""
    qids = list(ds.queries)
    doc_ids = list(ds.docs)
    doc_pos = {d: i for i, d in enumerate(doc_ids)}
    dvec = enc.encode([ds.docs[d] for d in doc_ids], batch_size=batch_size, show_progress=True).vectors
    qvec = enc.encode([ds.queries[q] for q in qids], batch_size=batch_size).vectors
    rankings: dict[str, list[str]] = {}
    if ds.candidates is None:
        sims = qvec @ dvec.T  # (Q, N)
        top = metrics.top_k_indices(sims, first_stage_k)
        for qi, q in enumerate(qids):
            rankings[q] = [doc_ids[j] for j in top[qi]]
    else:
        for qi, q in enumerate(qids):
            cand = ds.candidates[q]
            s = dvec[[doc_pos[d] for d in cand]] @ qvec[qi]
            rankings[q] = [cand[j] for j in np.argsort(-s, kind="stable")[:first_stage_k]]
    if reranker is not None:
        flat = [(q, d) for q in qids for d in rankings[q]]
        scores = reranker.score(
            [(ds.queries[q], ds.docs[d]) for q, d in flat],
            activation=Activation.RAW,
            batch_size=batch_size,
            show_progress=True,
        ).values
        pos = 0
        for q in qids:
            n = len(rankings[q])
            s = scores[pos : pos + n]
            rankings[q] = [rankings[q][j] for j in np.argsort(-s, kind="stable")]
            pos += n
    nd, mrr, ap, rec = [], [], [], []
    for q in qids:
        r, rel = rankings[q], ds.qrels[q]
        nd.append(metrics.ndcg_at_k(r, rel, 10))
        mrr.append(metrics.mrr_at_k(r, rel, 10))
        ap.append(metrics.average_precision(r, rel))
        rec.append(metrics.recall_at_k(r, rel, 100))
    return RetrievalResult(
        float(np.mean(nd)), float(np.mean(mrr)), float(np.mean(ap)), float(np.mean(rec)), len(qids)
    )


@dataclass(frozen=True)
class ResponseResult:
    r_at_1: float
    r_at_2: float
    r_at_5: float
    mrr: float
    n_cases: int

    def as_dict(self) -> dict[str, float]:
        return {
            "R@1": self.r_at_1 * 100,
            "R@2": self.r_at_2 * 100,
            "R@5": self.r_at_5 * 100,
            "MRR": self.mrr * 100,
            "cases": self.n_cases,
        }


def context_text(turns: Sequence[str]) -> str:
    """A dialogue context as one text for a bi- or cross-encoder: turns joined by spaces."""
    return " ".join(t.strip() for t in turns)


def eval_response(ds: DialogueSet, scorer: Scorer) -> ResponseResult:
    """Each positive ranked against its context's negatives (DailyDialog++: 5 random + 5 adversarial)."""
    left: list[str] = []
    right: list[str] = []
    groups: list[int] = []
    for ctx, pos, neg in zip(ds.contexts, ds.positives, ds.negatives, strict=True):
        c = context_text(ctx)
        for p in pos:
            cands = [p, *neg]
            left.extend([c] * len(cands))
            right.extend(cands)
            groups.append(len(cands))
    scores = scorer(left, right)
    ranks, start = [], 0
    for n in groups:
        ranks.append(metrics.rank_of_first(scores[start : start + n]))
        start += n
    r = np.array(ranks)
    return ResponseResult(
        float((r <= 1).mean()),
        float((r <= 2).mean()),
        float((r <= 5).mean()),
        float((1.0 / r).mean()),
        len(r),
    )
