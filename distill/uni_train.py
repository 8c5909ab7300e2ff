"""``pairsmith train uni-encoder``: listwise training of a Uni-Encoder and its two baselines.

One loss for all three kinds, so the comparison is about the architecture: for each context,
softmax cross-entropy over its candidates' scores (gold = the positive response).

- ``uni``: one row per context (context + all its candidates, the chosen mask). ``head``
  ``warm`` (the default when ``model`` is a sentence-transformers bi-encoder): starts as that
  bi-encoder, scores = cosine x ``bi_scale`` with cross-segment attention gated shut
  (``UniEncoder.from_bi_encoder``); ``cold``: the paper's span mean -> fresh linear head.
- ``cross``: ``warm``: the same gated model with one candidate per row and the context and
  candidate attending to each other through the gates (a cross-encoder that starts as the
  bi-encoder); ``cold``: one ``[CLS] context [SEP] candidate [SEP]`` row per candidate through
  a sentence-transformers CrossEncoder with a fresh one-logit head.
- ``bi``: context and candidates embedded separately, scores = cosine x ``bi_scale``.

The start model is scored on the selection set (``select``, a split of MuTual train sharing no
dialogue with the training part) before training and is kept as a candidate: the saved model is
the better of the start and the trained one by selection MRR, and ``report.json`` says
``start_score``, ``best_score`` and ``improved``.

All three see the same token ids: the context keeps its newest turns within
``max_context_tokens`` and every candidate its last ``max_candidate_tokens - 2`` tokens (the
Uni-Encoder tokenizer's rules). Negatives: ``dataset`` (the set's own), ``in-batch`` (the
other contexts' positives), or ``both``. Candidate order is shuffled per example (all three
models are order-equivariant, so this only guards against bugs). AdamW, linear warm-up and
decay, grad-norm clip 1.0. Checkpoints every ``checkpoint_steps`` (model + optimiser +
scheduler + step, atomically); ``--resume`` continues from the last one on the same batch order.

Output::

    out/model/         the trained model (UniEncoder / CrossEncoder / BiEncoder directory)
    out/config.json    this run's UniTrainConfig
    out/report.json    steps, mean loss per 10 %, selection scores, evaluation (R@1/2/5, MRR x 100),
                       wall time
    out/checkpoint.pt  the last checkpoint (removed once the model is saved)
    out/start/         the start model while training runs (removed once the best is chosen)
"""

from __future__ import annotations

import dataclasses
import enum
import io
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pairsmith.atomic import atomic_write_bytes, replace_dir
from pairsmith.distill import metrics
from pairsmith.distill.data import DialogueSet
from pairsmith.distill.dialogue import load_dialogue
from pairsmith.distill.runstate import RunState, save_dir_atomic, write_json_atomic
from pairsmith.encoders import BiEncoder, CrossEncoder, UniConfig, UniEncoder, UniMask
from pairsmith.encoders.runtime import resolve_device
from pairsmith.encoders.tokenize import pad_rows
from pairsmith.encoders.uni_encoder import config_for_backbone, is_uni_dir
from pairsmith.encoders.uni_tokenize import UniTokenizer
from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
CHECKPOINT = "checkpoint.pt"


class ModelKind(enum.Enum):
    UNI = "uni"
    CROSS = "cross"
    BI = "bi"


class Head(enum.Enum):
    AUTO = "auto"  # warm when the model is a sentence-transformers bi-encoder, else cold
    WARM = "warm"  # start as the bi-encoder's cosine (gated cross-segment attention)
    COLD = "cold"  # a fresh score head (the paper's Uni-Encoder; a plain CrossEncoder)


class Negatives(enum.Enum):
    DATASET = "dataset"
    IN_BATCH = "in-batch"
    BOTH = "both"


@dataclass(frozen=True)
class UniTrainConfig:
    data: str = "mutual"
    model: str = "default"  # starting transformer (a bi-encoder directory works)
    kind: str = "uni"  # uni | cross | bi (the baselines, same data and loss)
    mask: str = "arrow"  # uni: attention pattern while training
    negatives: str = "dataset"
    head: str = "auto"  # uni / cross: auto | warm | cold (see the module docstring)
    max_contexts: int | None = None  # subsample the training contexts (CPU budgets)
    epochs: int = 1
    batch_size: int = 8  # contexts per step
    lr: float = 5e-5
    warmup: float = 0.1
    max_context_tokens: int = 192
    max_candidate_tokens: int = 64
    bi_scale: float = 20.0  # cosine -> logit for the bi and warm models (fixed temperature)
    gate_lr: float = 2.0  # warm: learning rate of the cross-segment gates (Adam, sign-like steps)
    select: str = "mutual-select"  # selection set ('none': keep the trained model unscored)
    select_limit: int | None = 200  # selection on its first N contexts
    checkpoint_steps: int = 50
    eval_sets: tuple[str, ...] = ("mutual-heldout", "dailydialog-dev")
    eval_limit: int | None = None  # evaluate on the first N contexts of each set (CPU budgets)
    seed: int = 0
    mlm_weight: float = (
        0.0  # uni: + W x MLM loss on a masked copy of each batch (distill/uni_mlm.py); 0 = off
    )

    def __post_init__(self) -> None:
        ModelKind(self.kind)
        Negatives(self.negatives)
        UniMask.parse(self.mask)
        Head(self.head)
        for name in ("epochs", "batch_size", "checkpoint_steps"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("max_contexts", "select_limit", "eval_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InvalidInput(
                    f"{name}: must be a positive number of contexts, got {v} (leave it unset for all)"
                )
        if not self.gate_lr > 0:
            raise InvalidInput(f"gate_lr: must be > 0, got {self.gate_lr}")
        if not self.lr > 0:
            raise InvalidInput(f"lr: must be > 0, got {self.lr}")
        if not (0.0 <= self.mlm_weight < float("inf")):
            raise InvalidInput(f"mlm_weight: must be a finite number >= 0, got {self.mlm_weight}")
        if self.mlm_weight > 0 and self.kind != ModelKind.UNI.value:
            raise InvalidInput(
                f"mlm_weight: the MLM auxiliary loss is for kind uni only, got kind {self.kind!r}"
            )
        if self.mlm_weight > 0 and self.head == Head.WARM.value:
            raise InvalidInput("mlm_weight: the MLM auxiliary loss is for head cold only")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- shared token packing ------------------------------------------------------------------------


def _uni_config(cfg: UniTrainConfig, groups: int, hf_config=None) -> UniConfig:
    """Packing limits for ``cfg``; with ``hf_config`` (a baseline's backbone) its token types and
    position facts too (the Uni-Encoder fills them itself in ``from_backbone``)."""
    base = UniConfig(
        max_context_tokens=cfg.max_context_tokens,
        max_candidate_tokens=cfg.max_candidate_tokens,
        max_row_tokens=cfg.max_context_tokens + cfg.max_candidate_tokens * max(groups, 16),
        max_groups=max(groups, 16),
        mask=cfg.mask,
    )
    return base if hf_config is None else config_for_backbone(hf_config, base)


def cross_batch(tok: UniTokenizer, items: Sequence[tuple[Sequence[str], Sequence[str]]]):
    """[CLS] context [SEP] candidate [SEP] rows (the Uni-Encoder's truncation), one per candidate."""
    ids, types = [], []
    for ctx, cands in items:
        c, _ = tok.context_ids(ctx)
        for cand in tok.candidate_ids(cands)[0]:
            ids.append(c + cand[1:])
            types.append([0] * len(c) + [1] * (len(cand) - 1))
    return pad_rows(ids, types, tok.pad_id, tok.config.uses_type_ids)


def bi_batches(tok: UniTokenizer, items: Sequence[tuple[Sequence[str], Sequence[str]]]):
    """(contexts batch, candidates batch), each text a plain [CLS] ... [SEP] row."""
    ctx = [tok.context_ids(c)[0] for c, _ in items]
    cands = [x for _, cs in items for x in tok.candidate_ids(cs)[0]]
    return pad_rows(ctx, [[0] * len(x) for x in ctx], tok.pad_id, False), pad_rows(
        cands, [[0] * len(x) for x in cands], tok.pad_id, False
    )


def _baseline_tokenizer(enc: CrossEncoder | BiEncoder, cfg: UniTrainConfig, groups: int) -> UniTokenizer:
    """The Uni-Encoder's truncation rules on a baseline's vocabulary; token types as its backbone has."""
    hf_config = enc.st_model.transformers_model.config
    return UniTokenizer.from_dir(enc.source.path, _uni_config(cfg, groups, hf_config))  # type: ignore[arg-type]


def resolve_head(cfg: UniTrainConfig) -> Head:
    """``auto``: warm for a sentence-transformers bi-encoder directory (uni and cross), else cold
    (and cold with the MLM auxiliary loss, which belongs to the paper's recipe)."""
    from pairsmith.encoders.cross_encoder import is_bi_encoder_dir
    from pairsmith.encoders.source import resolve_model

    head = Head(cfg.head)
    if head is not Head.AUTO:
        return head
    if cfg.kind == ModelKind.BI.value or cfg.mlm_weight > 0:  # MLM: the paper's recipe, cold head
        return Head.COLD
    src = resolve_model(cfg.model)
    return Head.WARM if src.path is not None and is_bi_encoder_dir(src) else Head.COLD


def _warm_uni(cfg: UniTrainConfig, device: str, groups: int, kind: ModelKind) -> UniEncoder:
    """The gated cosine model: uni (all candidates in a row, cfg.mask) or cross (one per row, arrow)."""
    from dataclasses import replace

    ucfg = _uni_config(cfg, groups)
    if kind is ModelKind.CROSS:
        ucfg = replace(ucfg, max_groups=1, max_row_tokens=cfg.max_context_tokens + cfg.max_candidate_tokens)
    mask = cfg.mask if kind is ModelKind.UNI else UniMask.ARROW
    return UniEncoder.from_bi_encoder(
        cfg.model, mask=mask, config=ucfg, device=device, score_scale=cfg.bi_scale
    )


class Trainable:
    """One of the three models behind ``scores(items) -> list of (n_i,) tensors`` and ``save``."""

    def __init__(self, kind: ModelKind, cfg: UniTrainConfig, device: str, groups: int) -> None:
        self.kind, self.cfg, self.device = kind, cfg, device
        self.head = resolve_head(cfg)
        ucfg = _uni_config(cfg, groups)
        self.uni: UniEncoder | None = None
        # Training keeps the dense (B, 1, T, T) mask. The block path (what rank() runs) is
        # differentiable with the same gradients (tests/test_uni_block.py), but it draws attention
        # dropout differently, so a run and its golden one-step bits would change.
        if self.head is Head.WARM:
            self.uni = _warm_uni(cfg, device, groups, kind)
            self.module = self.uni.model
            self.tok = self.uni.tokenizer
        elif kind is ModelKind.UNI:
            self.uni = UniEncoder.from_backbone(cfg.model, config=ucfg, device=device, seed=cfg.seed)
            self.module = self.uni.model
            self.tok = self.uni.tokenizer.with_mask(cfg.mask)
        elif kind is ModelKind.CROSS:
            self.ce = CrossEncoder.from_backbone(cfg.model, device=device, seed=cfg.seed)
            self.module = self.ce.st_model
            self.tok = _baseline_tokenizer(self.ce, cfg, groups)
        else:
            self.bi = BiEncoder.load(cfg.model, device=device, backend="torch")
            self.module = self.bi.st_model
            self.tok = _baseline_tokenizer(self.bi, cfg, groups)

    def _feats(self, batch) -> dict:
        from pairsmith.encoders.runtime import to_features

        return to_features(batch, self.device)

    def param_groups(self) -> list[dict]:
        """AdamW groups: the warm gates get their own rate and no decay (decay would pull them
        open). Their gradients start near exp(-30) ~ 1e-13 and Adam's second moment of such a
        gradient underflows fp32 (g^2 < 1e-38: the step explodes), so each gate tensor's gradient
        is scaled to max |g| = 1 first: Adam then steps them by about ``gate_lr`` per step in the
        gradient's direction, however small it is."""
        gates = [p for n, p in self.module.named_parameters() if n.startswith("gate_")]
        rest = [p for n, p in self.module.named_parameters() if not n.startswith("gate_")]
        for g in gates:
            g.register_hook(lambda grad: grad / grad.abs().amax().clamp_min(1e-30))
        groups = [{"params": rest}]
        if gates:
            groups.append({"params": gates, "lr": self.cfg.gate_lr, "weight_decay": 0.0})
        return groups

    def uni_batch(self, items: Sequence[tuple[Sequence[str], Sequence[str]]]):
        """Uni: one padded row per context (all its candidates), the training mask."""
        enc, _, _ = self.tok.encode_groups(items, max_row_tokens=10**9)
        return self.tok.pad(enc.ids)

    def scores(self, items: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list:
        """Per item, its candidates' training logits (warm and bi: cosine x bi_scale)."""
        sizes = [len(c) for _, c in items]
        if self.head is Head.WARM and self.kind is ModelKind.CROSS:
            import torch

            enc, chunks, _ = self.tok.encode_groups(items)  # one candidate per row, in order
            out = self.module(self._feats(self.tok.pad(enc.ids)))["scores"][:, 0]  # (sum n,)
            assert len(chunks) == sum(sizes)
            return list((out * self.cfg.bi_scale).split(sizes)) if len(out) else [torch.zeros(0)]
        if self.kind is ModelKind.UNI:
            out = self.module(self._feats(self.uni_batch(items)))["scores"]  # (B, G)
            scale = self.cfg.bi_scale if self.head is Head.WARM else 1.0
            return [out[i, :n] * scale for i, n in enumerate(sizes)]
        if self.kind is ModelKind.CROSS:
            flat = self.module(self._feats(cross_batch(self.tok, items)))["scores"].reshape(-1)  # (sum n,)
        else:
            import torch

            ctx_b, cand_b = bi_batches(self.tok, items)
            u = torch.nn.functional.normalize(self.module(self._feats(ctx_b))["sentence_embedding"], dim=-1)
            v = torch.nn.functional.normalize(self.module(self._feats(cand_b))["sentence_embedding"], dim=-1)
            owner = torch.repeat_interleave(
                torch.arange(len(items), device=u.device), torch.tensor(sizes, device=u.device)
            )
            flat = (u[owner] * v).sum(-1) * self.cfg.bi_scale  # (sum n,)
        return list(flat.split(sizes))

    def save(self, path: Path) -> None:
        if self.uni is not None:
            self.uni.save(path)
        elif self.kind is ModelKind.CROSS:
            self.ce.save(path)
        else:
            self.bi.save(path)


# -- ranking with a trained model (evaluation, benchmark) -----------------------------------------


def ranker(
    kind: ModelKind, path: str, device: str = "cpu", mask: str = "arrow", cfg: UniTrainConfig | None = None
):
    """``rank(items) -> list of (n_i,) float arrays`` for a trained model of ``kind`` at ``path``."""
    import torch

    cfg = cfg or UniTrainConfig()
    if kind is ModelKind.UNI or is_uni_dir(Path(path)):  # a warm cross-encoder is a gated Uni dir
        uni = UniEncoder.load(path, device=device, backend="torch")
        m = mask if kind is ModelKind.UNI else uni.config.mask
        return lambda items: uni.rank_many(items, mask=m, batch_size=16)
    t = object.__new__(Trainable)
    t.kind, t.cfg, t.device, t.head, t.uni = kind, cfg, device, Head.COLD, None
    if kind is ModelKind.CROSS:
        t.ce = CrossEncoder.load(path, device=device, backend="torch")
        t.module, t.tok = t.ce.st_model, _baseline_tokenizer(t.ce, cfg, 16)
    else:
        t.bi = BiEncoder.load(path, device=device, backend="torch")
        t.module, t.tok = t.bi.st_model, _baseline_tokenizer(t.bi, cfg, 16)
    t.module.eval()

    def rank(items):
        out = []
        with torch.inference_mode():
            for i in range(0, len(items), 8):
                out.extend(s.float().cpu().numpy() for s in t.scores(items[i : i + 8]))
        return out

    return rank


def eval_ranking(ds: DialogueSet, rank: Callable, *, progress: bool = False, dedupe: bool = True) -> dict:
    """Each positive vs its context's negatives: R@1/2/5 and MRR x 100.

    ``dedupe``: score each context's candidates (all positives + negatives) once; exact for
    models whose scores do not depend on the other candidates (cross, bi, context-blind).
    """
    ranks: list[int] = []
    step = 64
    for s in tqdm(
        range(0, len(ds.contexts), step), desc=f"eval {ds.name}", unit="chunk", disable=not progress
    ):
        rows = list(
            zip(
                ds.contexts[s : s + step], ds.positives[s : s + step], ds.negatives[s : s + step], strict=True
            )
        )
        if dedupe:
            scored = rank([(c, [*p, *n]) for c, p, n in rows])
            for (_, p, _), sc in zip(rows, scored, strict=True):
                neg = sc[len(p) :]
                ranks.extend(metrics.rank_of_first(np.concatenate([[sc[i]], neg])) for i in range(len(p)))
        else:
            ranks.extend(
                metrics.rank_of_first(sc) for sc in rank([(c, [q, *n]) for c, p, n in rows for q in p])
            )
    r = np.array(ranks)
    return {
        "R@1": round(float((r <= 1).mean()) * 100, 2),
        "R@2": round(float((r <= 2).mean()) * 100, 2),
        "R@5": round(float((r <= 5).mean()) * 100, 2),
        "MRR": round(float((1.0 / r).mean()) * 100, 2),
        "cases": len(r),
    }


def limit_set(ds: DialogueSet, n: int | None) -> DialogueSet:
    """The first ``n`` contexts (a fixed, reported subset), or the whole set."""
    if n is None or n >= len(ds.contexts):
        return ds
    return DialogueSet(f"{ds.name}[:{n}]", ds.contexts[:n], ds.positives[:n], ds.negatives[:n])


# -- training ----------------------------------------------------------------------------------------


def _examples(ds: DialogueSet, cfg: UniTrainConfig) -> tuple[list[tuple[list[str], str, list[str]]], int]:
    """(context, positive, negatives) examples of ``max_contexts`` contexts drawn by seed (a
    context with several positives gives several examples); and the number of contexts."""
    keep = list(range(len(ds.contexts)))
    if cfg.max_contexts is not None and cfg.max_contexts < len(keep):
        keep = sorted(np.random.default_rng(cfg.seed).permutation(len(keep))[: cfg.max_contexts].tolist())
    ex = [(ds.contexts[i], p, ds.negatives[i]) for i in keep for p in ds.positives[i]]
    return ex, len(keep)


def _step_items(batch, neg: Negatives, rng: np.random.Generator):
    items, golds = [], []
    for j, (ctx, pos, negs) in enumerate(batch):
        cands = [pos]
        if neg in (Negatives.DATASET, Negatives.BOTH):
            cands += list(negs)
        if neg in (Negatives.IN_BATCH, Negatives.BOTH):
            cands += [b[1] for k, b in enumerate(batch) if k != j]
        order = rng.permutation(len(cands))
        items.append((ctx, [cands[i] for i in order]))
        golds.append(int(np.argmin(order)))  # where candidate 0 (the positive) went
    return items, golds


def _select_key(res: dict) -> tuple[float, float]:
    """Selection order: MRR, then R@1 (MRR moves with every rank, so it is the steadier signal)."""
    return (res["MRR"], res["R@1"])


def _evaluate(
    kind: ModelKind, model_dir: Path, dev: str, cfg: UniTrainConfig, ds: DialogueSet, progress: bool
):
    rank = ranker(kind, str(model_dir), dev, cfg.mask, cfg)
    ctx_blind = UniMask.parse(cfg.mask) is UniMask.CONTEXT_BLIND
    dedupe = kind is not ModelKind.UNI or ctx_blind
    return eval_ranking(ds, rank, progress=progress, dedupe=dedupe)


def train_uni(
    cfg: UniTrainConfig, out: str | Path, *, resume: bool = False, device: str = "cpu", progress: bool = True
) -> dict:
    import torch

    out = Path(out)
    kind, neg = ModelKind(cfg.kind), Negatives(cfg.negatives)
    dev = resolve_device(device)
    train = load_dialogue(cfg.data)
    evals = [limit_set(load_dialogue(n), cfg.eval_limit) for n in cfg.eval_sets]
    select = None if cfg.select in ("", "none") else limit_set(load_dialogue(cfg.select), cfg.select_limit)
    ex, n_contexts = _examples(train, cfg)
    if not ex:
        raise InvalidInput(f"data: {cfg.data} has no training examples")
    state = RunState(out, cfg.to_dict(), resume=resume, kind="train-uni-encoder")
    write_json_atomic(out / "config.json", {"kind": "train-uni-encoder", **cfg.to_dict()})
    groups = 1 + (max(len(e[2]) for e in ex) if neg is not Negatives.IN_BATCH else 0)
    groups += cfg.batch_size - 1 if neg is not Negatives.DATASET else 0
    torch.manual_seed(cfg.seed)
    model = Trainable(kind, cfg, dev, groups)
    start_dir = out / "start"
    if select is not None and not state.is_done("start"):  # the start model is a candidate
        model.module.eval()
        save_dir_atomic(start_dir, model.save)
        res = _evaluate(kind, start_dir, dev, cfg, select, progress)
        state.mark("start", select=res)
    params = list(model.module.parameters())
    mlm = None
    if cfg.mlm_weight > 0:  # W = 0 builds nothing: the plain path, bit for bit
        from pairsmith.distill.uni_mlm import MlmAux

        mlm = MlmAux(model.module, model.uni.source.path, dev)  # type: ignore[arg-type,union-attr]
        params += mlm.parameters()
    per_epoch = (len(ex) + cfg.batch_size - 1) // cfg.batch_size
    total = per_epoch * cfg.epochs
    groups_opt = model.param_groups()
    if mlm is not None:
        groups_opt.append({"params": mlm.parameters()})
    opt = torch.optim.AdamW(groups_opt, lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    start, losses, mlm_losses = 0, [], []
    ck = out / CHECKPOINT
    model_dir = out / MODEL_SUBDIR
    if not state.is_done("fit") and resume and ck.exists():
        blob = torch.load(ck, map_location=dev, weights_only=True)
        model.module.load_state_dict(blob["model"])
        opt.load_state_dict(blob["opt"])
        sched.load_state_dict(blob["sched"])
        start, losses = int(blob["step"]), list(blob["losses"])
        if mlm is not None:
            mlm.head.load_state_dict(blob["mlm"])
            mlm_losses = list(blob["mlm_losses"])
        torch.set_rng_state(blob["rng"])  # dropout masks continue as in an uninterrupted run
        log.info("resuming at step %d of %d", start, total)
    if not state.is_done("fit"):
        orders = [np.random.default_rng(cfg.seed + e).permutation(len(ex)) for e in range(cfg.epochs)]
        model.module.train()
        bar = tqdm(total=total, initial=start, desc=f"train {kind.value}", unit="step", disable=not progress)
        for step in range(start, total):
            e, b = divmod(step, per_epoch)
            idx = orders[e][b * cfg.batch_size : (b + 1) * cfg.batch_size]
            items, golds = _step_items(
                [ex[i] for i in idx], neg, np.random.default_rng(cfg.seed * 100003 + step)
            )
            scores = model.scores(items)
            loss = torch.stack(
                [
                    torch.nn.functional.cross_entropy(s[None], torch.tensor([g], device=s.device))
                    for s, g in zip(scores, golds, strict=True)
                ]
            ).mean()
            losses.append(float(loss.detach()))  # the ranking loss (comparable across runs and kinds)
            if mlm is not None:
                aux = mlm.loss(model.uni_batch(items), np.random.default_rng([cfg.seed, step, 1]))
                mlm_losses.append(float(aux.detach()))
                loss = loss + cfg.mlm_weight * aux
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(
                loss=f"{np.mean(losses[-20:]):.3f}",
                **({"mlm": f"{np.mean(mlm_losses[-20:]):.3f}"} if mlm else {}),
            )
            if (step + 1) % cfg.checkpoint_steps == 0 and step + 1 < total:
                buf = io.BytesIO()
                torch.save(
                    {
                        "model": model.module.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                        "step": step + 1,
                        "losses": losses,
                        "rng": torch.get_rng_state(),
                        **({"mlm": mlm.head.state_dict(), "mlm_losses": mlm_losses} if mlm else {}),
                    },
                    buf,
                )
                atomic_write_bytes(ck, buf.getvalue())
        bar.close()
        model.module.eval()
        save_dir_atomic(model_dir, model.save)
        tenth = max(1, len(losses) // 10)

        def curve(xs: list[float]) -> list[float]:
            return [round(float(np.mean(xs[i : i + tenth])), 4) for i in range(0, len(xs), tenth)]

        state.mark(
            "fit",
            steps=total,
            loss_curve=curve(losses),
            **({"mlm_loss_curve": curve(mlm_losses)} if mlm else {}),
        )
        ck.unlink(missing_ok=True)
    if select is not None and not state.is_done("select"):
        trained = _evaluate(kind, model_dir, dev, cfg, select, progress)
        start = state.info("start")["select"]
        improved = _select_key(trained) > _select_key(start)
        if not improved:  # nothing beat the start: it is the model this run hands back
            log.warning(
                "selection %s: trained %s <= start %s; keeping the start model", select.name, trained, start
            )
            replace_dir(start_dir, model_dir)
        state.mark("select", trained=trained, improved=improved)
    if start_dir.exists():
        shutil.rmtree(start_dir, ignore_errors=True)
    report = {
        "kind": "train-uni-encoder",
        "config": cfg.to_dict(),
        "head": model.head.value,
        "train_contexts": n_contexts,
        "train_examples": len(ex),
        "candidates_per_context": groups,
        "device": dev,
        "fit": state.info("fit"),
        "eval": {},
    }
    if select is not None:
        start, sel = state.info("start")["select"], state.info("select")
        best = sel["trained"] if sel["improved"] else start
        report.update(
            select_set=select.name,
            select_metric="MRR (then R@1)",
            start_score=start,
            trained_score=sel["trained"],
            best_score=best,
            improved=bool(sel["improved"]),
        )
    for ds in evals:
        report["eval"][ds.name] = _evaluate(kind, model_dir, dev, cfg, ds, progress)
    report["wall_s"] = round(state.elapsed(), 1)
    write_json_atomic(out / "report.json", report)
    return report
