"""Byte2Word diagnosis probes on a held-out split of SST-2 *train* (never SST-2 dev).

    bench/byte2word_probe.py split OUTDIR          # OUTDIR/fit.tsv + OUTDIR/select.tsv
    bench/byte2word_probe.py run OUTDIR --unit bytes --mlm-steps 0 --ft-steps 300 [--old-init]
        [--no-pool-norm] [--ft-lr 2e-3] [--query-std 1.0] [--zero-pool-bias] [--byte-layers 1] [--d-byte 128] [--seed 0]

``split``: 2,000 rows of SST-2 train with >= 10 words (seed 0) that no longer row contains are the
selection set (closer to dev's full sentences than the short phrases); every other train row that
lies inside a selection row or holds one (whole words, normalised text) is dropped from the fit set
(the SST-2 train phrases are nested): ``distill.byte2word_data.selection_split``. Writes
OUTDIR/split.json with the counts. Note: the MLM corpus holds SST-2 train sentences unlabelled,
selection rows included.

``run``: one MLM + fine-tuning run of ``distill.byte2word.Trainer`` (``small`` by default) on
fit.tsv, accuracy on select.tsv; appends a JSON line to OUTDIR/probes.jsonl. ``--old-init``
and ``--no-pool-norm`` restore the earlier initialisation (N(0, 1) embedding tables, no
LayerNorm after the byte pooler) on the current code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SST2_TRAIN = "classification/sst2/sentiment-train"


def split(out: Path, data: str | None) -> dict:
    from pairsmith.distill.byte2word_data import read_labelled, selection_split, split_conflicts
    from pairsmith.distill.data import data_root

    rows = read_labelled(data_root(data) / SST2_TRAIN)
    sp = selection_split(rows, 2000, min_words=10, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.tsv").write_text("".join(f"{t}\t{y}\n" for t, y in sp.fit))
    (out / "select.tsv").write_text("".join(f"{t}\t{y}\n" for t, y in sp.select))
    stats = {"train": len(rows), **sp.stats(), "conflicts": split_conflicts(sp.fit, sp.select)}
    stats["select_pos"] = sum(y for _, y in sp.select) / len(sp.select)
    print(json.dumps(stats))
    (out / "split.json").write_text(json.dumps(stats) + "\n")
    return stats


def run(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer
    from pairsmith.distill.byte2word_data import read_corpus, read_labelled

    torch.set_num_threads(1)
    out = Path(args.outdir)
    fit, sel = read_labelled(out / "fit.tsv"), read_labelled(out / "select.tsv")
    cfg = Byte2WordTrainConfig(
        out=str(out / "tmp"),
        mlm_corpus=args.mlm_corpus,
        unit=args.unit,
        size=args.config,
        max_steps=args.mlm_steps,
        ft_steps=args.ft_steps,
        seed=args.seed,
        ft_lr=args.ft_lr,
        byte_layers=args.byte_layers,
        d_byte=args.d_byte,
        query_std=args.query_std if args.query_std is not None else 0.02,  # the earlier probes' init
    )
    tr = Trainer(cfg)
    enc = tr.encoder
    if args.old_init:
        for m in enc.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1.0)  # torch's default
    if args.unit == "bytes":
        if args.no_pool_norm:
            enc.pooler.out_norm = nn.Identity()
        if args.zero_pool_bias:
            for lin in (enc.pooler.k, enc.pooler.v, enc.pooler.out):
                nn.init.zeros_(lin.bias)
    t0 = time.time()
    corpus = read_corpus(args.mlm_corpus) if args.mlm_steps else []
    mlm = tr.pretrain(corpus, args.mlm_steps)
    ft = tr.finetune(fit, args.ft_steps)
    rep = {
        "unit": args.unit,
        "variant": {
            k: getattr(args, k)
            for k in (
                "old_init",
                "no_pool_norm",
                "ft_lr",
                "query_std",
                "zero_pool_bias",
                "byte_layers",
                "d_byte",
            )
        },
        "mlm_steps": args.mlm_steps,
        "ft_steps": args.ft_steps,
        "seed": args.seed,
        "select_acc": tr.accuracy(sel),
        "mlm_loss_last50": sum(mlm[-50:]) / len(mlm[-50:]) if mlm else None,
        "ft_loss_last50": sum(ft[-50:]) / len(ft[-50:]) if ft else None,
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(rep))
    with open(out / "probes.jsonl", "a") as fh:
        fh.write(json.dumps(rep) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("outdir")
    s.add_argument("--data", default=None)
    r = sub.add_parser("run")
    r.add_argument("outdir")
    r.add_argument("--mlm-corpus", default="")
    r.add_argument("--unit", choices=["bytes", "wordpiece"], default="bytes")
    r.add_argument("--config", choices=["tiny", "small"], default="small")
    r.add_argument("--mlm-steps", type=int, default=0)
    r.add_argument("--ft-steps", type=int, default=300)
    r.add_argument("--ft-lr", type=float, default=5e-4)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--old-init", action="store_true")
    r.add_argument("--no-pool-norm", action="store_true")
    r.add_argument("--query-std", type=float, default=None)
    r.add_argument("--zero-pool-bias", action="store_true")
    r.add_argument("--byte-layers", type=int, default=0)
    r.add_argument("--d-byte", type=int, default=None, help="byte vector width (default: the size's)")
    args = ap.parse_args()
    if args.cmd == "split":
        split(Path(args.outdir), args.data)
    else:
        run(args)


if __name__ == "__main__":
    main()
