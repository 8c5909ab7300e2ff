"""Control for a Trans-Encoder run: refit the starting bi-encoder on its OWN cycle-1 labels.

The cross -> bi step trains the bi-encoder on the cross-encoder's scores. When the bi-encoder ends
below its start, two causes are possible: the cross-encoder's labels are worse than the bi-encoder's
own, or the fit itself (dropout, lr, batch, steps) moves a model that already fits its targets almost
perfectly. Refitting on the bi-encoder's own cosines with the same fit configuration separates them:
if this control also loses points, the loss comes from the fit, not from the labels.

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/experiments/bi_refit_control.py runs/te-weak-full

Writes RUN/control-self-labels.json (7-task scores of the refitted model, fit history, fit quality).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from pairsmith.distill.evaluation import bi_scorer, eval_sts
from pairsmith.distill.pairsets import load_pairs, subsample
from pairsmith.distill.selection import PairMetric, make_evaluator
from pairsmith.distill.train import fit_bi_encoder
from pairsmith.distill.trans_encoder import load_config
from pairsmith.encoders import BiEncoder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a finished trans-encoder --out directory (self-distillation)")
    ap.add_argument("--sample", type=int, default=3000, help="pool pairs used to measure fit quality")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.run / "config.json")
    if len(cfg.models) != 1:
        raise SystemExit("control: self-distillation runs only")
    pool = subsample(load_pairs(cfg.pairs), cfg.max_pairs, cfg.seed)
    own = np.load(args.run / "cycle1" / "labels-bi.npy")  # the start model's cosines after the range step
    cross = np.load(args.run / "cycle1" / "labels-cross.npy")
    if len(own) != len(pool):
        raise SystemExit(f"control: {len(own)} labels for {len(pool)} pool pairs (pool changed?)")
    enc = BiEncoder.load(cfg.models[0], pooling=cfg.pooling, device="cpu", backend="torch")
    dev = load_pairs(cfg.dev, labeled=True, dedup=False, for_training=False)
    ev = make_evaluator("bi", enc.st_model, enc.source, dev, PairMetric.SPEARMAN)
    fit_cfg = dataclasses.replace(cfg.bi, seed=cfg.bi.seed + 1)  # the cycle-1 bi fit's configuration
    res = fit_bi_encoder(enc.st_model, pool.s1, pool.s2, own, fit_cfg, evaluator=ev, desc="control bi")
    scores = eval_sts(bi_scorer(enc), list(cfg.eval_sets))
    idx = np.random.default_rng(0).choice(len(pool), min(args.sample, len(pool)), replace=False)
    sims = enc.similarity([pool.s1[i] for i in idx], [pool.s2[i] for i in idx])
    out = {
        "run": str(args.run),
        "labels": "cycle1/labels-bi.npy (the start model's own cosines)",
        "fit": res.as_dict(),
        "eval": {k: round(v, 3) for k, v in scores.items()},
        "fit_quality_on_pool_sample": {
            "spearman_vs_own_labels": round(float(spearmanr(sims, own[idx]).statistic), 4),
            "spearman_vs_cross_labels": round(float(spearmanr(sims, cross[idx]).statistic), 4),
            "mse_vs_own_labels": round(float(np.mean((sims - own[idx]) ** 2)), 5),
        },
    }
    (args.run / "control-self-labels.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
