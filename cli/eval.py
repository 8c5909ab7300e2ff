"""``pairsmith eval sts|rerank|response|classify``: measure any encoder on real benchmarks."""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

from pairsmith import __version__

DEFAULT_STS = "sts12,sts13,sts14,sts15,sts16,stsb-dev,sickr-dev"


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate an encoder: STS, reranking/retrieval, response selection")
    tasks = ev.add_subparsers(dest="task", metavar="TASK", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default="default", help="bi-encoder: 'default', a model directory or hub name"
        )
        p.add_argument(
            "--data", default=None, help="data folder (default: $PAIRSMITH_DATA or ../shared/data)"
        )
        p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--device", default="auto")
        p.add_argument("--backend", default="torch", choices=["torch", "onnx", "openvino", "auto"])
        p.add_argument("--pooling", default=None, help="override pooling: mean, cls, max, last-token")

    sts = tasks.add_parser("sts", help="Spearman x100 on STS sets (or any STS-format file)")
    common(sts)
    sts.add_argument(
        "--cross-encoder", action="store_true", help="--model is a cross-encoder: score pairs jointly"
    )
    sts.add_argument("--symmetric", action="store_true", help="cross-encoder: average both orders")
    sts.add_argument(
        "--sets",
        default=DEFAULT_STS,
        help=f"comma list of names or file paths, or sts7 (default {DEFAULT_STS})",
    )
    sts.set_defaults(func=_run_sts)

    rr = tasks.add_parser(
        "rerank", help="bi-encoder top-100 (+ optional cross-encoder rerank): nDCG@10, MRR@10, MAP, R@100"
    )
    common(rr)
    rr.add_argument("--reranker", default=None, help="cross-encoder to rerank the first-stage top-k")
    rr.add_argument("--dataset", required=True, help="nfcorpus-dev | wikiqa-dev | trecqa-dev | PATH")
    rr.add_argument("--top-k", type=int, default=100, help="first-stage candidates (default 100)")
    rr.set_defaults(func=_run_rerank)

    rs = tasks.add_parser("response", help="response selection: each positive vs its negatives: R@1/2/5, MRR")
    common(rs)
    rs.add_argument(
        "--reranker", default=None, help="score with this cross-encoder instead of the bi-encoder"
    )
    rs.add_argument(
        "--dataset",
        default="dailydialog-dev",
        help="dailydialog-dev | mutual-heldout | mutual-select | PATH: DailyDialog++ JSON lines, a MuTual "
        "folder of .txt files (FOLDER/dev, or FOLDER:dev), one MuTual .txt, or a MuTual .tar.gz",
    )
    rs.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate only the first N contexts (a fixed, reported subset; default: all)",
    )
    from pairsmith.cli.uni import add_eval_flags

    add_eval_flags(rs)
    rs.set_defaults(func=_run_response)

    cl = tasks.add_parser(
        "classify", help="accuracy of a Byte2Word / WordPiece classifier (train byte2word) on a labelled set"
    )
    cl.add_argument("--model", required=True, help="model directory written by `pairsmith train byte2word`")
    cl.add_argument(
        "--dataset",
        default="sst2-dev",
        help="sst2-dev | sst2-train | sst2-test | advglue-sst2 | PATH ('sentence<TAB>label' lines)",
    )
    cl.add_argument("--data", default=None, help="data folder (default: $PAIRSMITH_DATA or ../shared/data)")
    cl.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    cl.add_argument("--batch-size", type=int, default=128)
    cl.set_defaults(func=_run_classify)


def _check_common(args: argparse.Namespace) -> None:
    from pairsmith.errors import InvalidInput

    if args.batch_size < 1:
        raise InvalidInput(f"--batch-size: must be >= 1, got {args.batch_size}")


def _load_bi(args: argparse.Namespace):
    from pairsmith.encoders import BiEncoder

    return BiEncoder.load(args.model, device=args.device, backend=args.backend, pooling=args.pooling)


def _run_sts(args: argparse.Namespace) -> int:
    from pairsmith.distill.evaluation import bi_scorer, cross_scorer, eval_sts
    from pairsmith.encoders import CrossEncoder
    from pairsmith.errors import InvalidInput

    _check_common(args)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if sets == ["sts7"]:
        sets = DEFAULT_STS.split(",")
    if not sets:
        raise InvalidInput("--sets: give at least one set name or file")
    t0 = time.perf_counter()
    if args.cross_encoder:
        ce = CrossEncoder.load(args.model, device=args.device, backend=args.backend)
        scorer = cross_scorer(ce, symmetric=args.symmetric, batch_size=args.batch_size)
        kind = "cross-encoder" + (" (symmetric)" if args.symmetric else "")
    else:
        scorer = bi_scorer(_load_bi(args), batch_size=args.batch_size)
        kind = "bi-encoder (cosine)"
    res = eval_sts(scorer, sets, args.data)
    _emit(
        args, "sts", kind, {k: round(v, 2) for k, v in res.items()}, "Spearman x100", time.perf_counter() - t0
    )
    return 0


def _run_rerank(args: argparse.Namespace) -> int:
    from pairsmith.distill.data import load_retrieval_set
    from pairsmith.distill.evaluation import eval_retrieval
    from pairsmith.encoders import CrossEncoder
    from pairsmith.errors import InvalidInput

    _check_common(args)
    if args.top_k < 1:
        raise InvalidInput(f"--top-k: must be >= 1, got {args.top_k}")
    t0 = time.perf_counter()
    ds = load_retrieval_set(args.dataset, args.data)
    enc = _load_bi(args)
    rr = CrossEncoder.load(args.reranker, device=args.device, backend=args.backend) if args.reranker else None
    res = eval_retrieval(ds, enc, rr, first_stage_k=args.top_k, batch_size=args.batch_size)
    kind = "bi-encoder" + (f" + rerank by {args.reranker}" if rr else "")
    row = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.as_dict().items()}
    _emit(args, f"rerank:{ds.name}", kind, row, "x100", time.perf_counter() - t0)
    return 0


def _run_response(args: argparse.Namespace) -> int:
    from pairsmith.distill.dialogue import load_dialogue
    from pairsmith.distill.evaluation import bi_scorer, cross_scorer, eval_response
    from pairsmith.distill.uni_train import limit_set
    from pairsmith.encoders import CrossEncoder
    from pairsmith.errors import InvalidInput

    _check_common(args)
    if args.limit is not None and args.limit < 1:
        raise InvalidInput(f"--limit: must be >= 1, got {args.limit}")
    t0 = time.perf_counter()
    ds = limit_set(load_dialogue(args.dataset, args.data), args.limit)  # DailyDialog++ or MuTual
    if args.uni_encoder:
        from pairsmith.cli.uni import uni_response

        row, kind = uni_response(args, ds)
        _emit(args, f"response:{ds.name}", kind, row, "x100", time.perf_counter() - t0, _subset(ds, args))
        return 0
    if args.reranker:
        ce = CrossEncoder.load(args.reranker, device=args.device, backend=args.backend)
        scorer, kind = cross_scorer(ce, batch_size=args.batch_size), f"cross-encoder {args.reranker}"
    else:
        scorer, kind = bi_scorer(_load_bi(args), batch_size=args.batch_size), "bi-encoder (cosine)"
    res = eval_response(ds, scorer)
    row = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.as_dict().items()}
    _emit(args, f"response:{ds.name}", kind, row, "x100", time.perf_counter() - t0, _subset(ds, args))
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pairsmith.distill.byte2word_data import load_classification_set
    from pairsmith.distill.evaluation import WordClassifier, eval_classify
    from pairsmith.errors import InvalidInput

    _check_common(args)
    if args.data is not None and not Path(args.data).is_dir():
        raise InvalidInput(
            f"--data {args.data!r}: not a folder (--data is the data folder; name the set with --dataset, "
            "e.g. --dataset sst2-dev)"
        )
    t0 = time.perf_counter()
    name, rows = load_classification_set(args.dataset, args.data)
    clf = WordClassifier(args.model)
    res = eval_classify(clf, rows, batch_size=args.batch_size)
    row = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.as_dict().items()}
    _emit(args, f"classify:{name}", f"{clf.unit} classifier", row, "x100", time.perf_counter() - t0)
    return 0


def _subset(ds, args: argparse.Namespace) -> dict[str, Any]:
    """What part of the set was evaluated (the report names a --limit subset explicitly)."""
    return {"limit": args.limit, "contexts": len(ds.contexts)}


def format_table(title: str, row: dict[str, Any]) -> str:
    keys = list(row)
    vals = [f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
    widths = [max(len(k), len(v)) for k, v in zip(keys, vals, strict=True)]
    sep = "+".join("-" * (w + 2) for w in widths)
    head = "|".join(f" {k:>{w}} " for k, w in zip(keys, widths, strict=True))
    body = "|".join(f" {v:>{w}} " for v, w in zip(vals, widths, strict=True))
    return f"{title}\n{sep}\n{head}\n{sep}\n{body}\n{sep}"


def _emit(
    args: argparse.Namespace,
    task: str,
    kind: str,
    row: dict[str, Any],
    unit: str,
    secs: float,
    subset: dict[str, Any] | None = None,
) -> None:
    print(format_table(f"{task} — {args.model} — {kind} — {unit}", row))
    if subset and subset.get("limit") is not None:
        print(f"(first {subset['contexts']} contexts only: --limit {subset['limit']})")
    print(f"({secs:.1f} s)")
    if args.json_out:
        from pairsmith.atomic import atomic_write_json

        atomic_write_json(
            args.json_out,
            {
                "task": task,
                "model": args.model,
                "scorer": kind,
                "results": row,
                **({"subset": subset} if subset else {}),
                "seconds": round(secs, 2),
                "pairsmith": __version__,
                "machine": platform.platform(),
                "date": time.strftime("%Y-%m-%d"),
                "args": {k: v for k, v in vars(args).items() if k != "func" and _jsonable(v)},
            },
        )


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
