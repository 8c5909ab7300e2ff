"""Split STS-B train into a fit part and a selection part (seeded), so that STS-B dev is only reported.

Writes TSV pair files (s1 TAB s2 TAB score, scores 0-5) outside the repository:

    .venv/bin/python bench/experiments/stsb_split.py --out runs/stsb-split --select 500 --seed 2021
    # -> runs/stsb-split/fit.tsv (5,203 pairs), runs/stsb-split/select.tsv (500 pairs)

Pairs are split after normalised deduplication, so no pair is on both sides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pairsmith.atomic import atomic_write_text
from pairsmith.distill.fit_config import DEFAULT_SEED
from pairsmith.distill.pairsets import load_pairs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/stsb-split")
    ap.add_argument("--select", type=int, default=500, help="pairs held out for checkpoint selection")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args()
    ps = load_pairs("stsb-train", labeled=True)
    idx = np.random.default_rng(args.seed).permutation(len(ps))
    sel, fit = np.sort(idx[: args.select]), np.sort(idx[args.select :])
    out = Path(args.out)
    for name, rows in (("fit", fit), ("select", sel)):
        text = "".join(f"{ps.s1[i]}\t{ps.s2[i]}\t{float(ps.scores[i]):g}\n" for i in rows)  # type: ignore[index]
        atomic_write_text(out / f"{name}.tsv", text)
        print(f"{out / name}.tsv: {len(rows)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
