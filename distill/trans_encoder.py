"""Trans-Encoder: self- and mutual-distillation between bi- and cross-encoders (Liu et al., ICLR 2022).

Faithful by default to the official code (amzn/trans-encoder ``src/self_distill.py``,
``src/mutual_distill_parallel.py``; see METHODS.md section 1); every deviation is an
explicit :class:`TransEncoderConfig` field. One cycle, for every model i of ``models``:

1. bi -> labels: y = cos(f_i(a), f_i(b)) for every unlabeled pair; several models are
   combined (:class:`~pairsmith.distill.labels.Combine`, official: plain mean); then the
   range step (:class:`~pairsmith.distill.labels.LabelRange`, pairsmith default ``clamp``
   to [0, 1]; the official code feeds raw cosines: ``raw``).
2. cross fit: a cross-encoder started afresh (``warm_start=False``, the paper's choice)
   from ``cross_init[i]`` (default: model i's own transformer; the paper uses a vanilla
   PLM) is trained with BCE on (a, b, y) and (b, a, y), best dev checkpoint kept.
3. cross -> labels: sigmoid(c_i(a, b)) (one order, as the paper; ``symmetric_labels``
   averages both), combined across models.
4. bi fit: the bi-encoder restarts from its initial weights and is trained with MSE
   between its cosine and those labels, best dev checkpoint kept.
5. evaluation of every new model on the dev set and the ``eval_sets``.

After the last cycle the best bi- and cross-encoder per model (dev score across the
trained cycles, as the official ``argmax``) are copied to ``best-bi``/``best-cross``
(``best-bi-m{i}``/``best-cross-m{i}`` for several models). Every step is recorded in
``state.json``; ``--resume`` continues from the last finished step.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pairsmith.distill.data import STS7, PairSet, load_sts_set
from pairsmith.distill.fit_config import BI_DEFAULT, CROSS_DEFAULT, DEFAULT_SEED, FitConfig
from pairsmith.distill.labels import (
    Combine,
    LabelRange,
    apply_range,
    combine,
    label_stats,
    log_stats,
)
from pairsmith.distill.pairsets import drop_pairs_in, load_pairs, overlap, subsample
from pairsmith.distill.runstate import (
    RunState,
    save_dir_atomic,
    save_npy_atomic,
    save_npz_atomic,
    write_json_atomic,
)
from pairsmith.distill.selection import (
    DROP_MARGIN,
    LABEL_STD_FLOOR,
    RANK_FLOOR,
    Collapse,
    CollapseGuard,
    PairMetric,
    bi_scores,
    cross_scores,
    make_evaluator,
    outcome,
)
from pairsmith.distill.train import fit_bi_encoder, fit_cross_encoder
from pairsmith.encoders import BiEncoder, CrossEncoder
from pairsmith.errors import InvalidInput, parse_enum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransEncoderConfig:
    pairs: str  # unlabeled pairs: file(s) or set names / pools (sts-all, sts-inductive)
    models: tuple[str, ...] = ("default",)  # one: self-distillation; several: mutual
    pooling: str | None = None  # override the starting bi-encoders' pooling (e.g. cls)
    cross_init: tuple[str, ...] | None = None  # per model; default: the model's own transformer
    cycles: int = 3
    dev: str | None = "stsb-dev"  # labeled set for checkpoint and cycle selection
    eval_sets: tuple[str, ...] = tuple(STS7)  # reported per cycle, never used for selection
    max_pairs: int | None = None  # subsample the unlabeled pool (CPU budgets)
    exclude_eval_pairs: bool = False  # drop pool pairs found in dev/eval sets (strictly inductive)
    label_range: str = LabelRange.CLAMP.value  # bi -> cross labels: clamp | raw (official) | minmax
    combine: str = Combine.MEAN.value  # mutual: mean (official) | rank | zscore
    cross_both_orders: bool = True  # train the cross-encoder on (a, b) and (b, a) (official)
    symmetric_labels: bool = False  # cross -> bi labels average both orders (official: one order)
    symmetric_eval: bool = False  # cross-encoder dev/eval scores average both orders
    warm_start: bool = False  # start each cycle's fits from the previous cycle (official: fresh)
    keep_start: bool = (
        True  # the starting bi-encoder is a candidate for best-bi (official: trained cycles only)
    )
    collapse_guard: bool = True  # stop a cycle on collapsed pseudo-labels or a fit far below its start
    label_std_floor: float = LABEL_STD_FLOOR
    rank_floor: float = RANK_FLOOR
    drop_margin: float = DROP_MARGIN
    cross: FitConfig = CROSS_DEFAULT
    bi: FitConfig = BI_DEFAULT
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if not self.models:
            raise InvalidInput("--models: give at least one model")
        if self.cycles < 1:
            raise InvalidInput(f"--cycles: must be >= 1, got {self.cycles}")
        if self.cross_init is not None and len(self.cross_init) != len(self.models):
            raise InvalidInput(f"--cross-init: {len(self.cross_init)} given for {len(self.models)} models")
        parse_enum(LabelRange, self.label_range, "--label-range")
        parse_enum(Combine, self.combine, "--combine")
        self.guard()  # validates the floors

    def guard(self) -> CollapseGuard:
        return CollapseGuard(self.label_std_floor, self.rank_floor, self.drop_margin, self.collapse_guard)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransEncoderConfig:
        d = dict(d)
        d.pop("kind", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidInput(f"trans-encoder config: unknown keys {unknown}")
        for k in ("cross", "bi"):
            if isinstance(d.get(k), dict):
                d[k] = FitConfig.from_dict(d[k])
        for k in ("models", "cross_init", "eval_sets"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class _Ctx:
    cfg: TransEncoderConfig
    out: Path
    state: RunState
    pool: PairSet
    dev: PairSet | None
    devices: list[str]
    progress: bool
    parallel: bool = False  # fits of different models run at once (one device each)
    tags: list[str] = field(default_factory=list)
    pair_scorer: Callable | None = None  # pseudo-labels scored elsewhere (Ray); None: in this process
    selection_key: str | None = None  # the dev set's name among the eval sets' scores

    def heldout(self, scores: dict[str, float]) -> dict[str, float]:
        """``scores`` plus ``avg_heldout``: the mean over the eval sets without the selection (dev) set.

        The dev set picks every checkpoint and the best cycle, so an average that includes it is
        optimistic; ``avg_heldout`` is the figure to compare runs by.
        """
        rest = [v for k, v in scores.items() if k not in ("avg", "avg_heldout", self.selection_key)]
        out = dict(scores)
        if rest:
            out["avg_heldout"] = round(float(np.mean(rest)), 3)
        return out

    def for_models(self, fn: Callable[[int], None]) -> None:
        """``fn(i)`` for every model: in parallel threads when each model has its own device, else in order."""
        n = len(self.cfg.models)
        if not self.parallel or n < 2:
            for i in range(n):
                fn(i)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="trans-encoder") as pool:
            for fut in [pool.submit(fn, i) for i in range(n)]:
                fut.result()  # re-raises the first failure; finished fits stay recorded for --resume


def _devices(device: str | None, n_models: int) -> list[str]:
    """One device per model where several GPUs exist, else all on one."""
    from pairsmith.encoders.runtime import resolve_device

    dev = resolve_device(device)
    if dev == "cuda":
        import torch

        n = torch.cuda.device_count()
        return [f"cuda:{i % n}" for i in range(n_models)]
    return [dev] * n_models


def run_trans_encoder(
    cfg: TransEncoderConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = "auto",
    progress=True,
    parallel: bool | None = None,
    pair_scorer=None,  # fn(model_dir, pairs, kind=, symmetric=, pooling=) -> scores; e.g. Ray (--engine ray)
) -> dict:
    """Run (or resume) a Trans-Encoder job; returns the report (also written to ``out/report.json``).

    ``parallel`` (default: when every model got its own device, i.e. several GPUs) trains the
    models' cross- and bi-encoder fits of one cycle at the same time, one thread per model.
    """
    out = Path(out)
    pool = load_pairs(cfg.pairs)
    if cfg.exclude_eval_pairs:
        pool = drop_pairs_in(pool, [*cfg.eval_sets, *([cfg.dev] if cfg.dev else [])])
    pool = subsample(pool, cfg.max_pairs, cfg.seed)
    dev = load_pairs(cfg.dev, labeled=True, dedup=False, for_training=False) if cfg.dev else None
    # Inputs are valid: only now claim the output directory.
    state = RunState(out, cfg.to_dict(), resume=resume, kind="trans-encoder")
    write_json_atomic(out / "config.json", {"kind": "trans-encoder", **cfg.to_dict()})
    n = len(cfg.models)
    devices = _devices(device, n)
    if parallel is None:
        parallel = n > 1 and len(set(devices)) == n and all(d.startswith("cuda") for d in devices)
    ctx = _Ctx(cfg, out, state, pool, dev, devices, progress, parallel=parallel, pair_scorer=pair_scorer)
    ctx.tags = [f"m{i}" for i in range(n)]
    if cfg.dev:
        ctx.selection_key = load_sts_set(cfg.dev).name  # how eval_sts names it among the eval sets
    log.info(
        "trans-encoder: %d unlabeled pairs, %d model(s) on %s%s, %d cycle(s)",
        len(pool),
        n,
        ", ".join(devices),
        " (fits in parallel)" if parallel else "",
        cfg.cycles,
    )

    for i in range(n):  # cycle 0: the starting bi-encoders
        _eval_step(ctx, 0, "bi", i, lambda i=i: _start_bi(ctx, i))
    _ensemble_step(ctx, 0, "bi")
    for c in range(1, cfg.cycles + 1):
        if _collapsed(ctx) is not None:
            break  # a collapsed cycle ends the run: the next one would start from the same models
        _cycle(ctx, c)
    _finalise(ctx)
    report = build_report(ctx)
    write_json_atomic(out / "report.json", report)
    try:
        plot_report(report, out / "dev_scores.png")
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished run
        log.warning("plot failed: %s", exc)
    return report


# --------------------------------------------------------------------------- models


def _start_bi(ctx: _Ctx, i: int) -> BiEncoder:
    return BiEncoder.load(ctx.cfg.models[i], pooling=ctx.cfg.pooling, device=ctx.devices[i], backend="torch")


def _cdir(ctx: _Ctx, c: int) -> Path:
    return ctx.out / f"cycle{c}"


def _bi_at(ctx: _Ctx, c: int, i: int) -> BiEncoder:
    """The bi-encoder after cycle ``c`` (c = 0: the starting model)."""
    if c == 0:
        return _start_bi(ctx, i)
    return BiEncoder.load(str(_cdir(ctx, c) / f"bi-{ctx.tags[i]}"), device=ctx.devices[i], backend="torch")


def _new_cross(ctx: _Ctx, c: int, i: int) -> CrossEncoder:
    cfg = ctx.cfg
    if cfg.warm_start and c > 1:
        ce = CrossEncoder.load(
            str(_cdir(ctx, c - 1) / f"cross-{ctx.tags[i]}"), device=ctx.devices[i], backend="torch"
        )
        ce.st_model.max_seq_length = cfg.cross.max_length
        return ce
    init = cfg.cross_init[i] if cfg.cross_init else cfg.models[i]
    return CrossEncoder.from_backbone(
        init, device=ctx.devices[i], max_length=cfg.cross.max_length, seed=cfg.seed
    )


def _new_bi(ctx: _Ctx, c: int, i: int) -> BiEncoder:
    if ctx.cfg.warm_start and c > 1:
        return _bi_at(ctx, c - 1, i)
    return _start_bi(ctx, i)


# --------------------------------------------------------------------------- one cycle


def _cycle(ctx: _Ctx, c: int) -> None:
    cfg, st, pool = ctx.cfg, ctx.state, ctx.pool
    cdir = _cdir(ctx, c)
    t0 = time.time()
    if st.is_done(f"c{c}/collapsed"):
        return
    # 1. bi -> labels
    if not st.is_done(f"c{c}/labels-bi"):
        raw = []
        for i in range(len(cfg.models)):
            if ctx.pair_scorer is not None:  # same cosines; the start model keeps its pooling override
                ref = cfg.models[i] if c == 1 else str(_cdir(ctx, c - 1) / f"bi-{ctx.tags[i]}")
                s = ctx.pair_scorer(ref, pool.pairs, kind="bi", pooling=cfg.pooling if c == 1 else None)
            else:
                enc = _bi_at(ctx, c - 1, i)
                s = bi_scores(enc.st_model, enc.source, pool.s1, pool.s2)
            save_npy_atomic(cdir / f"scores-bi-{ctx.tags[i]}.npy", s)
            raw.append(s)
        merged = combine(raw, parse_enum(Combine, cfg.combine, "combine"))
        y = apply_range(merged, parse_enum(LabelRange, cfg.label_range, "label_range"))
        save_npy_atomic(cdir / "labels-bi.npy", y)
        stats = {
            "per_model": {ctx.tags[i]: label_stats(r) for i, r in enumerate(raw)},
            "combined": label_stats(merged),
            "targets": label_stats(y),
        }
        log_stats(f"cycle {c} bi labels (before {cfg.label_range})", stats["combined"])
        st.mark(f"c{c}/labels-bi", stats=stats)
        prev = _cdir(ctx, c - 1) / "labels-cross.npy"  # what these bi-encoders were fitted to
        other = np.load(prev) if c > 1 and prev.exists() else None
        if _guard_labels(ctx, c, "bi", raw, other):
            return
    y_bi = np.load(cdir / "labels-bi.npy")
    # 2. cross fits
    ctx.for_models(lambda i: _fit(ctx, c, i, "cross", y_bi))
    for i in range(len(cfg.models)):
        _eval_step(ctx, c, "cross", i, lambda i=i: _load_cross(ctx, c, i))
    _ensemble_step(ctx, c, "cross")
    # 3. cross -> labels
    if not st.is_done(f"c{c}/labels-cross"):
        raw = []
        for i in range(len(cfg.models)):
            if ctx.pair_scorer is not None:
                ref = str(_cdir(ctx, c) / f"cross-{ctx.tags[i]}")
                s = ctx.pair_scorer(ref, pool.pairs, kind="cross", symmetric=cfg.symmetric_labels)
            else:
                ce = _load_cross(ctx, c, i)
                s = cross_scores(ce.st_model, ce.source, pool.s1, pool.s2, symmetric=cfg.symmetric_labels)
            save_npy_atomic(cdir / f"scores-cross-{ctx.tags[i]}.npy", s)
            raw.append(s)
        y = combine(raw, parse_enum(Combine, cfg.combine, "combine"))
        save_npy_atomic(cdir / "labels-cross.npy", y)
        stats = {
            "per_model": {ctx.tags[i]: label_stats(r) for i, r in enumerate(raw)},
            "targets": label_stats(y),
        }
        log_stats(f"cycle {c} cross labels", stats["targets"])
        st.mark(f"c{c}/labels-cross", stats=stats)
        if _guard_labels(ctx, c, "cross", raw, y_bi):
            return
    y_cross = np.load(cdir / "labels-cross.npy")
    # 4. bi fits
    ctx.for_models(lambda i: _fit(ctx, c, i, "bi", y_cross))
    guard = cfg.guard()
    for i in range(len(cfg.models)):
        fit = st.info(f"c{c}/bi/{i}").get("fit", {})
        hit = guard.check_fit(f"cycle {c} bi {ctx.tags[i]}", fit.get("start_score"), fit.get("trained_score"))
        if hit is not None:
            _mark_collapse(ctx, c, hit)
            return
    for i in range(len(cfg.models)):
        _eval_step(ctx, c, "bi", i, lambda i=i: _bi_at(ctx, c, i))
    _ensemble_step(ctx, c, "bi")
    if not st.is_done(f"c{c}/done"):
        st.mark(f"c{c}/done", cycle_s=round(time.time() - t0, 1))


def _guard_labels(ctx: _Ctx, c: int, kind: str, raw: list[np.ndarray], other: np.ndarray | None) -> bool:
    """Check each model's pseudo-labels; on collapse, record it and say so (True: stop the cycle)."""
    guard = ctx.cfg.guard()
    for i, scores in enumerate(raw):
        hit = guard.check_labels(f"cycle {c} {kind}-encoder {ctx.tags[i]} labels", scores, other)
        if hit is not None:
            _mark_collapse(ctx, c, hit)
            return True
    return False


def _mark_collapse(ctx: _Ctx, c: int, hit: Collapse) -> None:
    log.warning("%s", hit.message())
    ctx.state.mark(f"c{c}/collapsed", **hit.as_dict())


def _collapsed(ctx: _Ctx) -> dict | None:
    """The first recorded collapse, or None."""
    for c in range(1, ctx.cfg.cycles + 1):
        if ctx.state.is_done(f"c{c}/collapsed"):
            return {"cycle": c, **ctx.state.info(f"c{c}/collapsed")}
    return None


def _fit(ctx: _Ctx, c: int, i: int, kind: str, targets: np.ndarray) -> None:
    """One resumable fit of model ``i`` in cycle ``c``: ``kind`` "cross" (BCE on bi labels) or "bi" (MSE on cross labels)."""
    cfg, pool = ctx.cfg, ctx.pool
    step = f"c{c}/{kind}/{i}"
    if ctx.state.is_done(step):
        return
    if kind == "cross":
        model = _new_cross(ctx, c, i)
        fit, fit_cfg, extra = fit_cross_encoder, cfg.cross, {"both_orders": cfg.cross_both_orders}
    else:
        model = _new_bi(ctx, c, i)
        fit, fit_cfg, extra = fit_bi_encoder, cfg.bi, {}
    ev = None
    if ctx.dev is not None:
        sym = {"symmetric": cfg.symmetric_eval} if kind == "cross" else {}
        ev = make_evaluator(kind, model.st_model, model.source, ctx.dev, PairMetric.SPEARMAN, **sym)
    res = fit(
        model.st_model,
        pool.s1,
        pool.s2,
        targets,
        dataclasses.replace(fit_cfg, seed=fit_cfg.seed + c),
        device=ctx.devices[i],
        evaluator=ev,
        desc=f"cycle {c} {kind} {ctx.tags[i]}",
        progress=ctx.progress,
        keep_start=cfg.keep_start,
        **extra,
    )
    save_dir_atomic(_cdir(ctx, c) / f"{kind}-{ctx.tags[i]}", lambda d: model.save(d))
    ctx.state.mark(step, fit=res.as_dict())


def _load_cross(ctx: _Ctx, c: int, i: int) -> CrossEncoder:
    return CrossEncoder.load(
        str(_cdir(ctx, c) / f"cross-{ctx.tags[i]}"), device=ctx.devices[i], backend="torch"
    )


def _eval_step(ctx: _Ctx, c: int, kind: str, i: int, load) -> None:
    """Dev score and eval-set scores of one model after cycle ``c`` (a resumable step)."""
    from pairsmith.distill.evaluation import bi_scorer, cross_scorer, eval_sts

    step = f"c{c}/eval/{kind}/{i}"
    if ctx.state.is_done(step):
        return
    model = load()
    base = bi_scorer(model) if kind == "bi" else cross_scorer(model, symmetric=ctx.cfg.symmetric_eval)
    calls: list[np.ndarray] = []

    def scorer(a: list[str], b: list[str]) -> np.ndarray:  # keeps every prediction for the ensemble rows
        calls.append(np.asarray(base(a, b), dtype=np.float32))
        return calls[-1]

    res: dict = {}
    preds: dict[str, np.ndarray] = {}
    if ctx.dev is not None:
        from pairsmith.distill import metrics

        res["dev"] = round(metrics.spearman(scorer(ctx.dev.s1, ctx.dev.s2), ctx.dev.scores), 3)
        preds[_DEV_KEY] = calls.pop()
    if ctx.cfg.eval_sets:
        scores = eval_sts(scorer, list(ctx.cfg.eval_sets))
        res["eval"] = ctx.heldout({k: round(v, 3) for k, v in scores.items()})
        preds.update((f"set{j}", p) for j, p in enumerate(calls))  # one call per eval set, in order
    if len(ctx.tags) > 1:
        save_npz_atomic(_cdir(ctx, c) / f"preds-{kind}-{ctx.tags[i]}.npz", **preds)
    log.info("cycle %d %s %s: %s", c, kind, ctx.tags[i], res)
    ctx.state.mark(step, **res)


_DEV_KEY = "__dev__"


def _ensemble_step(ctx: _Ctx, c: int, kind: str) -> None:
    """Mutual runs: the models' averaged predictions scored like one model (the official *Ensemble evaluators)."""
    from pairsmith.distill import metrics

    step = f"c{c}/eval/{kind}/ensemble"
    if len(ctx.tags) < 2 or ctx.state.is_done(step):
        return
    files = [_cdir(ctx, c) / f"preds-{kind}-{t}.npz" for t in ctx.tags]
    if not all(f.exists() for f in files):
        log.warning(
            "cycle %d %s ensemble: predictions missing (run started by an older version); skipped", c, kind
        )
        return
    loaded = [dict(np.load(f, allow_pickle=False)) for f in files]
    mean = {k: np.mean([p[k] for p in loaded], axis=0) for k in loaded[0]}
    res: dict = {}
    if ctx.dev is not None and _DEV_KEY in mean:
        res["dev"] = round(metrics.spearman(mean.pop(_DEV_KEY), ctx.dev.scores), 3)
    if mean:  # eval_sts scores the stored predictions, replayed in its set order
        from pairsmith.distill.evaluation import eval_sts

        replay = iter(mean[f"set{j}"] for j in range(len(ctx.cfg.eval_sets)))
        ev = eval_sts(lambda _a, _b: next(replay), list(ctx.cfg.eval_sets))
        res["eval"] = ctx.heldout({k: round(v, 3) for k, v in ev.items()})
    log.info("cycle %d %s ensemble: %s", c, kind, res)
    ctx.state.mark(step, **res)


def _finalise(ctx: _Ctx) -> None:
    """Copy the best bi- and cross-encoder of each model by dev score.

    Bi-encoder candidates: the starting model (cycle 0, unless ``keep_start`` is off) and every
    trained cycle; the start wins a tie and is exported as it was loaded. Cross-encoder candidates:
    the trained cycles (there is no starting cross-encoder). A cycle stopped by the collapse guard
    offers only the models it finished and evaluated.
    """
    if ctx.state.info("final").get("cycles") == ctx.cfg.cycles:
        return  # done for this number of cycles (a resume with more cycles selects again)
    best: dict = {}
    first = {"bi": 0 if ctx.cfg.keep_start else 1, "cross": 1}
    for i, tag in enumerate(ctx.tags):
        for kind in ("bi", "cross"):
            scores = {
                c: ctx.state.info(f"c{c}/eval/{kind}/{i}").get("dev")
                for c in range(first[kind], ctx.cfg.cycles + 1)
            }
            scored = {c: s for c, s in scores.items() if s is not None}
            done = [c for c in range(1, ctx.cfg.cycles + 1) if (_cdir(ctx, c) / f"{kind}-{tag}").is_dir()]
            if not scored and not done:
                continue  # e.g. the guard stopped cycle 1 before any cross-encoder was trained
            c_best = max(scored, key=lambda c: (scored[c], -c)) if scored else done[-1]  # ties: earliest
            name = f"best-{kind}" + (f"-{tag}" if len(ctx.tags) > 1 else "")
            if kind == "bi" and c_best == 0:
                save_dir_atomic(ctx.out / name, lambda d, i=i: _start_bi(ctx, i).save(d))
            else:
                src = _cdir(ctx, c_best) / f"{kind}-{tag}"
                save_dir_atomic(ctx.out / name, lambda d, src=src: _copy_tree(src, d))
            best[name] = {"cycle": c_best, "dev": scored.get(c_best)}
            if kind == "bi":
                trained = [s for c, s in scored.items() if c > 0]
                for c in range(1, ctx.cfg.cycles + 1):  # a fit the guard stopped before its eval step
                    fit = ctx.state.info(f"c{c}/bi/{i}").get("fit") or {}
                    if c not in scored and fit.get("trained_score") is not None:
                        trained.append(fit["trained_score"])
                start = ctx.state.info(f"c0/eval/bi/{i}").get("dev")
                best[name].update(outcome(start, max(trained) if trained else None))
    ctx.state.mark("final", best=best, cycles=ctx.cfg.cycles)


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


# --------------------------------------------------------------------------- report


def build_report(ctx: _Ctx) -> dict:
    cfg, st = ctx.cfg, ctx.state
    cycles = []
    for c in range(0, cfg.cycles + 1):
        row: dict = {"cycle": c, "bi": {}, "cross": {}}
        for i, tag in enumerate(ctx.tags):
            for kind in ("bi", "cross"):
                info = st.info(f"c{c}/eval/{kind}/{i}")
                if info:
                    row[kind][tag] = {k: info[k] for k in ("dev", "eval") if k in info}
                fit = st.info(f"c{c}/{kind}/{i}").get("fit")
                if fit:
                    row[kind].setdefault(tag, {})["fit"] = fit
        for kind in ("bi", "cross"):
            ens = st.info(f"c{c}/eval/{kind}/ensemble")
            if ens:
                row[kind]["ensemble"] = {k: ens[k] for k in ("dev", "eval") if k in ens}
        if c > 0:
            row["labels_bi"] = st.info(f"c{c}/labels-bi").get("stats")
            row["labels_cross"] = st.info(f"c{c}/labels-cross").get("stats")
            row["cycle_s"] = st.info(f"c{c}/done").get("cycle_s")
        cycles.append(row)
    ov = overlap(ctx.pool, [*cfg.eval_sets, *([cfg.dev] if cfg.dev else [])])
    best = st.info("final").get("best") or {}
    first_bi = best.get("best-bi", best.get(f"best-bi-{ctx.tags[0]}", {}))
    head = {k: first_bi.get(k) for k in ("start_score", "best_score", "trained_score", "improved")}
    return {
        "kind": "trans-encoder",
        "code": st.code,
        "mode": "self" if len(cfg.models) == 1 else "mutual",
        # the set that selected every checkpoint and cycle; eval "avg_heldout" leaves it out
        "selection_set": ctx.selection_key,
        "config": cfg.to_dict(),
        "models": dict(zip(ctx.tags, cfg.models, strict=True)),
        "unlabeled_pairs": len(ctx.pool),
        "evaluation_setting": ov.as_dict(),
        "devices": ctx.devices,
        "cycles": cycles,
        "best": best,
        **head,
        "collapsed": _collapsed(ctx),
        "wall_s": round(st.elapsed(), 1),
    }


def plot_report(report: dict, path: Path) -> None:
    """Dev score per cycle for every bi- and cross-encoder (cycle 0 = the starting bi-encoder)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("bi", "o-"), ("cross", "s--")):
        for tag in [*report["models"], "ensemble"]:
            xs, ys = [], []
            for row in report["cycles"]:
                d = row[kind].get(tag, {}).get("dev")
                if d is not None:
                    xs.append(row["cycle"])
                    ys.append(d)
            if xs:
                ax.plot(xs, ys, style, label=f"{kind} {tag}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cycle")
    ax.set_ylabel(f"dev Spearman x100 ({report['config'].get('dev')})")
    ax.set_title(f"Trans-Encoder ({report['mode']}, {report['evaluation_setting']['setting']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def load_config(path: str | Path) -> TransEncoderConfig:
    import json

    return TransEncoderConfig.from_dict(json.loads(Path(path).read_text()))


__all__ = ["TransEncoderConfig", "run_trans_encoder"]
