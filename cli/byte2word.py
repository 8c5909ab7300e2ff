"""CLI: ``pairsmith train byte2word`` (MLM pre-training + classification) and ``train byte2word-corpus``.

Registered under the ``train`` command that ``cli/distill.py`` creates (main.py loads this module
after it); the training code lives in :mod:`pairsmith.distill.byte2word`.
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_train(args) -> int:
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, train_byte2word
    from pairsmith.distill.selection import finish
    from pairsmith.errors import InvalidInput

    if args.require_improvement and args.select == "none":
        raise InvalidInput("--require-improvement: needs a selection set (--select), not 'none'")
    cfg = Byte2WordTrainConfig(
        out=args.out,
        mlm_corpus=args.mlm_corpus,
        task=args.task,
        task_dev=args.task_dev,
        data=args.data,
        unit="bytes" if args.tokenizer == "bytes" else "wordpiece",
        size=args.config,
        max_steps=args.max_steps,
        ft_steps=args.ft_steps if args.ft_steps is not None else args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ft_lr=args.ft_lr,
        byte_layers=args.byte_layers,
        query_std=args.query_std,
        seed=args.seed,
        threads=args.threads,
        eval_noise=not args.no_noise_eval,
        select=args.select,
        select_rows=args.select_rows,
        eval_steps=args.eval_steps,
    )
    report = train_byte2word(cfg)
    keys = [
        "unit",
        "size",
        "params_input_embedding",
        "mlm_loss_first50",
        "mlm_loss_last50",
        "start_score",
        "best_score",
        "improved",
        "dev_acc",
        "wall_s",
    ]
    print(json.dumps({k: report.get(k) for k in keys}, indent=1))
    print(f"model: {args.out}  (report.json beside it)")
    return finish(report, "train byte2word", require_improvement=args.require_improvement)


def _cmd_corpus(args) -> int:
    from pairsmith.distill.byte2word_data import build_mlm_corpus

    rep = build_mlm_corpus(args.out, args.data)
    print(
        f"{rep.sentences} sentences ({rep.read} read, {rep.duplicates} duplicates, "
        f"{rep.eval_overlap_dropped} equal to an evaluation sentence dropped) -> {rep.path}"
    )
    return 0


def _train_subparsers(subparsers) -> argparse._SubParsersAction:
    train = subparsers.choices.get("train")
    if train is None:
        train = subparsers.add_parser("train", help="supervised training")
        train.add_subparsers(dest="train_command", metavar="MODEL")
        train.set_defaults(func=lambda args: (train.print_help(sys.stderr), 2)[1])
    return next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))


def register(subparsers) -> None:
    from pairsmith.distill.fit_config import EXIT_NOT_IMPROVED

    sub = _train_subparsers(subparsers)
    p = sub.add_parser(
        "byte2word", help="Byte2Word (or --tokenizer wordpiece baseline): MLM + classification"
    )
    p.add_argument("--mlm-corpus", required=True, help="one sentence per line (train byte2word-corpus)")
    p.add_argument("--task", default="sst2", help="sst2, or a 'sentence<TAB>label' training file")
    p.add_argument("--task-dev", default=None, help="labelled dev file (with --task FILE)")
    p.add_argument("--config", default="tiny", choices=["tiny", "small"], help="model size")
    p.add_argument("--tokenizer", default="bytes", choices=["bytes", "wordpiece"], help="input unit")
    p.add_argument("--max-steps", type=int, default=200, help="MLM pre-training steps")
    p.add_argument("--ft-steps", type=int, default=None, help="fine-tuning steps (default: --max-steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="MLM pre-training learning rate (AdamW)")
    p.add_argument("--ft-lr", type=float, default=5e-4, help="fine-tuning learning rate (AdamW)")
    p.add_argument(
        "--byte-layers",
        type=int,
        default=1,
        help="transformer layers over each word's bytes before the query pooling (bytes only; default 1)",
    )
    p.add_argument(
        "--query-std",
        type=float,
        default=1.0,
        help="initial std of the byte pooler's learned queries (bytes only; default 1.0, selective from "
        "the first step; 0.02 = the BERT-style init, near-uniform attention)",
    )
    p.add_argument(
        "--select",
        default="split",
        help="selection set the fine-tune keeps its best model on, the start's included: 'split' (default: "
        "--select-rows rows held out of the task's training rows, sharing no text with the rest), a "
        "'sentence<TAB>label' file, or 'none' (the last step is the model)",
    )
    p.add_argument("--select-rows", type=int, default=2000, help="rows held out by --select split")
    p.add_argument(
        "--eval-steps",
        type=int,
        default=0,
        help="score the selection set every N fine-tuning steps (default 0: at the end only)",
    )
    p.add_argument(
        "--require-improvement",
        action="store_true",
        help=f"exit with code {EXIT_NOT_IMPROVED} (not 0) when nothing fine-tuned beat the start model on the selection set",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-noise-eval", action="store_true", help="skip the noise / AdvGLUE evaluation")
    p.add_argument("--data", default=None, help="data folder (default: $PAIRSMITH_DATA or ../shared/data)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.set_defaults(func=_cmd_train)
    c = sub.add_parser("byte2word-corpus", help="build the deduplicated MLM corpus from the training splits")
    c.add_argument("--data", default=None, help="data folder (default: $PAIRSMITH_DATA or ../shared/data)")
    c.add_argument("--out", required=True, help="corpus file to write (one sentence per line)")
    c.set_defaults(func=_cmd_corpus)
