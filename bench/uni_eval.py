"""Extra evaluation rows for the Uni-Encoder comparison, on the same subsets as the training runs.

- a trained Uni-Encoder under each mask (``--uni DIR``), whatever mask it was trained with;
- an untrained bi-encoder (cosine; ``--zero-shot-model``, default the default model) as the
  zero-shot reference (``--zero-shot``);
- trained cross-encoder / bi-encoder baselines (``--cross DIR``, ``--bi DIR``), scored as in training.

``--limit 0`` evaluates every context of each set (the training runs report the first 200).

    nice -n 19 .venv/bin/python bench/uni_eval.py --uni runs/uni/uni --limit 200 --zero-shot \
        --json runs/uni/extra_eval.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uni", default=None, help="trained Uni-Encoder (train --out DIR or DIR/model)")
    ap.add_argument("--masks", default="arrow,context-blind")
    ap.add_argument("--sets", default="mutual-heldout,dailydialog-dev")
    ap.add_argument(
        "--limit", type=int, default=200, help="first N contexts of each set (as in training); 0: all"
    )
    ap.add_argument(
        "--cross", default=None, help="trained cross-encoder baseline (train --kind cross --out DIR)"
    )
    ap.add_argument("--bi", default=None, help="trained bi-encoder baseline (train --kind bi --out DIR)")
    ap.add_argument("--zero-shot", action="store_true", help="also an untrained bi-encoder (cosine)")
    ap.add_argument(
        "--zero-shot-model", default="default", help="the untrained bi-encoder: default, mpnet or a dir"
    )
    ap.add_argument("--max-context-tokens", type=int, default=128, help="zero-shot row (as in training)")
    ap.add_argument("--max-candidate-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pairsmith.distill.dialogue import load_dialogue
    from pairsmith.distill.uni_train import ModelKind, UniTrainConfig, eval_ranking, limit_set, ranker
    from pairsmith.encoders import UniEncoder, UniMask
    from pairsmith.encoders.source import resolve_model

    if args.limit < 0:
        ap.error(f"--limit: must be >= 0, got {args.limit}")
    sets = [limit_set(load_dialogue(s), args.limit or None) for s in args.sets.split(",") if s]
    rows = []
    if args.uni:
        uni = UniEncoder.load(args.uni, device="cpu", backend="torch")
        for m in [UniMask.parse(x) for x in args.masks.split(",") if x]:
            for ds in sets:
                res = eval_ranking(
                    ds,
                    lambda items, m=m: uni.rank_many(items, mask=m, batch_size=16),
                    dedupe=m is UniMask.CONTEXT_BLIND,
                )
                rows.append({"model": args.uni, "scorer": f"uni ({m.value})", "set": ds.name, **res})
                print(json.dumps(rows[-1]), flush=True)
    cfg = UniTrainConfig(
        max_context_tokens=args.max_context_tokens, max_candidate_tokens=args.max_candidate_tokens
    )
    for kind, path in ((ModelKind.CROSS, args.cross), (ModelKind.BI, args.bi)):
        if not path:
            continue
        model_dir = Path(path) / "model" if (Path(path) / "model").is_dir() else Path(path)
        rank = ranker(kind, str(model_dir), "cpu", cfg=cfg)
        for ds in sets:
            rows.append({"model": path, "scorer": kind.value, "set": ds.name, **eval_ranking(ds, rank)})
            print(json.dumps(rows[-1]), flush=True)
    if args.zero_shot:
        zs = resolve_model(args.zero_shot_model)
        if zs.path is None:
            ap.error(f"--zero-shot-model {args.zero_shot_model}: not a local model (install it first)")
        rank = ranker(ModelKind.BI, str(zs.path), "cpu", cfg=cfg)
        for ds in sets:
            rows.append(
                {
                    "model": f"{args.zero_shot_model} (untrained)",
                    "scorer": "bi (cosine)",
                    "set": ds.name,
                    **eval_ranking(ds, rank),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
