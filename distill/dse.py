"""DSE: Distilled Sentence Embedding (Barkan et al., AAAI 2020) on sentence-transformers.

A bi-encoder student learns to reproduce a cross-encoder teacher's pair scores
(METHODS.md section 2). Loss per batch::

    L = (1 - alpha) * L_task(s, y) + alpha * MSE(s, t)

Head ``cosine`` (default; embeddings usable in a FAISS index): s = cos(u, v),
t = sigmoid(teacher logit), L_task = MSE(s, y) with gold y scaled to [0, 1].
Head ``mlp`` (the paper's default, for rescoring a shortlist): s = MLP([u, v,
u*v, |u-v|]) is a logit, t = the teacher's logit (the paper regresses the
binary log-odds), L_task = BCE-with-logits(s, y). Without labels the loss is
the teacher term alone.

Teacher scores are computed once and cached keyed by a hash of the pair text
(:func:`~pairsmith.distill.pairsets.pair_key`), never by row order: the
official code's silent misalignment trap cannot happen, and a shuffled or
extended pair file reuses the cache.

Output: ``out/student`` (a sentence-transformers directory; with the mlp head
also ``out/student/dse_head``), ``out/teacher_cache.npz``, ``config.json``,
``report.json`` (rows: student start, teacher, student; dev and test).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pairsmith.distill import metrics
from pairsmith.distill.augment import Sampling, augment_pairs
from pairsmith.distill.data import PairSet
from pairsmith.distill.fit_config import DSE_FIT_DEFAULT, FitConfig
from pairsmith.distill.losses import DSEHead, DSELoss
from pairsmith.distill.pairsets import (
    load_pairs,
    pair_key,
    scale_scores,
    score_range_for,
    subsample,
)
from pairsmith.distill.runstate import RunState, save_dir_atomic, save_npz_atomic, write_json_atomic
from pairsmith.distill.selection import PairMetric, binary_metrics, outcome, pair_metric
from pairsmith.distill.supervised import resolve_cross_dir
from pairsmith.distill.textnorm import norm_pair_key, unordered_pair_keys
from pairsmith.distill.train import PairEmbedder, run_fit
from pairsmith.encoders import Activation, BiEncoder, CrossEncoder
from pairsmith.encoders.postprocess import pair_cosine, sigmoid
from pairsmith.errors import FailedPrecondition, InvalidInput, parse_enum

log = logging.getLogger(__name__)

HEAD_DIR = "dse_head"


class MLPHead(nn.Module):
    """The DSE pair head: Linear(4D, H) -> ReLU -> Linear(H, 1) over [u, v, u*v, |u-v|]."""

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        g = torch.cat([u, v, u * v, (u - v).abs()], dim=-1)  # (B, 4D)
        return self.net(g).squeeze(-1)  # (B,) logits

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "head.safetensors"))
        (folder / "config.json").write_text(
            json.dumps({"type": "dse-mlp", "dim": self.dim, "hidden": self.hidden})
        )

    @classmethod
    def load(cls, folder: Path) -> MLPHead:
        from safetensors.torch import load_file

        cfg = json.loads((folder / "config.json").read_text())
        head = cls(int(cfg["dim"]), int(cfg["hidden"]))
        head.load_state_dict(load_file(str(folder / "head.safetensors")))
        head.eval()
        return head


class DSEStudent:
    """A trained student: a bi-encoder plus, for the mlp head, the pair head."""

    def __init__(self, encoder: BiEncoder, head: MLPHead | None) -> None:
        self.encoder = encoder
        self.head = head

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = "cpu") -> DSEStudent:
        p = Path(path)
        if (p / "student").is_dir():
            p = p / "student"
        head = MLPHead.load(p / HEAD_DIR) if (p / HEAD_DIR / "config.json").exists() else None
        return cls(BiEncoder.load(str(p), device=device, backend="torch"), head)

    def pair_scores_from_vectors(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] for cosine (as cos) and mlp (sigmoid of the logit) heads."""
        if self.head is None:
            return pair_cosine(u, v)
        dev = next(self.head.parameters()).device
        with torch.inference_mode():
            z = self.head(torch.from_numpy(u).to(dev), torch.from_numpy(v).to(dev))
        return sigmoid(z.cpu().numpy())

    def score(self, s1: list[str], s2: list[str], batch_size: int = 64) -> np.ndarray:
        uniq = list(dict.fromkeys([*s1, *s2]))
        vec = self.encoder.encode(uniq, batch_size=batch_size, normalize=self.head is None).vectors
        pos = {t: i for i, t in enumerate(uniq)}
        u = vec[[pos[t] for t in s1]]
        v = vec[[pos[t] for t in s2]]
        return self.pair_scores_from_vectors(u, v)


# --------------------------------------------------------------------------- teacher cache


class TeacherCache:
    """Teacher logits keyed by :func:`pair_key` of the pair text, stored in one .npz + .json sidecar."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = Path(path)
        self.meta = meta
        self.table: dict[str, float] = {}
        side = self.path.with_suffix(".json")
        if self.path.exists() and side.exists():
            old = json.loads(side.read_text())
            if old.get("teacher") != meta:
                log.warning(
                    "teacher cache %s: made by another teacher/setting; starting a new one", self.path
                )
            else:
                with np.load(self.path, allow_pickle=False) as z:
                    self.table = dict(
                        zip(z["keys"].tolist(), z["logits"].astype(float).tolist(), strict=True)
                    )

    def lookup(self, pairs: list[tuple[str, str]], teacher_fn) -> tuple[np.ndarray, int]:
        """Logits for ``pairs`` (input order), computing and storing the missing ones; returns (logits, n_new)."""
        keys = [pair_key(a, b) for a, b in pairs]
        missing = list(dict.fromkeys(k for k in keys if k not in self.table))
        if missing:
            where = {}
            for k, p in zip(keys, pairs, strict=True):
                where.setdefault(k, p)
            new = teacher_fn([where[k] for k in missing])
            self.table.update(zip(missing, (float(x) for x in new), strict=True))
            self.save()
        return np.array([self.table[k] for k in keys], dtype=np.float32), len(missing)

    def save(self) -> None:
        keys = np.array(list(self.table), dtype="<U32")
        save_npz_atomic(self.path, keys=keys, logits=np.array(list(self.table.values()), dtype=np.float32))
        write_json_atomic(self.path.with_suffix(".json"), {"teacher": self.meta, "n": len(self.table)})


def teacher_logits(
    ce: CrossEncoder, pairs: list[tuple[str, str]], symmetric: bool, progress: bool
) -> np.ndarray:
    raw = ce.score(pairs, activation=Activation.RAW, batch_size=32, show_progress=progress).values
    if symmetric:
        rev = ce.score([(b, a) for a, b in pairs], activation=Activation.RAW, batch_size=32).values
        raw = (raw + rev) / 2.0
    return raw.astype(np.float32)


# --------------------------------------------------------------------------- config and run

# ``--teacher student``: the student's own start labels the unlabeled pairs (the no-teacher control).
STUDENT_TEACHER = "student"


@dataclass(frozen=True)
class DSEConfig:
    teacher: str  # cross-encoder directory (or a train cross-encoder / trans-encoder output folder)
    pairs: str  # training pairs; gold scores used for the task term when present
    student: str = "default"
    head: str = DSEHead.COSINE.value
    alpha: float = 0.5  # weight of the teacher term on gold rows (DSE's distillation_coeff)
    dev: str | None = None  # selection set: checkpoints and the start-model comparison
    test: str | None = None
    eval_sets: tuple[str, ...] = ()  # reported only, never used for selection
    metric: str = "auto"  # spearman | accuracy | auto (accuracy for 0/1 gold)
    score_range: str | None = None
    teacher_symmetric: bool = False  # teacher score = mean over both orders (official: one order)
    use_labels: bool = True
    max_pairs: int | None = None
    gold_limit: int | None = None  # a seeded subset of the gold pairs (the few-gold setting)
    unlabeled: str | None = None  # unscored pairs labelled by the teacher only (silver rows)
    unlabeled_limit: int | None = None  # a seeded subset of them
    silver_weight: float = 1.0  # weight of a silver row's teacher term (a gold row's is alpha)
    mlp_hidden: int = 512
    augment: str = Sampling.NONE.value  # extra teacher-labelled pairs from the training sentences
    augment_k: int = 1  # partners per training sentence
    teacher_cache: str | None = None  # where teacher scores are cached (default: out/teacher_cache.npz)
    keep_start: bool = True  # the start student is a candidate (never exported worse than it)
    fit: FitConfig = field(default_factory=lambda: DSE_FIT_DEFAULT)

    def __post_init__(self) -> None:
        parse_enum(DSEHead, self.head, "--head")
        parse_enum(Sampling, self.augment, "--augment")
        if self.augment_k < 1:
            raise InvalidInput(f"--augment-k: must be >= 1, got {self.augment_k}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInput(f"--alpha: must be in [0, 1], got {self.alpha}")
        if not self.silver_weight >= 0.0:
            raise InvalidInput(f"--silver-weight: must be >= 0, got {self.silver_weight}")
        for name in ("gold_limit", "unlabeled_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InvalidInput(f"--{name.replace('_', '-')}: must be >= 1, got {v}")
        if self.unlabeled and self.alpha == 0.0:
            raise InvalidInput("--unlabeled pairs are labelled by the teacher only; they need --alpha > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _metric(cfg: DSEConfig, gold: np.ndarray | None) -> PairMetric:
    if cfg.metric != "auto":
        return parse_enum(PairMetric, cfg.metric, "--metric")  # type: ignore[return-value]
    if gold is not None and set(np.unique(gold).tolist()) <= {0.0, 1.0}:
        return PairMetric.ACCURACY
    return PairMetric.SPEARMAN


def _rows_eval(score, dev: PairSet | None, test: PairSet | None, evals: dict, metric: PairMetric) -> dict:
    """One report row: ``score(set)`` on dev (selection), test and every eval set (reported only)."""
    row: dict = {}
    thr = None
    if dev is not None:
        if metric is PairMetric.ACCURACY:
            m = binary_metrics(score(dev), dev.scores)
            thr = m["threshold"]
            row["dev"] = m
        else:
            row["dev"] = {"spearman": pair_metric(score(dev), dev.scores, metric)}
    if test is not None:
        if metric is PairMetric.ACCURACY:
            row["test"] = binary_metrics(score(test), test.scores, thr)  # threshold chosen on dev
        else:
            row["test"] = {"spearman": pair_metric(score(test), test.scores, metric)}
    if evals:
        row["eval"] = {name: round(metrics.spearman(score(ps), ps.scores), 3) for name, ps in evals.items()}
    return row


def _load_eval(spec: str) -> PairSet:
    return load_pairs(spec, labeled=True, dedup=False, for_training=False)


def _gold(cfg: DSEConfig) -> PairSet:
    train = subsample(load_pairs(cfg.pairs, labeled=cfg.use_labels), cfg.max_pairs, cfg.fit.seed)
    if cfg.gold_limit is not None and cfg.gold_limit < len(train):
        # its own stream, so --gold-limit picks the same pairs whatever --max-pairs did
        idx = np.sort(
            np.random.default_rng([cfg.fit.seed, 1]).choice(len(train), cfg.gold_limit, replace=False)
        )
        train = PairSet(
            f"{train.name}[gold {cfg.gold_limit}]",
            [train.s1[i] for i in idx],
            [train.s2[i] for i in idx],
            train.scores[idx] if train.scores is not None else None,
        )
    return train


def _unlabeled(cfg: DSEConfig, train: PairSet, held: dict[str, PairSet]) -> tuple[PairSet, dict]:
    """The silver pairs: ``--unlabeled`` minus every pair (normalised, either order) of the gold
    and of the selection/reported sets, then a seeded subset. Returns them and the counts."""
    if not cfg.unlabeled:
        return PairSet("none", [], []), {}
    raw = load_pairs(cfg.unlabeled, labeled=False)
    banned = {"gold pairs": unordered_pair_keys(train.s1, train.s2)}
    banned.update((name, unordered_pair_keys(ps.s1, ps.s2)) for name, ps in held.items())
    keys = [norm_pair_key(a, b) for a, b in raw.pairs]
    found = {name: sum(k in ban for k in keys) for name, ban in banned.items()}
    every = set().union(*banned.values())
    idx = [i for i, k in enumerate(keys) if k not in every]
    if not idx:
        raise InvalidInput(f"--unlabeled {cfg.unlabeled}: every pair is a gold, selection or evaluation pair")
    unl = PairSet(raw.name, [raw.s1[i] for i in idx], [raw.s2[i] for i in idx])
    unl = subsample(unl, cfg.unlabeled_limit, cfg.fit.seed)
    info = {"given": len(raw), "dropped_overlap": found, "used": len(unl)}
    log.info(
        "unlabeled %s: %d pairs given, %d used (overlap dropped: %s)",
        cfg.unlabeled,
        len(raw),
        len(unl),
        found,
    )
    return unl, info


def overlap_report(train: PairSet, silver: PairSet, held: dict[str, PairSet]) -> dict:
    """For every selection/reported set: the fraction of its pairs (normalised, either order)
    that the gold and the silver training pairs hold."""
    gold_keys = unordered_pair_keys(train.s1, train.s2)
    silver_keys = unordered_pair_keys(silver.s1, silver.s2)
    out: dict = {}
    for name, ps in held.items():
        keys = [norm_pair_key(a, b) for a, b in ps.pairs]
        n = max(len(keys), 1)
        out[name] = {
            "gold": round(sum(k in gold_keys for k in keys) / n, 4),
            "silver": round(sum(k in silver_keys for k in keys) / n, 4),
        }
    return out


def _teacher_selected_on(teacher_dir: str) -> str | None:
    """The set a ``train cross-encoder`` teacher was selected on, read from its report (if any)."""
    rep = Path(teacher_dir).parent / "report.json"
    try:
        return json.loads(rep.read_text()).get("selected_on") if rep.exists() else None
    except (OSError, ValueError):
        return None


def run_dse(
    cfg: DSEConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = "auto",
    progress=True,
    pair_scorer=None,  # fn(model_dir, pairs, kind=, activation=, symmetric=) -> scores; e.g. Ray (--engine ray)
) -> dict:
    from pairsmith.encoders.runtime import resolve_device

    out = Path(out)
    dev_name = resolve_device(device)
    head_kind = parse_enum(DSEHead, cfg.head, "--head")
    train = _gold(cfg)
    y = None
    if cfg.use_labels:
        y = scale_scores(train.scores, score_range_for(cfg.pairs, train.scores, cfg.score_range))  # type: ignore[arg-type]
    if y is None and cfg.alpha == 0.0:
        raise InvalidInput("--alpha 0 uses labels only, but the pairs have none (or --no-labels was given)")
    sampling = parse_enum(Sampling, cfg.augment, "--augment")
    if sampling is not Sampling.NONE and cfg.alpha == 0.0:
        raise InvalidInput("--augment adds pairs only the teacher labels; it needs --alpha > 0")
    metric = _metric(cfg, train.scores if cfg.use_labels else None)
    dev = _load_eval(cfg.dev) if cfg.dev else None
    test = _load_eval(cfg.test) if cfg.test else None
    evals = {name: _load_eval(name) for name in cfg.eval_sets}
    held = {**({cfg.dev: dev} if dev else {}), **({cfg.test: test} if test else {}), **evals}
    unl, unl_info = _unlabeled(cfg, train, held)
    self_teacher = cfg.teacher == STUDENT_TEACHER
    teacher_dir = cfg.student if self_teacher else resolve_cross_dir(cfg.teacher)
    state = RunState(out, cfg.to_dict(), resume=resume, kind="dse")
    write_json_atomic(out / "config.json", {"kind": "dse", **cfg.to_dict()})
    report: dict = {
        "kind": "dse",
        "code": state.code,
        "config": cfg.to_dict(),
        "train_pairs": len(train),
        "metric": metric.value,
        "selected_on": cfg.dev,  # picks the checkpoint and decides start vs trained: its row is optimistic
        "reported_on": [s for s in [cfg.test, *cfg.eval_sets] if s],
    }
    if not self_teacher:
        t_sel = _teacher_selected_on(teacher_dir)
        report["teacher_selected_on"] = t_sel
        if t_sel and t_sel in report["reported_on"]:
            log.warning("the teacher was selected on %s, a reported set: its row there is optimistic", t_sel)
    if unl_info:
        report["unlabeled"] = unl_info
    report["rows"] = {}

    start_encoder = functools.cache(
        lambda: BiEncoder.load(cfg.student, device=dev_name, backend="torch")
    )  # read-only uses

    # 0. silver pairs (teacher-labelled only): --unlabeled, and optionally built from the training sentences
    aug = _augment_step(cfg, sampling, train, dev, test, state, out, start_encoder)
    if len(aug):
        report["augment"] = state.info("augment")
    silver = PairSet("silver", unl.s1 + aug.s1, unl.s2 + aug.s2)
    report["overlap"] = overlap_report(train, silver, held)
    fit_pairs = train.pairs + silver.pairs

    # 1. teacher scores (cached by pair text) and the teacher's own row. The teacher as it is now
    # identifies the cache: a teacher retrained in place since the run started is refused on --resume.
    need_teacher = cfg.alpha > 0 or bool(held)
    cache_path = Path(cfg.teacher_cache) if cfg.teacher_cache else out / "teacher_cache.npz"
    meta = None
    if self_teacher:
        teacher = start_encoder
        fp = lambda: f"student-start:{start_encoder().fingerprint}"  # noqa: E731
    else:
        teacher = functools.cache(lambda: CrossEncoder.load(teacher_dir, device=dev_name, backend="torch"))
        fp = lambda: teacher().fingerprint  # noqa: E731
    if need_teacher:
        meta = {
            "fingerprint": fp(),
            "max_length": teacher().max_length if not self_teacher else None,
            "symmetric": cfg.teacher_symmetric,
        }
        before = state.info("teacher").get("meta")
        if state.is_done("teacher") and before != meta:
            raise FailedPrecondition(
                f"{out}: --resume with another teacher than the run started with ({before} -> {meta}); "
                "the cached teacher scores would be stale: start a new --out directory"
            )
    if need_teacher and not state.is_done("teacher"):
        cache = TeacherCache(cache_path, meta)
        if self_teacher:
            fn = lambda ps: student_logits(start_encoder(), ps)  # noqa: E731
        else:
            fn = lambda ps: teacher_logits(teacher(), ps, cfg.teacher_symmetric, progress)  # noqa: E731
        if pair_scorer is not None and not self_teacher:  # the same logits, scored elsewhere (e.g. Ray)
            kw = {"kind": "cross", "activation": "raw", "symmetric": cfg.teacher_symmetric}
            fn = lambda ps: pair_scorer(str(teacher_dir), ps, **kw)  # noqa: E731
        t0 = time.time()
        t_fit, n_new = cache.lookup(fit_pairs, fn) if cfg.alpha > 0 else (None, 0)
        row = _rows_eval(lambda ps: sigmoid(cache.lookup(ps.pairs, fn)[0]), dev, test, evals, metric)
        cache_info = {"pairs_scored": n_new, "seconds": round(time.time() - t0, 1)}
        if t_fit is not None and len(silver):
            sv = sigmoid(t_fit[len(train) :])
            cache_info["silver_teacher_score"] = {
                "mean": round(float(sv.mean()), 4),
                "std": round(float(sv.std()), 4),
                "p10": round(float(np.percentile(sv, 10)), 4),
                "p90": round(float(np.percentile(sv, 90)), 4),
            }
        state.mark("teacher", row=row, cache=cache_info, meta=meta)
    if need_teacher:
        report["rows"]["teacher"] = state.info("teacher").get("row")
        report["teacher_cache"] = state.info("teacher").get("cache")

    # 2. the student's starting point (cosine of the undistilled model)
    if not state.is_done("student-start"):
        # the row depends on the student and the sets only: runs that share a teacher cache share it
        side = cache_path.with_suffix(".start.json")
        key = json.dumps([start_encoder().fingerprint, metric.value, _sets_digest(dev, test, evals)])
        rows = json.loads(side.read_text()) if side.exists() else {}
        if key not in rows:
            start = DSEStudent(start_encoder(), None)
            rows[key] = _rows_eval(lambda ps: start.score(ps.s1, ps.s2), dev, test, evals, metric)
            write_json_atomic(side, rows)
        state.mark("student-start", row=rows[key])
    report["rows"]["student_start"] = state.info("student-start").get("row")

    # 3. the fit
    student_dir = out / "student"
    if not state.is_done("fit"):
        t_logit = None
        if cfg.alpha > 0:
            cache = TeacherCache(cache_path, meta)  # empty unless made by this teacher

            def refuse(_pairs):
                raise FailedPrecondition(
                    f"{cache_path}: lost pairs or made by another teacher since the teacher step; "
                    "start a new --out directory"
                )

            t_logit, _ = cache.lookup(fit_pairs, refuse)
        enc = BiEncoder.load(cfg.student, device=dev_name, backend="torch")
        torch.manual_seed(cfg.fit.seed)  # the new head's weights: the same for the same --seed
        head = MLPHead(enc.dim, cfg.mlp_hidden).to(dev_name) if head_kind is DSEHead.MLP else None
        fit_set, fit_y = train, y
        if len(silver):  # silver rows carry no gold label (NaN): teacher term only
            fit_set = PairSet(f"{train.name}+silver", train.s1 + silver.s1, train.s2 + silver.s2)
            fit_y = np.concatenate(
                [
                    y if y is not None else np.full(len(train), np.nan, np.float32),
                    np.full(len(silver), np.nan, np.float32),
                ]
            )
        res = fit_dse(enc, head, fit_set, fit_y, t_logit, cfg, dev, metric, dev_name, progress)
        save_dir_atomic(student_dir, lambda d: _save_student(enc, head, d))
        state.mark("fit", fit=res.as_dict())
    report["fit"] = state.info("fit").get("fit")
    report.update(outcome(report["fit"].get("start_score"), report["fit"].get("trained_score")))

    if not state.is_done("student-eval"):
        st = DSEStudent.load(student_dir, device=dev_name)
        state.mark(
            "student-eval", row=_rows_eval(lambda ps: st.score(ps.s1, ps.s2), dev, test, evals, metric)
        )
    report["rows"]["student"] = state.info("student-eval").get("row")
    report["wall_s"] = round(state.elapsed(), 1)
    write_json_atomic(out / "report.json", report)
    return report


def _sets_digest(dev: PairSet | None, test: PairSet | None, evals: dict[str, PairSet]) -> str:
    """A hash of the evaluation sets' content (pairs and scores, in their roles)."""
    import hashlib

    h = hashlib.sha256()
    for role, ps in [("dev", dev), ("test", test), *evals.items()]:
        if ps is None:
            continue
        h.update(json.dumps([role, ps.s1, ps.s2, [float(x) for x in ps.scores]]).encode("utf-8"))
    return h.hexdigest()[:32]


def student_logits(enc: BiEncoder, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The start student's cosines as logits (the no-teacher control's "teacher"; sigmoid gives them back)."""
    cos = enc.similarity([a for a, _ in pairs], [b for _, b in pairs], batch_size=64)
    p = np.clip(np.asarray(cos, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype(np.float32)


def _augment_step(cfg, sampling, train, dev, test, state, out: Path, start_encoder) -> PairSet:
    """Build (or, on resume, reload) the silver pairs; empty when --augment none."""
    path = out / "augment_pairs.json"
    if sampling is Sampling.NONE:
        return PairSet("none", [], [])
    if state.is_done("augment") and path.exists():
        d = json.loads(path.read_text(encoding="utf-8"))
        return PairSet(d["name"], d["s1"], d["s2"])
    t0 = time.time()
    encode = None
    if sampling is Sampling.KNN:
        encode = lambda texts: start_encoder().encode(texts, batch_size=64, normalize=True).vectors  # noqa: E731
    exclude = [*(dev.pairs if dev is not None else []), *(test.pairs if test is not None else [])]
    aug = augment_pairs(train, sampling, cfg.augment_k, encode=encode, exclude=exclude, seed=cfg.fit.seed)
    write_json_atomic(path, {"name": aug.name, "s1": aug.s1, "s2": aug.s2})
    log.info(
        "augment: %d %s pairs (k=%d) from %s's sentences", len(aug), sampling.value, cfg.augment_k, train.name
    )
    state.mark(
        "augment",
        sampling=sampling.value,
        k=cfg.augment_k,
        pairs=len(aug),
        seconds=round(time.time() - t0, 1),
    )
    return aug


def _save_student(enc: BiEncoder, head: MLPHead | None, d: Path) -> None:
    enc.save(d)
    if head is not None:
        head.cpu().save(d / HEAD_DIR)


def fit_dse(
    enc: BiEncoder,
    head: MLPHead | None,
    train: PairSet,
    y: np.ndarray | None,
    t_logit: np.ndarray | None,
    cfg: DSEConfig,
    dev: PairSet | None,
    metric: PairMetric,
    device: str,
    progress: bool,
):
    """Train the student (and head) in place; best dev checkpoint restored."""
    st_model = enc.st_model
    model: nn.Module = st_model if head is None else nn.ModuleDict({"encoder": st_model, "head": head})
    pe = PairEmbedder(st_model, train.s1, train.s2, cfg.fit.max_length, device)
    tt = torch.as_tensor(t_logit) if t_logit is not None else None
    gold_all = torch.as_tensor(y) if y is not None else None  # NaN: a silver (teacher-only) row
    criterion = DSELoss(
        cfg.alpha if y is not None else 1.0,
        head=DSEHead.COSINE if head is None else DSEHead.MLP,
        silver_weight=cfg.silver_weight,
    )

    def loss(idx: np.ndarray) -> torch.Tensor:
        u, v = pe.pair_embeddings(idx)  # (B, D) each
        s = F.cosine_similarity(u, v, dim=-1) if head is None else head(u, v)  # (B,) cosine or logit
        return criterion(
            s,
            gold_all[idx] if gold_all is not None else None,
            tt[idx] if tt is not None and criterion.alpha > 0 else None,
        )

    evaluator = None
    if dev is not None:

        def evaluator() -> float:
            s = DSEStudent(enc, head).score(dev.s1, dev.s2)
            return pair_metric(s, dev.scores, metric)

    return run_fit(
        model,
        len(train),
        loss,
        cfg.fit,
        evaluator=evaluator,
        lengths=pe.lengths,
        desc="dse student",
        progress=progress,
        keep_start=cfg.keep_start,
    )


__all__ = ["DSEConfig", "DSEStudent", "MLPHead", "TeacherCache", "run_dse"]
