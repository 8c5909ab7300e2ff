"""CLI: ``pairsmith distill trans-encoder``, ``pairsmith distill dse``, ``pairsmith train cross-encoder``.

The distillation library is imported lazily inside each command, so
``pairsmith --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

log = logging.getLogger(__name__)


def _fit_args(p: argparse.ArgumentParser, prefix: str, defaults, what: str) -> None:
    dash = f"--{prefix}-" if prefix else "--"
    g = p.add_argument_group(f"{what} fit")
    g.add_argument(f"{dash}epochs", type=int, default=defaults.epochs, help=f"default {defaults.epochs}")
    g.add_argument(
        f"{dash}batch-size", type=int, default=defaults.batch_size, help=f"default {defaults.batch_size}"
    )
    g.add_argument(f"{dash}lr", type=float, default=defaults.lr, help=f"default {defaults.lr:g}")
    g.add_argument(
        f"{dash}warmup", type=float, default=defaults.warmup_ratio, help="warm-up fraction of steps"
    )
    g.add_argument(
        f"{dash}max-length", type=int, default=defaults.max_length, help=f"default {defaults.max_length}"
    )
    g.add_argument(
        f"{dash}eval-steps",
        type=int,
        default=defaults.eval_steps,
        help="dev evaluation every N steps (0: epoch ends)",
    )


def _fit_from(args, prefix: str, seed: int):
    from pairsmith.distill.fit_config import FitConfig

    key = f"{prefix}_" if prefix else ""
    return FitConfig(
        epochs=getattr(args, f"{key}epochs"),
        batch_size=getattr(args, f"{key}batch_size"),
        lr=getattr(args, f"{key}lr"),
        warmup_ratio=getattr(args, f"{key}warmup"),
        max_length=getattr(args, f"{key}max_length"),
        eval_steps=getattr(args, f"{key}eval_steps"),
        seed=seed,
        length_grouping=not args.no_length_grouping,
    )


def _common(p: argparse.ArgumentParser) -> None:
    from pairsmith.distill.fit_config import DEFAULT_SEED

    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seeds everything the run creates (default {DEFAULT_SEED})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--no-length-grouping",
        action="store_true",
        help="plain random batches (default: similar lengths batched)",
    )


_OUTCOME = ["start_score", "best_score", "trained_score", "improved"]


def _sets(spec: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (spec or "").split(",") if x.strip() and x.strip() != "none")


def _require_arg(p: argparse.ArgumentParser) -> None:
    from pairsmith.distill.fit_config import EXIT_NOT_IMPROVED

    p.add_argument(
        "--require-improvement",
        action="store_true",
        help=f"exit with code {EXIT_NOT_IMPROVED} (not 0) when no trained model beat the start model "
        "on the selection set",
    )


def _finish(report: dict, what: str, args) -> int:
    from pairsmith.distill.selection import finish

    return finish(report, what, require_improvement=args.require_improvement)


def _print(report: dict, keys: list[str]) -> None:
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2, default=str))


# --------------------------------------------------------------------------- trans-encoder


def _cmd_trans_encoder(args) -> int:
    from pairsmith.distill.trans_encoder import TransEncoderConfig, run_trans_encoder

    cfg = TransEncoderConfig(
        pairs=args.pairs,
        models=tuple(args.models),
        pooling=args.pooling,
        cross_init=tuple(args.cross_init) if args.cross_init else None,
        cycles=args.cycles,
        dev=None if args.dev in ("", "none") else args.dev,
        eval_sets=tuple(s for s in args.eval_sets.split(",") if s) if args.eval_sets != "none" else (),
        max_pairs=args.max_pairs,
        exclude_eval_pairs=args.exclude_eval_pairs,
        label_range=args.label_range,
        combine=args.combine,
        cross_both_orders=not args.cross_one_order,
        symmetric_labels=args.symmetric_labels,
        symmetric_eval=args.symmetric_eval,
        warm_start=args.warm_start,
        collapse_guard=not args.no_collapse_guard,
        label_std_floor=args.label_std_floor,
        rank_floor=args.rank_floor,
        drop_margin=args.drop_margin,
        cross=_fit_from(args, "cross", args.seed),
        bi=_fit_from(args, "bi", args.seed),
        seed=args.seed,
    )
    with _scorer(args) as scorer:  # --engine ray: pseudo-labels scored by Ray actors
        report = run_trans_encoder(
            cfg,
            args.out,
            resume=args.resume,
            device=args.device,
            progress=not args.no_progress,
            pair_scorer=scorer,
        )
    summary = {
        "setting": report["evaluation_setting"]["setting"],
        "per_cycle_score": f"eval average without the selection set {report.get('selection_set')} (avg_heldout)",
        **{k: report.get(k) for k in _OUTCOME},
        "collapsed": report.get("collapsed"),
        "best": report["best"],
        "per_cycle": [
            {
                "cycle": r["cycle"],
                **{
                    f"{k}-{t}": v.get("eval", {}).get(
                        "avg_heldout", v.get("eval", {}).get("avg", v.get("dev"))
                    )
                    for k in ("bi", "cross")
                    for t, v in r[k].items()
                },
            }
            for r in report["cycles"]
        ],
        "wall_s": report["wall_s"],
        "out": args.out,
    }
    print(json.dumps(summary, indent=2, default=str))
    return _finish(report, "distill trans-encoder", args)


def _guard_args(p: argparse.ArgumentParser) -> None:
    from pairsmith.distill.fit_config import DROP_MARGIN, LABEL_STD_FLOOR, RANK_FLOOR

    g = p.add_argument_group("collapse guard")
    g.add_argument(
        "--label-std-floor",
        type=float,
        default=LABEL_STD_FLOOR,
        help=f"stop a cycle when a model's pseudo-labels spread less (std, [0, 1] scale; default {LABEL_STD_FLOOR})",
    )
    g.add_argument(
        "--rank-floor",
        type=float,
        default=RANK_FLOOR,
        help="stop a cycle when a model's pseudo-labels agree less with the other model's scores "
        f"(Spearman, -1..1; default {RANK_FLOOR})",
    )
    g.add_argument(
        "--drop-margin",
        type=float,
        default=DROP_MARGIN,
        help="stop a cycle when a bi-encoder fit's best selection score falls this many points "
        f"(x100) below its start (default {DROP_MARGIN})",
    )
    g.add_argument(
        "--no-collapse-guard", action="store_true", help="never stop a cycle (the official behaviour)"
    )


def _register_trans_encoder(sub) -> None:
    from pairsmith.distill.data import STS7
    from pairsmith.distill.fit_config import BI_DEFAULT, CROSS_DEFAULT

    p = sub.add_parser(
        "trans-encoder",
        help="Trans-Encoder self-/mutual-distillation on unlabeled pairs",
        description="Alternately distill bi-encoder(s) into cross-encoder(s) and back on unlabeled pairs "
        "(Liu et al., ICLR 2022). Defaults follow the official code; deviations are options.",
    )
    p.add_argument(
        "--pairs", required=True, help="unlabeled pairs: file(s), set names, or sts-all / sts-inductive"
    )
    p.add_argument(
        "--models", nargs="+", default=["default"], help="one model: self; several: mutual distillation"
    )
    p.add_argument(
        "--pooling", default=None, help="override the starting bi-encoders' pooling (mean, cls, max)"
    )
    p.add_argument(
        "--cross-init", nargs="+", default=None, help="per model: transformer the cross-encoder starts from"
    )
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--dev", default="stsb-dev", help="labeled dev set for selection ('none' to disable)")
    p.add_argument(
        "--eval-sets", default=",".join(STS7), help="comma-separated sets scored per cycle ('none': skip)"
    )
    p.add_argument("--max-pairs", type=int, default=None, help="subsample the unlabeled pool")
    p.add_argument("--exclude-eval-pairs", action="store_true", help="drop pool pairs found in dev/eval sets")
    p.add_argument("--label-range", default="clamp", choices=["clamp", "raw", "minmax"])
    p.add_argument(
        "--combine", default="mean", choices=["mean", "rank", "zscore"], help="mutual label averaging"
    )
    p.add_argument("--cross-one-order", action="store_true", help="train the cross-encoder on (a, b) only")
    p.add_argument("--symmetric-labels", action="store_true", help="cross labels: mean of both orders")
    p.add_argument("--symmetric-eval", action="store_true", help="cross dev/eval: mean of both orders")
    p.add_argument("--warm-start", action="store_true", help="each cycle continues from the previous models")
    _guard_args(p)
    _require_arg(p)
    _fit_args(p, "cross", CROSS_DEFAULT, "cross-encoder")
    _fit_args(p, "bi", BI_DEFAULT, "bi-encoder")
    _common(p)
    _engine_args(p, "pseudo-labelling")
    p.set_defaults(func=_cmd_trans_encoder)


# --------------------------------------------------------------------------- dse


def _cmd_dse(args) -> int:
    from pairsmith.distill.dse import DSEConfig, run_dse

    cfg = DSEConfig(
        teacher=args.teacher,
        student=args.student,
        pairs=args.pairs,
        head=args.head,
        alpha=args.alpha,
        dev=args.dev,
        test=args.test,
        eval_sets=_sets(args.eval_sets),
        metric=args.metric,
        score_range=args.score_range,
        teacher_symmetric=args.teacher_symmetric,
        use_labels=not args.no_labels,
        max_pairs=args.max_pairs,
        gold_limit=args.gold_limit,
        unlabeled=args.unlabeled,
        unlabeled_limit=args.unlabeled_limit,
        silver_weight=args.silver_weight,
        augment=args.augment,
        augment_k=args.augment_k,
        teacher_cache=args.teacher_cache,
        fit=_fit_from(args, "", args.seed),
    )
    with _scorer(args) as scorer:  # --engine ray: teacher scores from Ray actors
        kw = {"resume": args.resume, "device": args.device, "progress": not args.no_progress}
        report = run_dse(cfg, args.out, pair_scorer=scorer, **kw)
    _print(report, [*_OUTCOME, "rows", "unlabeled", "overlap", "augment", "teacher_cache", "wall_s"])
    return _finish(report, "distill dse", args)


def _register_dse(sub) -> None:
    from pairsmith.distill.fit_config import DSE_FIT_DEFAULT

    p = sub.add_parser(
        "dse",
        help="DSE: distill a cross-encoder teacher into a bi-encoder student",
        description="Distilled Sentence Embedding (Barkan et al., AAAI 2020): the student learns "
        "(1-alpha)*task + alpha*MSE to the teacher's cached pair scores.",
    )
    p.add_argument(
        "--teacher",
        required=True,
        help="cross-encoder directory (or a train cross-encoder --out); 'student': the student's own "
        "start labels the pairs (the no-teacher control)",
    )
    p.add_argument("--student", default="default", help="bi-encoder the student starts from")
    p.add_argument(
        "--pairs", required=True, help="training pairs: file or set names (labels used when present)"
    )
    p.add_argument("--head", default="cosine", choices=["cosine", "mlp"])
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher term (0: labels only)")
    p.add_argument(
        "--unlabeled",
        default=None,
        help="unscored pairs (set names or file) the teacher labels: silver rows, teacher term only; "
        "pairs found in the gold or in the dev/test/eval sets are dropped",
    )
    p.add_argument("--unlabeled-limit", type=int, default=None, help="a seeded subset of --unlabeled")
    p.add_argument("--gold-limit", type=int, default=None, help="a seeded subset of N gold pairs")
    p.add_argument(
        "--silver-weight", type=float, default=1.0, help="weight of a silver row's teacher term (default 1)"
    )
    p.add_argument(
        "--dev", default=None, help="labeled selection set: checkpoints, start vs trained, threshold"
    )
    p.add_argument("--test", default=None, help="labeled test set (reported only)")
    p.add_argument("--eval-sets", default=None, help="comma-separated labeled sets, reported only")
    p.add_argument("--metric", default="auto", choices=["auto", "spearman", "accuracy"])
    p.add_argument("--score-range", default=None, help="LO,HI mapping gold scores to [0, 1]")
    p.add_argument("--teacher-symmetric", action="store_true", help="teacher score = mean of both orders")
    p.add_argument(
        "--teacher-cache", default=None, help="teacher score cache (default OUT/teacher_cache.npz)"
    )
    p.add_argument("--no-labels", action="store_true", help="ignore gold labels (teacher only)")
    p.add_argument("--max-pairs", type=int, default=None)
    _require_arg(p)
    p.add_argument(
        "--augment",
        default="none",
        choices=["none", "knn", "random"],
        help="extra pairs from the training sentences, labelled by the teacher only "
        "(knn: each sentence with its nearest others under the starting student)",
    )
    p.add_argument("--augment-k", type=int, default=1, help="partners per training sentence for --augment")
    _fit_args(p, "", DSE_FIT_DEFAULT, "student")
    _common(p)
    _engine_args(p, "teacher scoring")
    p.set_defaults(func=_cmd_dse)


def _engine_args(p, what: str) -> None:
    from pairsmith.service.ray_engine import add_engine_args  # flags only; Ray is imported lazily

    add_engine_args(p, what=what)


@contextlib.contextmanager
def _scorer(args):
    """The ``pair_scorer`` hook for --engine ray (one Ray session for the whole job), else None."""
    from pairsmith.service.ray_engine import options_from_args, pair_scorer, ray_session

    opts = options_from_args(args, batch_size=64)
    if opts is None:
        yield None
        return
    with ray_session(opts):
        yield pair_scorer(opts, progress=not args.no_progress)


# --------------------------------------------------------------------------- train cross-encoder


def _cmd_train_cross(args) -> int:
    from pairsmith.distill.supervised import TrainCrossConfig, train_cross_encoder

    cfg = TrainCrossConfig(
        data=args.data,
        init=args.init,
        dev=args.dev,
        test=args.test,
        metric=args.metric,
        score_range=args.score_range,
        both_orders=not args.one_order,
        symmetric_eval=args.symmetric_eval,
        max_pairs=args.max_pairs,
        fit=_fit_from(args, "", args.seed),
    )
    report = train_cross_encoder(
        cfg, args.out, resume=args.resume, device=args.device, progress=not args.no_progress
    )
    _print(report, [*_OUTCOME, "train_pairs", "metric", "dev", "test", "wall_s"])
    return _finish(report, "train cross-encoder", args)


def _register_train(sub) -> None:
    from pairsmith.distill.fit_config import TRAIN_CROSS_DEFAULT

    p = sub.add_parser("cross-encoder", help="supervised cross-encoder training on labeled pairs")
    p.add_argument(
        "--data", required=True, help="labeled pairs: file (TSV/JSONL) or set names (stsb-train, mrpc-train)"
    )
    p.add_argument("--init", default="default", help="transformer or bi-encoder directory to start from")
    p.add_argument("--dev", default=None, help="labeled dev set for checkpoint selection")
    p.add_argument("--test", default=None, help="labeled test set (reported only)")
    p.add_argument("--metric", default="auto", choices=["auto", "spearman", "accuracy"])
    p.add_argument(
        "--score-range", default=None, help="LO,HI mapping gold scores to [0, 1] (auto for known sets)"
    )
    p.add_argument("--one-order", action="store_true", help="train on (a, b) only (default: both orders)")
    p.add_argument("--symmetric-eval", action="store_true", help="dev/test scores: mean of both orders")
    p.add_argument("--max-pairs", type=int, default=None)
    _require_arg(p)
    _fit_args(p, "", TRAIN_CROSS_DEFAULT, "cross-encoder")
    _common(p)
    p.set_defaults(func=_cmd_train_cross)


def register(subparsers) -> None:
    d = subparsers.add_parser("distill", help="distillation jobs (Trans-Encoder, DSE)")
    dsub = d.add_subparsers(dest="distill_command", metavar="JOB")
    _register_trans_encoder(dsub)
    _register_dse(dsub)
    d.set_defaults(func=lambda args: (d.print_help(sys.stderr), 2)[1])
    t = subparsers.add_parser("train", help="supervised training")
    tsub = t.add_subparsers(dest="train_command", metavar="MODEL")
    _register_train(tsub)
    from pairsmith.cli.uni import register_train as _register_uni

    _register_uni(tsub)
    t.set_defaults(func=lambda args: (t.print_help(sys.stderr), 2)[1])
