"""Bi-encoder (embedding) training with a choice of pooling: ``pairsmith train embedding``.

- ``pooling``: ``mean`` (the model's own mean pooling), ``multi-layer`` or ``last-layer``
  (a trainable :class:`~pairsmith.encoders.modules.layer_pooling.LayerPooling` replaces the
  pooling module; the backbone is fine-tuned with it).
- loss: scored pairs -> cosine regression (MSE between cos(u, v) and the score mapped to [0, 1]);
  unscored pairs (and ``trecqa-train``'s question/answer positives) -> contrastive with in-batch
  negatives (cross-entropy over ``scale * cos``, both directions; rows sharing a text are not
  counted as each other's negatives). Contrastive batches are drawn at random (no length
  grouping: the batch is the set of negatives).
- optimisation: :func:`pairsmith.distill.train.run_fit` (AdamW, warm-up + linear decay, clipping),
  the new pooler at its own rate (``pooler_lr``). With ``dev`` (a scored set) the start model (a
  new pooler as it starts) is scored first and kept as a candidate, each epoch end is evaluated and
  the best weights are saved: never worse than the start there (``improved`` in the report);
  without ``dev``: fixed budget, final weights.

Output directory::

    out/model/               the trained bi-encoder (sentence-transformers layout; loads in plain
                             sentence-transformers with trust_remote_code=True, and in pairsmith)
    out/checkpoints/step-N/  model checkpoints every ``checkpoint_steps`` (last ``keep_checkpoints``)
    out/config.json          this run's TrainEmbeddingConfig
    out/report.json          data size, loss, pooler size (and % of the encoder), fit result, wall time
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pairsmith.distill.data import PairSet, load_retrieval_set
from pairsmith.distill.fit_config import FitConfig
from pairsmith.distill.losses import CosineMSELoss
from pairsmith.distill.pairsets import load_pairs, scale_scores, score_range_for, subsample
from pairsmith.distill.runstate import check_out_dir, save_dir_atomic, write_json_atomic
from pairsmith.distill.selection import PairMetric, make_evaluator, outcome
from pairsmith.distill.train import FitResult, PairEmbedder, run_fit
from pairsmith.encoders import BiEncoder
from pairsmith.encoders.modules import enable_all_layers
from pairsmith.encoders.modules.layer_pooling import LayerPooling, PoolerKind, make_pooler
from pairsmith.encoders.runtime import resolve_device
from pairsmith.encoders.source import resolve_model
from pairsmith.errors import InvalidInput, parse_enum

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
RETRIEVAL_TRAIN = ("trecqa-train",)  # question/answer sets whose positives become contrastive pairs


class PoolingChoice(enum.Enum):
    MEAN = "mean"
    MULTI_LAYER = "multi-layer"
    LAST_LAYER = "last-layer"


class EmbeddingLoss(enum.Enum):
    AUTO = "auto"  # cosine for scored pairs, contrastive otherwise
    COSINE = "cosine"  # MSE(cos(u, v), score in [0, 1])
    CONTRASTIVE = "contrastive"  # in-batch negatives


EMBEDDING_FIT_DEFAULT = FitConfig(epochs=1, batch_size=32, lr=2e-5, warmup_ratio=0.1, max_length=64)


@dataclass(frozen=True)
class PoolerSizes:
    n_latents: int = 16
    heads: int = 0  # 0: hidden_size // head_dim
    head_dim: int = 64
    ffn_dim: int = 0  # 0: hidden_size
    residual: bool = True

    def kwargs(self) -> dict:
        return {
            "n_latents": self.n_latents,
            "heads": self.heads or None,
            "head_dim": self.head_dim,
            "ffn_dim": self.ffn_dim or None,
            "residual": self.residual,
        }


@dataclass(frozen=True)
class TrainEmbeddingConfig:
    model: str = "default"
    pooling: str = "mean"
    data: str = "stsb-train"
    loss: str = "auto"
    score_range: str | None = None  # "LO,HI" mapping scores to [0, 1]; auto for known sets
    max_pairs: int | None = None
    dev: str | None = None  # scored selection set: start vs trained, best epoch
    keep_start: bool = True  # with dev: the start model is a candidate
    pooler_lr: float = 1e-3
    contrastive_scale: float = 20.0
    checkpoint_steps: int = 0  # 0: a checkpoint at each epoch end only
    keep_checkpoints: int = 2
    sizes: PoolerSizes = field(default_factory=PoolerSizes)
    fit: FitConfig = EMBEDDING_FIT_DEFAULT

    def __post_init__(self) -> None:
        parse_enum(PoolingChoice, self.pooling, "pooling")
        parse_enum(EmbeddingLoss, self.loss, "loss")
        if not self.pooler_lr > 0:
            raise InvalidInput(f"pooler_lr: must be > 0, got {self.pooler_lr}")
        if self.checkpoint_steps < 0 or self.keep_checkpoints < 1:
            raise InvalidInput("checkpoint_steps must be >= 0 and keep_checkpoints >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- data


def load_training_pairs(cfg: TrainEmbeddingConfig) -> tuple[PairSet, EmbeddingLoss]:
    """The training pairs and the loss they get (scores in [0, 1] for the cosine loss)."""
    loss = parse_enum(EmbeddingLoss, cfg.loss, "loss")
    if cfg.data.strip().lower() in RETRIEVAL_TRAIN:
        if loss is EmbeddingLoss.COSINE:
            raise InvalidInput(f"--loss cosine: {cfg.data} has no pair scores; use contrastive")
        rs = load_retrieval_set(cfg.data)
        rows = [(rs.queries[q], rs.docs[d]) for q in rs.queries for d in rs.qrels[q]]
        ps = PairSet(cfg.data, [a for a, _ in rows], [b for _, b in rows], None)
        return subsample(ps, cfg.max_pairs, cfg.fit.seed), EmbeddingLoss.CONTRASTIVE
    if loss is EmbeddingLoss.CONTRASTIVE:
        return subsample(load_pairs(cfg.data, labeled=False), cfg.max_pairs, cfg.fit.seed), loss
    try:
        ps = load_pairs(cfg.data, labeled=True)
    except InvalidInput as exc:
        if loss is EmbeddingLoss.COSINE:
            raise
        log.warning("%s: no usable scores (%s); training contrastive on the pairs", cfg.data, exc.message)
        return subsample(load_pairs(cfg.data, labeled=False), cfg.max_pairs, cfg.fit.seed), (
            EmbeddingLoss.CONTRASTIVE
        )
    ps = subsample(ps, cfg.max_pairs, cfg.fit.seed)
    y = scale_scores(ps.scores, score_range_for(cfg.data, ps.scores, cfg.score_range))  # type: ignore[arg-type]
    return PairSet(ps.name, ps.s1, ps.s2, y), EmbeddingLoss.COSINE


# --------------------------------------------------------------------------- model


def build_model(cfg: TrainEmbeddingConfig, device: str):
    """The sentence-transformers model to train: the backbone with the chosen pooling head."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    choice = parse_enum(PoolingChoice, cfg.pooling, "pooling")
    if choice is PoolingChoice.MEAN:
        return BiEncoder.load(cfg.model, device=device, pooling="mean", backend="torch").st_model
    st = BiEncoder.load(cfg.model, device=device, backend="torch").st_model
    kind = PoolerKind(choice.value)
    modules = list(st._modules.values())
    heads = [i for i, m in enumerate(modules) if isinstance(m, (STPooling, LayerPooling))]
    if not heads:
        raise InvalidInput(f"--model {cfg.model}: no pooling module to replace with a {kind.value} pooler")
    old = modules[heads[0]]
    if isinstance(old, LayerPooling) and old.kind is kind:
        return st  # continue training this pooler
    torch.manual_seed(cfg.fit.seed)  # the pooler's initial weights follow the run's seed
    pooler = make_pooler(st, kind, **cfg.sizes.kwargs())
    keep_norm = any(isinstance(m, Normalize) for m in modules)
    model = SentenceTransformer(
        modules=[modules[0], pooler] + ([Normalize()] if keep_norm else []), device=device
    )
    enable_all_layers(model)
    return model


def pooler_of(st_model) -> LayerPooling | None:
    return next((m for m in st_model._modules.values() if isinstance(m, LayerPooling)), None)


def parameter_report(st_model) -> dict:
    body = next(iter(st_model._modules.values()))
    enc = sum(p.numel() for p in body.parameters())
    pooler = pooler_of(st_model)
    n = pooler.parameter_count() if pooler is not None else 0
    return {"encoder_params": enc, "pooler_params": n, "pooler_pct_of_encoder": round(100.0 * n / enc, 2)}


def make_optimizer(st_model, cfg: TrainEmbeddingConfig) -> torch.optim.Optimizer:
    """AdamW: the backbone at ``fit.lr``, the pooler at ``pooler_lr``; no decay on biases, norms, latents."""
    pooler = pooler_of(st_model)
    pooler_ids = {id(p) for p in pooler.parameters()} if pooler is not None else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in st_model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.dim() < 2 or "norm" in name.lower() or "latents" in name or "layer_embedding" in name
        groups.setdefault((id(p) in pooler_ids, no_decay), []).append(p)
    wd = cfg.fit.weight_decay
    return torch.optim.AdamW(
        [
            {
                "params": ps,
                "lr": cfg.pooler_lr if is_pooler else cfg.fit.lr,
                "weight_decay": 0.0 if nd else wd,
            }
            for (is_pooler, nd), ps in groups.items()
        ],
        lr=cfg.fit.lr,
    )


# --------------------------------------------------------------------------- losses


def contrastive_loss(
    u: torch.Tensor, v: torch.Tensor, ia: np.ndarray, ib: np.ndarray, scale: float
) -> torch.Tensor:
    """In-batch negatives, both directions. u, v (B, D); ia, ib (B,) text ids of each side.

    Off-diagonal entries whose left or right text equals the row's own are masked (not negatives).
    """
    sim = scale * F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T  # (B, B)
    a = torch.as_tensor(ia, device=sim.device)
    b = torch.as_tensor(ib, device=sim.device)
    same = (a[:, None] == a[None, :]) | (b[:, None] == b[None, :])  # (B, B)
    same.fill_diagonal_(False)
    sim = sim.masked_fill(same, float("-inf"))
    target = torch.arange(len(u), device=sim.device)  # (B,)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


# --------------------------------------------------------------------------- the job


def _save_model(st_model, dest: Path) -> None:
    save_dir_atomic(dest, lambda d: st_model.save(str(d)))


def train_embedding(
    cfg: TrainEmbeddingConfig, out: str | Path, *, device: str | None = "auto", progress: bool = True
) -> dict:
    """Train, save ``out/model`` (final weights), and write ``out/report.json``; returns the report."""
    out = check_out_dir(out)
    dev_name = resolve_device(device)
    t0 = time.time()
    train, loss_kind = load_training_pairs(cfg)
    st = build_model(cfg, dev_name)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"kind": "train-embedding", **cfg.to_dict()})
    report: dict = {
        "kind": "train-embedding",
        "config": cfg.to_dict(),
        "train_pairs": len(train),
        "loss": loss_kind.value,
        "device": dev_name,
        **parameter_report(st),
    }
    log.info(
        "train embedding: %s pooling, %d pairs, %s loss, pooler %d params (%.2f%% of the encoder)",
        cfg.pooling,
        len(train),
        loss_kind.value,
        report["pooler_params"],
        report["pooler_pct_of_encoder"],
    )
    fit = cfg.fit
    if loss_kind is EmbeddingLoss.CONTRASTIVE and fit.length_grouping:
        fit = dataclasses.replace(fit, length_grouping=False)  # the batch is the negatives: keep it random
    pe = PairEmbedder(st, train.s1, train.s2, fit.max_length, dev_name)
    cosine_mse = CosineMSELoss()
    evaluator = None
    if cfg.dev:
        dev = load_pairs(cfg.dev, labeled=True, dedup=False, for_training=False)
        evaluator = make_evaluator("bi", st, resolve_model(cfg.model), dev, PairMetric.SPEARMAN)
    y_all = torch.as_tensor(np.asarray(train.scores, dtype=np.float32)) if train.scores is not None else None

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        u, v = pe.pair_embeddings(idx)  # (B, D) each
        if loss_kind is EmbeddingLoss.COSINE:
            return cosine_mse(u, v, y_all[idx])  # type: ignore[index]
        return contrastive_loss(u, v, pe.ia[idx], pe.ib[idx], cfg.contrastive_scale)

    ckpt_dir = out / "checkpoints"
    per_epoch = -(-len(train) // fit.batch_size)

    def on_step(step: int) -> None:
        every = cfg.checkpoint_steps or per_epoch
        if step % every:
            return
        _save_model(st, ckpt_dir / f"step-{step}")
        done = sorted(ckpt_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in done[: -cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    res: FitResult = run_fit(
        st,
        len(train),
        batch_loss,
        fit,
        lengths=pe.lengths,
        desc=f"embedding ({cfg.pooling})",
        progress=progress,
        optimizer=make_optimizer(st, cfg),
        on_step=on_step,
        evaluator=evaluator,
        keep_start=cfg.keep_start,
    )
    _save_model(st, out / MODEL_SUBDIR)
    report["fit"] = res.as_dict()
    report["selected_on"] = cfg.dev
    report.update(outcome(res.start_score, res.trained_score))
    report["wall_s"] = round(time.time() - t0, 1)
    write_json_atomic(out / "report.json", report)
    return report


__all__ = [
    "EMBEDDING_FIT_DEFAULT",
    "EmbeddingLoss",
    "PoolerSizes",
    "PoolingChoice",
    "TrainEmbeddingConfig",
    "build_model",
    "contrastive_loss",
    "load_training_pairs",
    "parameter_report",
    "train_embedding",
]
