"""CLI: ``pairsmith train embedding`` — fine-tune a bi-encoder with mean, multi-layer or last-layer pooling.

Adds the ``embedding`` model to the ``train`` command (created here when no other module made it
first). The training library is imported lazily, so ``pairsmith --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys


def _train_subparsers(subparsers) -> argparse._SubParsersAction:
    """The ``train`` command's sub-command action, creating ``train`` if no module has yet."""
    train = subparsers.choices.get("train")
    if train is None:
        train = subparsers.add_parser("train", help="supervised training")
        train.set_defaults(func=lambda args: (train.print_help(sys.stderr), 2)[1])
    for action in train._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return train.add_subparsers(dest="train_command", metavar="MODEL")


def _cmd(args) -> int:
    from pairsmith.distill.embedding import PoolerSizes, TrainEmbeddingConfig
    from pairsmith.distill.embedding import train_embedding as run
    from pairsmith.distill.fit_config import FitConfig

    cfg = TrainEmbeddingConfig(
        model=args.model,
        pooling=args.pooling,
        data=args.data,
        loss=args.loss,
        score_range=args.score_range,
        max_pairs=args.max_pairs,
        dev=args.dev,
        pooler_lr=args.pooler_lr,
        contrastive_scale=args.scale,
        checkpoint_steps=args.checkpoint_steps,
        sizes=PoolerSizes(
            n_latents=args.latents,
            heads=args.heads,
            head_dim=args.head_dim,
            ffn_dim=args.ffn_dim,
            residual=not args.no_residual,
        ),
        fit=FitConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_ratio=args.warmup,
            max_length=args.max_length,
            seed=args.seed,
            length_grouping=not args.no_length_grouping,
        ),
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = run(cfg, args.out, device=args.device, progress=not args.no_progress)
    keys = ["start_score", "best_score", "trained_score", "improved", "train_pairs", "loss"]
    keys += ["encoder_params", "pooler_params", "pooler_pct_of_encoder", "wall_s"]
    print(json.dumps({k: report[k] for k in keys} | {"model": f"{args.out}/model"}, indent=2))
    from pairsmith.distill.selection import finish

    return finish(report, "train embedding", require_improvement=args.require_improvement)


def register(subparsers) -> None:
    from pairsmith.distill.fit_config import DEFAULT_SEED

    p = _train_subparsers(subparsers).add_parser(
        "embedding",
        help="fine-tune a bi-encoder: mean, multi-layer or last-layer trainable pooling",
        description="Scored pairs: cosine regression; unscored pairs / QA positives: contrastive with "
        "in-batch negatives. With --dev: the start model is scored first and kept as a candidate, and "
        "the best epoch (or the start) is saved; without: fixed budget, final weights.",
    )
    p.add_argument("--model", default="default", help="bi-encoder to start from (default: the packaged one)")
    p.add_argument("--pooling", default="mean", choices=["mean", "multi-layer", "last-layer"])
    p.add_argument(
        "--data",
        default="stsb-train",
        help="pairs file (TSV/JSONL), set names (stsb-train, ...) or trecqa-train",
    )
    p.add_argument("--loss", default="auto", choices=["auto", "cosine", "contrastive"])
    p.add_argument("--score-range", default=None, help="LO,HI mapping scores to [0, 1] (auto for known sets)")
    p.add_argument("--max-pairs", type=int, default=None, help="subsample the training pairs")
    p.add_argument(
        "--dev", default=None, help="scored selection set: start vs trained, best epoch (default: none)"
    )
    p.add_argument(
        "--require-improvement",
        action="store_true",
        help="exit with code 3 (not 0) when no trained model beat the start model on --dev",
    )
    p.add_argument("--out", required=True, help="output directory (model/, checkpoints/, report.json)")
    g = p.add_argument_group("pooler (multi-layer, last-layer)")
    g.add_argument("--latents", type=int, default=16, help="learned latents Nq (default 16)")
    g.add_argument("--heads", type=int, default=0, help="attention heads (0: hidden size / head dim)")
    g.add_argument("--head-dim", type=int, default=64, help="per-head dimension (default 64, at most 256)")
    g.add_argument("--ffn-dim", type=int, default=0, help="feed-forward width (0: hidden size)")
    g.add_argument("--no-residual", action="store_true", help="paper form: mean of latents, no anchor")
    g.add_argument("--pooler-lr", type=float, default=1e-3, help="learning rate of the new pooler")
    f = p.add_argument_group("fit")
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--lr", type=float, default=2e-5, help="backbone learning rate")
    f.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of steps")
    f.add_argument("--max-length", type=int, default=64)
    f.add_argument("--scale", type=float, default=20.0, help="contrastive: cosine scale (1/temperature)")
    f.add_argument("--checkpoint-steps", type=int, default=0, help="checkpoint every N steps (0: epoch ends)")
    f.add_argument("--seed", type=int, default=DEFAULT_SEED)
    f.add_argument("--no-length-grouping", action="store_true", help="plain random batches")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd)
