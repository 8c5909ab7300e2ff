"""CLI: ``pairsmith train uni-encoder`` (and its same-budget baselines) and the Uni-Encoder scorer
for ``pairsmith eval response --uni-encoder``.

``train uni-encoder`` is registered under ``train`` by ``cli/distill.py`` (one line);
the training library is imported lazily inside the command.
"""

from __future__ import annotations

import argparse
import json
import sys


def register_train(tsub) -> None:
    from pairsmith.distill.fit_config import DEFAULT_SEED

    p = tsub.add_parser(
        "uni-encoder",
        help="Uni-Encoder response selection (listwise softmax CE); --kind cross|bi trains the baselines",
    )
    p.add_argument(
        "--data", default="mutual", help="mutual | dailydialog (train split) | FILE (default mutual)"
    )
    p.add_argument("--model", default="default", help="starting transformer or bi-encoder directory")
    p.add_argument(
        "--init-from-bi",
        default=None,
        metavar="MODEL",
        help="start from this sentence-transformers bi-encoder (sets --model, --head warm): the first "
        "scores are its cosines; cross-segment attention opens through learned gates",
    )
    p.add_argument(
        "--head",
        default="auto",
        choices=["auto", "warm", "cold"],
        help="uni/cross: warm = start as the bi-encoder's cosine (default when --model is a bi-encoder); "
        "cold = a fresh score head (the paper's Uni-Encoder; a plain cross-encoder)",
    )
    p.add_argument(
        "--gate-lr",
        type=float,
        default=2.0,
        help="warm: learning rate of the attention gates (about the bias change per step; they start at -30)",
    )
    p.add_argument(
        "--kind",
        default="uni",
        choices=["uni", "cross", "bi"],
        help="uni (default), or a baseline: cross | bi",
    )
    p.add_argument(
        "--mask", default="arrow", choices=["arrow", "context-blind"], help="uni: attention while training"
    )
    p.add_argument("--negatives", default="dataset", choices=["dataset", "in-batch", "both"])
    p.add_argument(
        "--max-contexts",
        type=int,
        default=None,
        help="train on N contexts drawn by --seed (all their positives; CPU budgets); default all",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8, help="contexts per step (default 8)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--max-context-tokens", type=int, default=192)
    p.add_argument("--max-candidate-tokens", type=int, default=64)
    p.add_argument("--checkpoint-steps", type=int, default=50)
    p.add_argument(
        "--mlm-weight",
        type=float,
        default=0.0,
        help="uni: add W x MLM loss (15%% of context + candidate tokens masked in a copy of each batch); "
        "default 0 = off",
    )
    p.add_argument(
        "--eval",
        default="mutual-heldout,dailydialog-dev",
        help="comma list of evaluation sets after training ('none': skip)",
    )
    p.add_argument(
        "--eval-limit", type=int, default=None, help="evaluate on the first N contexts of each set"
    )
    p.add_argument(
        "--select",
        default="mutual-select",
        help="selection set: the start model and the trained one are scored on it and the better is "
        "kept ('none': keep the trained model unscored)",
    )
    p.add_argument("--select-limit", type=int, default=200, help="selection on the first N contexts")
    p.add_argument(
        "--require-improvement",
        action="store_true",
        help="exit with status 3 when the trained model does not beat the start on the selection set",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from pairsmith.distill.uni_train import UniTrainConfig, train_uni
    from pairsmith.errors import InvalidInput

    if args.init_from_bi and args.head == "cold":
        raise InvalidInput("--init-from-bi: starts the warm head; drop --head cold (or use --model)")

    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    if args.require_improvement and args.select in ("", "none"):
        raise InvalidInput("--require-improvement: needs a selection set (--select), not 'none'")
    cfg = UniTrainConfig(
        data=args.data,
        model=args.init_from_bi or args.model,
        head="warm" if args.init_from_bi else args.head,
        gate_lr=args.gate_lr,
        select=args.select,
        select_limit=args.select_limit,
        kind=args.kind,
        mask=args.mask,
        negatives=args.negatives,
        max_contexts=args.max_contexts,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        max_context_tokens=args.max_context_tokens,
        max_candidate_tokens=args.max_candidate_tokens,
        checkpoint_steps=args.checkpoint_steps,
        eval_sets=tuple(s for s in args.eval.split(",") if s and s != "none"),
        eval_limit=args.eval_limit,
        seed=args.seed,
        mlm_weight=args.mlm_weight,
    )
    report = train_uni(cfg, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
    keys = ("head", "train_contexts", "fit", "start_score", "best_score", "improved", "eval", "wall_s")
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2, default=str))
    if args.require_improvement and not report.get("improved", False):
        print(
            f"not improved: nothing beat the start model on {report.get('select_set')} "
            f"(start {report.get('start_score')}); the start model was kept in {args.out}/model",
            file=sys.stderr,
        )
        return 3
    return 0


def add_eval_flags(rs: argparse.ArgumentParser) -> None:
    rs.add_argument(
        "--uni-encoder",
        action="store_true",
        help="--model is a Uni-Encoder: rank each context's candidates in one pass",
    )
    rs.add_argument(
        "--mask", default=None, choices=["arrow", "context-blind"], help="Uni-Encoder mask (default: its own)"
    )


def uni_response(args: argparse.Namespace, ds) -> tuple[dict, str]:
    """R@1/2/5 and MRR for a Uni-Encoder (``--uni-encoder``)."""
    from pairsmith.distill.uni_train import eval_ranking
    from pairsmith.encoders import UniEncoder, UniMask

    uni = UniEncoder.load(args.model, device=args.device, backend=args.backend)
    mask = UniMask.parse(args.mask or uni.config.mask)

    def rank(items):
        return uni.rank_many(items, mask=mask, batch_size=min(args.batch_size, 16))

    res = eval_ranking(ds, rank, progress=True, dedupe=mask is UniMask.CONTEXT_BLIND)
    return res, f"uni-encoder ({mask.value})"
