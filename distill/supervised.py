"""Supervised cross-encoder training (``pairsmith train cross-encoder``): DSE teachers and baselines.

Gold scores are mapped to [0, 1] (``score_range``: STS 0-5, SICK 1-5, MRPC
0/1) and the cross-encoder is trained with BCE-with-logits, on both pair
orders by default, selecting the best dev checkpoint. Output directory::

    out/model/       the cross-encoder (sentence-transformers CrossEncoder directory)
    out/config.json  this run's TrainCrossConfig
    out/report.json  data sizes, per-evaluation dev scores, final dev (and test) metrics, wall time,
                     start_score / best_score / improved (the start model is always a candidate)
    out/state.json   finished steps, for --resume
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pairsmith.distill.fit_config import TRAIN_CROSS_DEFAULT, FitConfig
from pairsmith.distill.pairsets import load_pairs, scale_scores, score_range_for, subsample
from pairsmith.distill.runstate import RunState, save_dir_atomic, write_json_atomic
from pairsmith.distill.selection import (
    PairMetric,
    binary_metrics,
    cross_scores,
    make_evaluator,
    outcome,
    pair_metric,
)
from pairsmith.distill.train import fit_cross_encoder
from pairsmith.encoders import CrossEncoder
from pairsmith.encoders.runtime import resolve_device
from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"


@dataclass(frozen=True)
class TrainCrossConfig:
    data: str  # labeled pairs: file or set names (e.g. stsb-train, mrpc-train)
    init: str = "default"  # transformer (or bi-encoder directory) the cross-encoder starts from
    dev: str | None = None  # labeled dev set for checkpoint selection
    test: str | None = None  # optional labeled set, reported only
    metric: str = "auto"  # spearman | accuracy | auto (accuracy when the gold scores are 0/1)
    score_range: str | None = None  # "LO,HI" mapping gold scores to [0, 1]; auto for known sets
    both_orders: bool = True  # train on (a, b) and (b, a)
    symmetric_eval: bool = False  # score dev/test as the mean of both orders
    max_pairs: int | None = None  # subsample the training pairs (CPU budgets)
    keep_start: bool = True  # the start model (a fresh head: scored as it is) is a candidate
    fit: FitConfig = field(default_factory=lambda: TRAIN_CROSS_DEFAULT)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainCrossConfig:
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidInput(f"train config: unknown keys {unknown}")
        if isinstance(d.get("fit"), dict):
            d["fit"] = FitConfig.from_dict(d["fit"])
        return cls(**d)


def resolve_cross_dir(path: str) -> str:
    """A cross-encoder directory, accepting a ``train cross-encoder`` or trans-encoder output folder."""
    p = Path(path)
    for sub in (MODEL_SUBDIR, "best-cross"):
        if (p / sub / "config.json").exists():
            return str(p / sub)
    return path


def _metric_for(cfg_metric: str, scores) -> PairMetric:
    if cfg_metric != "auto":
        try:
            return PairMetric(cfg_metric)
        except ValueError:
            raise InvalidInput(
                f"--metric: unknown {cfg_metric!r}; choose spearman, accuracy or auto"
            ) from None
    vals = set(float(x) for x in scores[:1000])
    return PairMetric.ACCURACY if vals <= {0.0, 1.0} else PairMetric.SPEARMAN


def train_cross_encoder(
    cfg: TrainCrossConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = "auto",
    progress=True,
) -> dict:
    out = Path(out)
    dev_name = resolve_device(device)
    t0 = time.time()
    train = subsample(load_pairs(cfg.data, labeled=True), cfg.max_pairs, cfg.fit.seed)
    rng = score_range_for(cfg.data, train.scores, cfg.score_range)  # type: ignore[arg-type]
    y = scale_scores(train.scores, rng)  # type: ignore[arg-type]
    metric = _metric_for(cfg.metric, train.scores)
    dev = load_pairs(cfg.dev, labeled=True, dedup=False, for_training=False) if cfg.dev else None
    # Inputs are valid: only now claim the output directory.
    state = RunState(out, cfg.to_dict(), resume=resume, kind="train-cross-encoder")
    write_json_atomic(out / "config.json", {"kind": "train-cross-encoder", **cfg.to_dict()})
    report: dict = {
        "kind": "train-cross-encoder",
        "code": state.code,
        "config": cfg.to_dict(),
        "selected_on": cfg.dev,  # the checkpoint is chosen on dev: report test for an unbiased figure
        "train_pairs": len(train),
        "score_range": list(rng),
        "metric": metric.value,
        "device": dev_name,
    }
    model_dir = out / MODEL_SUBDIR
    if not state.is_done("fit"):
        ce = CrossEncoder.from_backbone(
            cfg.init, device=dev_name, max_length=cfg.fit.max_length, seed=cfg.fit.seed
        )
        evaluator = None
        if dev is not None:
            evaluator = make_evaluator(
                "cross", ce.st_model, ce.source, dev, metric, symmetric=cfg.symmetric_eval
            )
        res = fit_cross_encoder(
            ce.st_model,
            train.s1,
            train.s2,
            y,
            cfg.fit,
            both_orders=cfg.both_orders,
            device=dev_name,
            evaluator=evaluator,
            desc="cross-encoder",
            progress=progress,
            keep_start=cfg.keep_start,
        )
        save_dir_atomic(model_dir, lambda d: ce.save(d))
        state.mark("fit", fit=res.as_dict())
    report["fit"] = state.info("fit").get("fit")
    report.update(outcome(report["fit"].get("start_score"), report["fit"].get("trained_score")))
    ce = CrossEncoder.load(str(model_dir), device=dev_name, backend="torch")
    if dev is not None:
        s = cross_scores(ce.st_model, ce.source, dev.s1, dev.s2, symmetric=cfg.symmetric_eval)
        report["dev"] = {"set": cfg.dev, metric.value: pair_metric(s, dev.scores, metric)}
        s_sym = cross_scores(ce.st_model, ce.source, dev.s1, dev.s2, symmetric=True)
        report["dev"][f"{metric.value}_symmetric"] = pair_metric(s_sym, dev.scores, metric)
        if metric is PairMetric.ACCURACY:
            report["dev"].update(binary_metrics(s, dev.scores))
    if cfg.test:
        test = load_pairs(cfg.test, labeled=True, dedup=False, for_training=False)
        s = cross_scores(ce.st_model, ce.source, test.s1, test.s2, symmetric=cfg.symmetric_eval)
        if metric is PairMetric.ACCURACY:
            thr = report.get("dev", {}).get("threshold")
            report["test"] = {"set": cfg.test, **binary_metrics(s, test.scores, thr)}
        else:
            report["test"] = {"set": cfg.test, "spearman": pair_metric(s, test.scores, metric)}
    report["wall_s"] = round(state.elapsed(), 1)
    report["this_invocation_s"] = round(time.time() - t0, 1)
    write_json_atomic(out / "report.json", report)
    return report
