"""Byte2Word training: MLM pre-training with whole-word masking, then classification fine-tuning.

One trainer for both input units, so Byte2Word and its WordPiece baseline share depth, width,
corpus, steps, batch size and optimiser (the comparison is fair by construction):

- ``unit="bytes"``: 15% of the *words* of a sentence (at least one) are masked (every chunk of a
  masked word gets the learned mask vector); the first chunk's final state predicts the word's
  WordPiece ids (uncased vocabulary of the default model), ``slots`` of them, then ``[SEP]`` as end.
- ``unit="wordpiece"``: the same words are chosen (the tokenizer's word ids), every token of a
  masked word is masked and predicts its own id (standard whole-word-masking MLM).

Then the encoder and a classifier on its mean-pooled states are fine-tuned on the task. The
fine-tune never hands back less than it started from: the start model (the encoder as MLM left it
and the new classifier as initialised) is scored on the selection set first (accuracy x100) and
kept as a candidate (:class:`~pairsmith.distill.selection.StartCandidate`); the best evaluated
weights, the start's included, are the model. The selection set is held out of the task's training
rows (:func:`~pairsmith.distill.byte2word_data.selection_split`) or read from a file; dev is a
reported column, never used to pick. The output directory is a sentence-transformers model
(WordEncoder + mean Pooling) with the heads in ``heads/``, ``train_config.json`` and ``report.json``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pairsmith.atomic import atomic_write_json
from pairsmith.distill.byte2word_data import (
    read_advglue_sst2,
    read_corpus,
    read_labelled,
    selection_split,
    task_sets,
)
from pairsmith.distill.data import data_root
from pairsmith.distill.provenance import code_version
from pairsmith.distill.selection import outcome
from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

# Model sizes (same for both units; the input stage differs only).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "d_byte": 32, "n_queries": 2, "pool_heads": 2, "max_seq_length": 32},
    "small": {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 256, "d_byte": 64, "n_queries": 2, "pool_heads": 4, "max_seq_length": 48},
}  # fmt: skip
NOISE_SEEDS = (0, 1, 2)
# The selection split of the task's training rows (``select="split"``): seed and minimum words of a
# held-out row, fixed so runs of every seed and unit are compared on the same rows.
SELECT_SEED = 0
SELECT_MIN_WORDS = 10


@dataclass(frozen=True)
class Byte2WordTrainConfig:
    out: str
    mlm_corpus: str
    task: str = "sst2"
    task_dev: str | None = None
    data: str | None = None
    unit: str = "bytes"  # bytes | wordpiece
    size: str = "tiny"
    max_steps: int = 200  # MLM steps
    ft_steps: int = 200  # classification steps
    batch_size: int = 32
    lr: float = 1e-3
    ft_lr: float = 5e-4
    mask_rate: float = 0.15
    slots: int = 4  # WordPiece ids predicted per masked word (bytes unit)
    max_word_bytes: int = 20
    byte_layers: int = 1  # transformer layers over each word's bytes before pooling (bytes unit only)
    query_std: float = 1.0  # initial spread of the byte pooler's learned queries (bytes unit only)
    d_byte: int | None = None  # byte vector width (None: the size's; bytes unit only)
    seed: int = 0
    threads: int = 1
    eval_noise: bool = True
    select: str = "split"  # split (held out of the task's training rows) | none | a labelled FILE
    select_rows: int = 2000  # rows held out by select="split"
    eval_steps: int = 0  # score the selection set every N fine-tuning steps (0: at the end only)

    def __post_init__(self) -> None:
        if self.unit not in ("bytes", "wordpiece"):
            raise InvalidInput(f"--tokenizer: expected bytes or wordpiece, got {self.unit!r}")
        if self.size not in SIZES:
            raise InvalidInput(f"--config: expected one of {sorted(SIZES)}, got {self.size!r}")
        if self.byte_layers < 0:
            raise InvalidInput(f"--byte-layers: must be >= 0, got {self.byte_layers}")
        if self.d_byte is not None and self.d_byte < 1:
            raise InvalidInput(f"--d-byte: must be >= 1, got {self.d_byte}")
        if not self.query_std > 0:
            raise InvalidInput(f"--query-std: must be > 0, got {self.query_std}")
        if self.max_steps < 0 or self.ft_steps < 0 or self.batch_size < 1:
            raise InvalidInput("--max-steps/--ft-steps must be >= 0 and --batch-size >= 1")
        if not self.select:
            raise InvalidInput("--select: expected split, none or a labelled file")
        if self.select_rows < 1 or self.eval_steps < 0:
            raise InvalidInput(
                f"--select-rows must be >= 1 and --eval-steps >= 0, got {self.select_rows} and {self.eval_steps}"
            )


@dataclass
class FineTuneResult:
    """A fine-tune scored on a selection set (scores: accuracy x100 on it)."""

    losses: list[float]
    start_score: float  # the start model: the encoder and classifier as the fine-tune found them
    best_score: float  # the weights the trainer holds now (the start's when nothing beat it)
    best_step: int  # 0: the start was kept
    trained_score: float | None  # the best any trained state reached (None: no step was taken)
    history: list[dict]  # [{"step", "score"}] of the trained states


class Trainer:
    """Holds the encoder, the heads and the WordPiece vocabulary used as the sub-word target."""

    def __init__(self, cfg: Byte2WordTrainConfig, n_labels: int = 2) -> None:
        import torch
        from tokenizers import Tokenizer as RustTokenizer

        from pairsmith.encoders.byte2word.heads import Classifier, SubwordHead
        from pairsmith.encoders.byte2word.model import WordEncoder
        from pairsmith.encoders.source import default_model_dir

        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        size = dict(SIZES[cfg.size])
        if cfg.d_byte is not None and cfg.unit == "bytes":
            size["d_byte"] = cfg.d_byte
        wp_dir = default_model_dir()
        self.wp = RustTokenizer.from_file(str(wp_dir / "tokenizer.json"))
        self.wp.no_padding()
        self.wp.no_truncation()
        self.sep_id = int(self.wp.token_to_id("[SEP]"))
        vocab = int(self.wp.get_vocab_size())
        self.encoder = WordEncoder(
            unit=cfg.unit,
            vocab_size=vocab,
            max_word_bytes=cfg.max_word_bytes,
            byte_layers=cfg.byte_layers if cfg.unit == "bytes" else 0,
            query_std=cfg.query_std,
            tokenizer_dir=str(wp_dir),
            **size,
        )
        self.tok = self.encoder.tokenizer
        slots = cfg.slots if cfg.unit == "bytes" else 1
        self.mlm = SubwordHead(self.encoder.d_model, vocab, slots)
        self.clf = Classifier(self.encoder.d_model, n_labels)
        self._piece_cache: dict[str, list[int]] = {}

    # -- batches -------------------------------------------------------------------------------
    def _pieces(self, word: str) -> list[int]:
        got = self._piece_cache.get(word)
        if got is None:
            got = self.wp.encode(word, add_special_tokens=False).ids
            self._piece_cache[word] = got
        return got

    def _features(self, batch) -> dict:
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.feeds().items()}

    def mlm_batch(self, texts: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        """(features with ``mlm_mask``, flat indices of predicting units (M,), targets (M, K))."""
        from pairsmith.encoders.byte2word.tokenizer import BOW, EOW, decode_words

        if self.cfg.unit == "wordpiece":
            return self._mlm_batch_wordpiece(texts)
        enc = self.tok.encode(texts)
        batch = self.tok.pad(enc.ids, enc.type_ids)
        b, w = batch.shape
        mask = np.zeros((b, w), dtype=bool)
        where, targets = [], []
        k = self.mlm.slots
        for r, units in enumerate(enc.ids):
            starts = [i for i, u in enumerate(units) if u[0] == BOW]
            for start in self._choose(len(starts)):
                i = starts[start]
                j = i
                while units[j][-1] != EOW and j + 1 < len(units):
                    j += 1
                mask[r, i : j + 1] = True
                word = decode_words(units[i : j + 1])[0].lower()
                pieces = self._pieces(word)[:k]
                tgt = np.full(k, -100, dtype=np.int64)
                tgt[: len(pieces)] = pieces
                if len(pieces) < k:
                    tgt[len(pieces)] = self.sep_id  # end of the word's pieces
                where.append(r * w + i)
                targets.append(tgt)
        feats = self._features(batch)
        feats["mlm_mask"] = self._tensor(mask)
        return feats, np.asarray(where, dtype=np.int64), np.stack(targets)

    def _mlm_batch_wordpiece(self, texts: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        enc = self.tok.encode(texts)
        batch = self.tok.pad(enc.ids, enc.type_ids)
        b, w = batch.shape
        mask = np.zeros((b, w), dtype=bool)
        where, targets = [], []
        encs = self.tok._tok.encode_batch(texts)  # same truncation as enc; gives word ids
        for r, (e, ids) in enumerate(zip(encs, enc.ids, strict=True)):
            word_ids = e.word_ids
            words = sorted({x for x in word_ids if x is not None})
            for pick in self._choose(len(words)):
                for t, x in enumerate(word_ids):
                    if x == words[pick]:
                        mask[r, t] = True
                        where.append(r * w + t)
                        targets.append([ids[t]])
        feats = self._features(batch)
        feats["mlm_mask"] = self._tensor(mask)
        return feats, np.asarray(where, dtype=np.int64), np.asarray(targets, dtype=np.int64).reshape(-1, 1)

    def _choose(self, n: int) -> list[int]:
        if n == 0:
            return []
        m = max(1, round(self.cfg.mask_rate * n))
        return self.rng.sample(range(n), m)

    @staticmethod
    def _tensor(a: np.ndarray):
        import torch

        return torch.from_numpy(a)

    def mlm_loss(self, texts: list[str]):
        import torch

        feats, where, targets = self.mlm_batch(texts)
        states = self.encoder(feats)["token_embeddings"]  # (B, W, d)
        flat = states.reshape(-1, states.shape[-1])[torch.from_numpy(where)]  # (M, d)
        return self.mlm.loss(flat, torch.from_numpy(targets))

    def logits(self, texts: list[str]):
        from pairsmith.encoders.byte2word.heads import mean_pool

        enc = self.tok.encode(texts)
        feats = self._features(self.tok.pad(enc.ids, enc.type_ids))
        states = self.encoder(feats)["token_embeddings"]  # (B, W, d)
        return self.clf(mean_pool(states, feats["attention_mask"]))  # (B, n_labels)

    # -- loops ---------------------------------------------------------------------------------
    def _loop(self, params, steps: int, lr: float, loss_fn, name: str, on_step=None) -> list[float]:
        import torch
        from tqdm import tqdm

        if steps == 0:
            return []
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        warm = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
        )
        losses: list[float] = []
        self.encoder.train()
        for step in tqdm(range(1, steps + 1), desc=name, mininterval=30, disable=None):
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step)
        self.encoder.eval()
        return losses

    def pretrain(self, corpus: list[str], steps: int) -> list[float]:
        params = [*self.encoder.parameters(), *self.mlm.parameters()]
        bs = self.cfg.batch_size
        return self._loop(
            params, steps, self.cfg.lr, lambda: self.mlm_loss(self.rng.sample(corpus, bs)), "mlm"
        )

    def finetune(self, rows: list[tuple[str, int]], steps: int, on_step=None) -> list[float]:
        """``steps`` classification steps; the last step is the model (see :meth:`finetune_selected`)."""
        import torch
        import torch.nn.functional as F

        params = [*self.encoder.parameters(), *self.clf.parameters()]
        self.clf.train()

        def step():
            batch = self.rng.sample(rows, self.cfg.batch_size)
            return F.cross_entropy(self.logits([t for t, _ in batch]), torch.tensor([y for _, y in batch]))

        out = self._loop(params, steps, self.cfg.ft_lr, step, "finetune", on_step)
        self.clf.eval()
        return out

    def finetune_selected(
        self, rows: list[tuple[str, int]], steps: int, select: list[tuple[str, int]], eval_steps: int = 0
    ) -> FineTuneResult:
        """Fine-tune, never ending below the start on ``select``.

        The start (encoder and classifier as they are now; a new classifier is scored as
        initialised) is scored first and kept as a candidate; the trained model is scored every
        ``eval_steps`` steps and after the last one. Only a strictly higher score replaces the kept
        weights, and the kept ones are loaded at the end: when nothing trained beat the start, the
        encoder and classifier are the start's again, bit for bit.
        """
        import torch

        from pairsmith.distill.selection import StartCandidate

        if not select:
            raise InvalidInput("selection set: no rows")
        start = self.select_score(select)
        log.info("finetune: start selection accuracy %.2f", start)
        # Both trained parts in one module, so one snapshot holds the whole candidate.
        keeper = StartCandidate(torch.nn.ModuleDict({"encoder": self.encoder, "classifier": self.clf}), start)
        history: list[dict] = []

        def evaluate(step: int) -> None:
            score = self.select_score(select)
            history.append({"step": step, "score": round(score, 4)})
            log.info("finetune: step %d selection accuracy %.2f", step, score)
            keeper.offer(score, step)

        def on_step(step: int) -> None:
            if eval_steps and step % eval_steps == 0 and step < steps:
                evaluate(step)
                self.encoder.train()  # evaluation left both in eval mode
                self.clf.train()

        losses = self.finetune(rows, steps, on_step)
        if steps:
            evaluate(steps)
        keeper.restore()
        self.encoder.eval()
        self.clf.eval()
        return FineTuneResult(
            losses=losses,
            start_score=start,
            best_score=float(keeper.best_score),  # type: ignore[arg-type]
            best_step=int(keeper.best_step),  # type: ignore[arg-type]
            trained_score=keeper.trained_score,
            history=history,
        )

    def select_score(self, rows: list[tuple[str, int]]) -> float:
        """Accuracy x100 on ``rows`` (the selection metric)."""
        return 100.0 * self.accuracy(rows)

    def accuracy(self, rows: list[tuple[str, int]], batch: int = 128) -> float:
        import torch

        self.encoder.eval()
        self.clf.eval()
        right = 0
        with torch.inference_mode():
            for i in range(0, len(rows), batch):
                part = rows[i : i + batch]
                pred = self.logits([t for t, _ in part]).argmax(-1).numpy()
                right += int((pred == np.array([y for _, y in part])).sum())
        return right / len(rows)

    def save(self, out: Path) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling

        from pairsmith.encoders.byte2word.heads import save_heads

        st = SentenceTransformer(modules=[self.encoder, Pooling(self.encoder.d_model, "mean")], device="cpu")
        st.save(str(out))
        save_heads(out, {"mlm": self.mlm, "classifier": self.clf})


def robustness(tr: Trainer, dev: list[tuple[str, int]], root: Path | None) -> dict:
    """Dev accuracy under the seeded noiser (each noise kind alone and all together) and on AdvGLUE."""
    from pairsmith.encoders.byte2word.noise import NoiseConfig, noisy_texts

    out: dict = {}
    kinds = {
        "swap": NoiseConfig(swap=0.05),
        "drop": NoiseConfig(drop=0.05),
        "case": NoiseConfig(case=0.1),
        "all": NoiseConfig(swap=0.05, drop=0.05, case=0.1),
    }
    texts = [t for t, _ in dev]
    for name, nc in kinds.items():
        accs = [
            tr.accuracy(list(zip(noisy_texts(texts, nc, s), [y for _, y in dev], strict=True)))
            for s in NOISE_SEEDS
        ]
        out[name] = {
            "config": asdict(nc),
            "seeds": list(NOISE_SEEDS),
            "acc": accs,
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs)),
        }
    if root is not None:
        adv = read_advglue_sst2(root)
        out["advglue_sst2"] = {"n": len(adv), "acc": tr.accuracy(adv)}
    return out


def train_byte2word(cfg: Byte2WordTrainConfig) -> dict:
    """Pre-train, fine-tune, evaluate; write the model directory and ``report.json``."""
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.time()
    code = code_version()  # at the start: a commit made while the run trains must not relabel it
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train_config.json", asdict(cfg))
    corpus = read_corpus(cfg.mlm_corpus)
    train_rows, dev_rows, task_name = task_sets(cfg.task, cfg.task_dev, cfg.data)
    labels = sorted({y for _, y in train_rows})
    if labels != list(range(len(labels))):
        raise InvalidInput(f"--task: labels must be 0..n-1, got {labels[:10]}")
    fit_rows, select_rows, select_info = _selection(cfg, train_rows, task_name, len(labels))
    tr = Trainer(cfg, n_labels=len(labels))
    mlm = tr.pretrain(corpus, cfg.max_steps)
    t_mlm = time.time() - t0
    if select_rows is None:  # --select none: no selection set, the last step is the model
        ft = tr.finetune(fit_rows, cfg.ft_steps)
        select_info |= outcome(None, None) | {"best_step": None, "select_history": None}
    else:
        sel = tr.finetune_selected(fit_rows, cfg.ft_steps, select_rows, cfg.eval_steps)
        ft = sel.losses
        select_info |= outcome(sel.start_score, sel.trained_score)
        select_info |= {"best_step": sel.best_step, "select_history": sel.history}
    report: dict = {
        "unit": cfg.unit,
        "size": cfg.size,
        "task": task_name,
        "fit_rows": len(fit_rows),
        **select_info,
        "corpus_sentences": len(corpus),
        "params_total": sum(p.numel() for p in tr.encoder.parameters()),
        "params_input_embedding": tr.encoder.input_embedding_params(),
        "mlm_steps": cfg.max_steps,
        "ft_steps": cfg.ft_steps,
        "mlm_loss_first50": _mean(mlm[:50]),
        "mlm_loss_last50": _mean(mlm[-50:]),
        "ft_loss_last50": _mean(ft[-50:]),
        "dev_acc": tr.accuracy(dev_rows),
        "dev_n": len(dev_rows),
        "mlm_wall_s": round(t_mlm, 1),
    }
    if cfg.eval_noise:
        root = data_root(cfg.data) if task_name == "sst2" else None
        report["noise"] = robustness(tr, dev_rows, root)
    report["wall_s"] = round(time.time() - t0, 1)
    report["code"] = code
    report["commit"] = (code.get("commit") or "unknown")[:7] + ("+dirty" if code.get("dirty") else "")
    tr.save(out)
    atomic_write_json(out / "report.json", report)
    return report


def _selection(
    cfg: Byte2WordTrainConfig, train_rows: list[tuple[str, int]], task_name: str, n_labels: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]] | None, dict]:
    """(fit rows, selection rows or None, report keys) for ``cfg.select``."""
    if cfg.select == "none":
        return train_rows, None, {"select_set": None, "select_metric": None}
    if cfg.select == "split":
        try:
            sp = selection_split(train_rows, cfg.select_rows, min_words=SELECT_MIN_WORDS, seed=SELECT_SEED)
        except InvalidInput as e:
            raise InvalidInput(
                f"--select split: {e}; pass a smaller --select-rows, --select FILE or --select none"
            ) from e
        info = {
            "select_set": f"{task_name} train, held out (seed {SELECT_SEED})",
            "select_split": sp.stats(),
        }
        fit, select = sp.fit, sp.select
    else:
        fit, select = train_rows, read_labelled(Path(cfg.select))
        bad = sorted({y for _, y in select} - set(range(n_labels)))
        if bad:
            raise InvalidInput(
                f"--select {cfg.select}: labels {bad[:10]} are not among the task's 0..{n_labels - 1}"
            )
        info = {"select_set": Path(cfg.select).name}
    return fit, select, info | {"select_rows": len(select), "select_metric": "accuracy x100"}


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


__all__ = ["SIZES", "Byte2WordTrainConfig", "FineTuneResult", "Trainer", "robustness", "train_byte2word"]
