"""CLI: ``pairsmith data split`` — a selection split that shares no text with the training rows.

A model chosen on a set it is later reported on looks better than it is. ``data split`` holds out
N seeded rows of a labeled pair set as the selection set and drops every remaining row that shares
text with it (a sentence, normalised, that equals, contains or is contained in a selection
sentence), so neither side holds a phrase of the other. Pass ``OUT/train.jsonl`` as ``--data`` /
``--pairs`` and ``OUT/selection.jsonl`` as ``--dev``; report on sets the job never saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cmd_split(args) -> int:
    from pairsmith.atomic import atomic_write_bytes, atomic_write_json
    from pairsmith.distill.pairsets import load_pairs
    from pairsmith.distill.selection import selection_split
    from pairsmith.errors import InvalidInput

    if args.selection < 1:
        raise InvalidInput(f"--selection: need at least 1 row, got {args.selection}")
    pairs = load_pairs(args.data, labeled=not args.unlabeled)
    if not args.unlabeled and pairs.scores is None:
        raise InvalidInput(f"{args.data}: no scores; pass --unlabeled to split unscored pairs")
    train, sel, info = selection_split(pairs, args.selection, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, ps in (("train", train), ("selection", sel)):
        lines = []
        for i, (a, b) in enumerate(zip(ps.s1, ps.s2, strict=True)):
            row = {"s1": a, "s2": b}
            if ps.scores is not None:
                row["score"] = round(float(ps.scores[i]), 6)  # float32 scores without float64 noise
            lines.append(json.dumps(row, ensure_ascii=False))
        atomic_write_bytes(out / f"{name}.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    summary = {"source": args.data, "seed": args.seed, **info, "files": ["train.jsonl", "selection.jsonl"]}
    atomic_write_json(out / "split.json", summary)
    print(
        f"data split: {info['selection_rows']} selection rows, {info['train_rows']} training rows, "
        f"{info['dropped_sharing_text']} dropped for sharing text -> {out}/train.jsonl, {out}/selection.jsonl",
        file=sys.stderr,
    )
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare pair data (selection splits)")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    s = sub.add_parser(
        "split",
        help="hold out a selection set that shares no text with the training rows",
        description=__doc__.split("\n\n", 1)[1],
    )
    s.add_argument("data", help="pair set name (stsb-train, sickr-train, ...) or file (TSV/JSONL)")
    s.add_argument("--selection", type=int, default=500, help="rows held out for selection (default 500)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--unlabeled", action="store_true", help="split pairs without scores")
    s.add_argument("--out", required=True, help="folder for train.jsonl, selection.jsonl and split.json")
    s.set_defaults(func=_cmd_split)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])
