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

__all__ = [
    "STS7",
    "ClassifyResult",
    "Scorer",
    "WordClassifier",
    "bi_scorer",
    "cross_scorer",
    "eval_classify",
    "eval_sts",
    "eval_retrieval",
    "eval_response",
]


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


# --------------------------------------------------------------------------- classification


class WordClassifier:
    """A classifier written by ``pairsmith train byte2word`` (bytes or WordPiece input): the
    sentence-transformers directory's word encoder, mean pooling, and ``heads/classifier``."""

    def __init__(self, model_dir: str | os.PathLike[str], device: str = "cpu") -> None:
        from pathlib import Path

        from pairsmith.errors import FailedPrecondition, NotFound

        d = Path(model_dir)
        if not (d / "modules.json").is_file():
            raise NotFound(f"--model {model_dir}: not a model directory (no modules.json)")
        heads = d / "heads" / "config.json"
        if not heads.is_file():
            raise FailedPrecondition(
                f"--model {model_dir}: has no classifier head (no heads/config.json); eval classify reads "
                "models written by `pairsmith train byte2word` (--tokenizer bytes or wordpiece)"
            )
        import json

        kinds = json.loads(heads.read_text())
        if kinds.get("classifier", {}).get("type") != "classifier":
            raise FailedPrecondition(
                f"--model {model_dir}: its heads are {sorted(kinds)}; none is a classifier (heads/classifier)"
            )
        from sentence_transformers import SentenceTransformer

        from pairsmith.encoders.byte2word.heads import load_heads
        from pairsmith.encoders.byte2word.model import WordEncoder

        st = SentenceTransformer(str(d), device=device, local_files_only=True, trust_remote_code=True)
        self.encoder = st[0].eval()
        if not isinstance(self.encoder, WordEncoder):
            raise FailedPrecondition(
                f"--model {model_dir}: its first module is {type(self.encoder).__name__}, not a Byte2Word "
                "WordEncoder; eval classify reads models written by `pairsmith train byte2word`"
            )
        self.head = load_heads(d)["classifier"].eval()
        self.n_labels = int(self.head.n_labels)
        self.unit = self.encoder.unit

    def logits(self, texts: list[str]) -> np.ndarray:
        import torch

        from pairsmith.encoders.byte2word.heads import mean_pool

        tok = self.encoder.tokenizer
        enc = tok.encode(texts)
        feeds = tok.pad(enc.ids, enc.type_ids).feeds()
        feats = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch.inference_mode():
            states = self.encoder(feats)["token_embeddings"]  # (B, W, d)
            return self.head(mean_pool(states, feats["attention_mask"])).numpy()  # (B, n_labels)

    def predict(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        out = [self.logits(texts[i : i + batch_size]).argmax(-1) for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ClassifyResult:
    accuracy: float
    n: int
    per_label: dict[int, tuple[int, int]]  # label -> (right, rows)

    def as_dict(self) -> dict:
        out: dict = {"accuracy": self.accuracy * 100, "n": self.n}
        out |= {f"acc label {k}": 100 * r / max(n, 1) for k, (r, n) in sorted(self.per_label.items())}
        return out


def eval_classify(
    clf: WordClassifier, rows: Sequence[tuple[str, int]], batch_size: int = 128
) -> ClassifyResult:
    """Accuracy of ``clf``'s argmax on labelled ``rows``; a label the head cannot output is an error."""
    from pairsmith.errors import InvalidInput

    if not rows:
        raise InvalidInput("eval classify: the data set has no rows")
    labels = np.array([y for _, y in rows])
    bad = sorted({int(y) for y in labels if not 0 <= y < clf.n_labels})
    if bad:
        raise InvalidInput(
            f"eval classify: the data set has labels {bad[:5]} but the classifier outputs 0..{clf.n_labels - 1}"
        )
    pred = clf.predict([t for t, _ in rows], batch_size=batch_size)
    right = pred == labels
    per = {int(k): (int(right[labels == k].sum()), int((labels == k).sum())) for k in np.unique(labels)}
    return ClassifyResult(float(right.mean()), len(rows), per)
