"""Training loops shared by the distillation jobs, and supervised cross-encoder training.

A compact plain-torch loop (no ``datasets``/``accelerate`` dependency) that
does what sentence-transformers 2.x ``fit`` did for the Trans-Encoder and DSE
official code: AdamW (weight decay 0.01, none on bias/LayerNorm), linear
warm-up then linear decay, gradient-norm clipping at 1, evaluation every
``eval_steps`` and at each epoch end, and the best evaluated weights restored
at the end (``save_best_model=True``). Models are sentence-transformers
modules throughout, so what is saved loads in plain sentence-transformers.

- bi-encoder: :func:`fit_bi_encoder`, :class:`~pairsmith.distill.losses.CosineMSELoss`.
- cross-encoder: :func:`fit_cross_encoder`,
  :class:`~pairsmith.distill.losses.CrossEncoderBCELoss`, optionally on both pair orders.

Hyper-parameters: :class:`~pairsmith.distill.fit_config.FitConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from pairsmith.distill.fit_config import FitConfig
from pairsmith.distill.losses import CosineMSELoss, CrossEncoderBCELoss
from pairsmith.encoders.runtime import to_features
from pairsmith.encoders.tokenize import TextTokenizer
from pairsmith.errors import InvalidInput

__all__ = ["FitResult", "PairEmbedder", "fit_bi_encoder", "fit_cross_encoder", "run_fit"]

log = logging.getLogger(__name__)

Evaluator = Callable[[], float]


@dataclass
class FitResult:
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    start_score: float | None = None  # the model before training, on the selection set
    best_score: float | None = None  # the returned weights' (the start's when nothing beat it)
    best_step: int | None = None  # 0: the start was kept
    trained_score: float | None = None  # the best any trained state reached
    history: list[dict] = field(default_factory=list)  # [{"step", "epoch", "score"}]
    final_loss: float | None = None

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["examples_per_s"] = round(self.examples_per_s, 2)
        d["seconds"] = round(self.seconds, 2)
        return d


def _batches(n: int, bs: int, rng: np.random.Generator, lengths: np.ndarray | None) -> list[np.ndarray]:
    perm = rng.permutation(n)
    if lengths is None:
        return [perm[i : i + bs] for i in range(0, n, bs)]
    chunk = bs * 50
    out: list[np.ndarray] = []
    for c in range(0, n, chunk):
        part = perm[c : c + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        out.extend(part[i : i + bs] for i in range(0, len(part), bs))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _optimizer(model: torch.nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if ("bias" in name or "LayerNorm" in name or "norm" in name.lower()) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def run_fit(
    model: torch.nn.Module,
    n: int,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    cfg: FitConfig,
    *,
    evaluator: Evaluator | None = None,
    lengths: np.ndarray | None = None,
    desc: str = "fit",
    progress: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int], None] | None = None,
    keep_start: bool = True,
) -> FitResult:
    """The shared loop: ``batch_loss(indices)`` returns the loss of one batch of example indices.

    With an ``evaluator`` the model as it starts is scored first (``FitResult.start_score``) and
    kept as a candidate (:class:`~pairsmith.distill.selection.StartCandidate`): the weights that
    come back are the best evaluated ones, the start's included, so a fit never returns a model
    that scores below its start on the selection set. ``keep_start=False`` leaves the start out
    (the official codes' behaviour). ``optimizer`` replaces the default AdamW groups (e.g. a
    higher rate for a new head); ``on_step(step)`` runs after each optimiser step (e.g. checkpoints).
    """
    from pairsmith.distill.selection import StartCandidate

    if n == 0:
        raise InvalidInput(f"{desc}: no training examples")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warm = int(total * cfg.warmup_ratio)

    def lr_lambda(step: int) -> float:  # WarmupLinear, as in sentence-transformers 2.x
        if step < warm:
            return float(step) / float(max(1, warm))
        return max(0.0, float(total - step) / float(max(1, total - warm)))

    opt = optimizer if optimizer is not None else _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    res = FitResult()
    start = None
    if evaluator is not None:
        model.eval()
        start = float(evaluator())
        res.start_score = round(start, 4)
        log.info("%s: start dev %.2f", desc, start)
    keeper = StartCandidate(model, start if keep_start else None)
    t0 = time.time()
    step = 0
    ema = None
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress)

    def evaluate(epoch: int) -> None:
        model.eval()
        score = float(evaluator())  # type: ignore[misc]
        res.history.append({"step": step, "epoch": epoch, "score": round(score, 4)})
        log.info("%s: step %d epoch %d dev %.2f", desc, step, epoch, score)
        keeper.offer(score, step)
        model.train()

    for epoch in range(cfg.epochs):
        for idx in _batches(n, cfg.batch_size, rng, lengths if cfg.length_grouping else None):
            model.train()
            loss = batch_loss(idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            res.examples += len(idx)
            val = float(loss.detach())
            ema = val if ema is None else 0.98 * ema + 0.02 * val
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}")
            if on_step is not None:
                on_step(step)
            if evaluator is not None and cfg.eval_steps and step % cfg.eval_steps == 0 and step % per_epoch:
                evaluate(epoch)
        if evaluator is not None:
            evaluate(epoch)
    bar.close()
    if evaluator is not None:
        keeper.restore()
        res.best_score, res.best_step = keeper.best_score, keeper.best_step
        res.trained_score = keeper.trained_score
    model.eval()
    res.steps = step
    res.seconds = time.time() - t0
    res.final_loss = ema
    return res


# --------------------------------------------------------------------------- bi-encoder


def _texts_index(s1: list[str], s2: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    uniq = list(dict.fromkeys([*s1, *s2]))
    pos = {t: i for i, t in enumerate(uniq)}
    ia = np.fromiter((pos[t] for t in s1), dtype=np.int64, count=len(s1))
    ib = np.fromiter((pos[t] for t in s2), dtype=np.int64, count=len(s2))
    return uniq, ia, ib


class PairEmbedder:
    """Pre-tokenised sentences of a pair list; embeds one batch of pairs with gradients."""

    def __init__(self, st_model, s1: list[str], s2: list[str], max_length: int, device: str) -> None:
        self.st = st_model
        self.device = device
        self.tok = TextTokenizer(st_model.tokenizer, max_length)
        uniq, self.ia, self.ib = _texts_index(s1, s2)
        self.enc = self.tok.encode(uniq)
        counts = self.enc.token_counts
        self.lengths = np.maximum(counts[self.ia], counts[self.ib])

    def embed(self, rows: np.ndarray) -> tuple[torch.Tensor, dict[int, int]]:
        """Embeddings of the distinct sentence rows in ``rows`` and where each row landed."""
        uniq = np.unique(rows)
        batch = self.tok.pad([self.enc.ids[i] for i in uniq], [self.enc.type_ids[i] for i in uniq])
        out = self.st(to_features(batch, self.device))["sentence_embedding"]  # (U, D)
        return out, {int(t): k for k, t in enumerate(uniq)}

    def pair_embeddings(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.concatenate([self.ia[idx], self.ib[idx]])
        emb, where = self.embed(rows)
        u = emb[[where[int(i)] for i in self.ia[idx]]]  # (B, D)
        v = emb[[where[int(i)] for i in self.ib[idx]]]  # (B, D)
        return u, v


def fit_bi_encoder(
    st_model,
    s1: list[str],
    s2: list[str],
    targets: np.ndarray,
    cfg: FitConfig,
    *,
    device: str = "cpu",
    evaluator: Evaluator | None = None,
    desc: str = "bi-encoder",
    progress: bool = True,
    keep_start: bool = True,
) -> FitResult:
    """MSE between cos(f(a), f(b)) and ``targets`` (sentence-transformers' CosineSimilarityLoss)."""
    y_all = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    if len(y_all) != len(s1):
        raise InvalidInput(f"{desc}: {len(y_all)} targets for {len(s1)} pairs")
    pe = PairEmbedder(st_model, s1, s2, cfg.max_length, device)
    criterion = CosineMSELoss()

    def loss(idx: np.ndarray) -> torch.Tensor:
        u, v = pe.pair_embeddings(idx)  # (B, D) each
        return criterion(u, v, y_all[idx])

    return run_fit(
        st_model,
        len(s1),
        loss,
        cfg,
        evaluator=evaluator,
        lengths=pe.lengths,
        desc=desc,
        progress=progress,
        keep_start=keep_start,
    )


# --------------------------------------------------------------------------- cross-encoder


def fit_cross_encoder(
    ce_model,
    s1: list[str],
    s2: list[str],
    targets: np.ndarray,
    cfg: FitConfig,
    *,
    both_orders: bool = True,
    device: str = "cpu",
    evaluator: Evaluator | None = None,
    desc: str = "cross-encoder",
    progress: bool = True,
    keep_start: bool = True,
) -> FitResult:
    """BCE-with-logits of the one-logit cross-encoder against ``targets``.

    ``both_orders`` trains on (a, b, y) and (b, a, y), as the official
    Trans-Encoder code does for symmetric tasks. Targets outside [0, 1] are
    used as given (the official raw-cosine behaviour); clamp them beforehand.
    """
    y = np.asarray(targets, dtype=np.float32)
    if len(y) != len(s1):
        raise InvalidInput(f"{desc}: {len(y)} targets for {len(s1)} pairs")
    pairs = list(zip(s1, s2, strict=True))
    if both_orders:
        pairs = pairs + [(b, a) for a, b in pairs]
        y = np.concatenate([y, y])
    tok = TextTokenizer(ce_model.tokenizer, cfg.max_length)
    enc = tok.encode_pairs(pairs)
    y_all = torch.as_tensor(y)
    criterion = CrossEncoderBCELoss()

    def loss(idx: np.ndarray) -> torch.Tensor:
        batch = tok.pad([enc.ids[i] for i in idx], [enc.type_ids[i] for i in idx])
        logits = ce_model(to_features(batch, device))["scores"].view(-1)  # (B,)
        return criterion(logits, y_all[idx])

    return run_fit(
        ce_model,
        len(pairs),
        loss,
        cfg,
        evaluator=evaluator,
        lengths=enc.token_counts,
        desc=desc,
        progress=progress,
        keep_start=keep_start,
    )
