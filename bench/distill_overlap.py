"""Overlap of a distillation pool with the STS 7-task evaluation sets: exact strings vs normalised text.

Recomputes the "evaluation setting" figures of the distillation reports with the
normalised comparison the jobs now use (pairsmith.distill.textnorm), beside the exact-string
comparison the earlier runs reported.

    .venv/bin/python bench/distill_overlap.py [--json runs/overlap.json]
"""

from __future__ import annotations

import argparse
import json

from pairsmith.distill.data import STS7, PairSet, load_sts_set
from pairsmith.distill.fit_config import DEFAULT_SEED
from pairsmith.distill.pairsets import POOLS, drop_pairs_in, load_pairs, overlap, subsample


def _exact_pool(spec: str) -> PairSet:
    """The pool as the earlier code built it: exact-string deduplication, no exclusion."""
    seen: dict[tuple[str, str], None] = {}
    for name in POOLS.get(spec, [spec]):
        ps = load_pairs(name, dedup=False)
        for p in zip(ps.s1, ps.s2, strict=True):
            seen.setdefault(p, None)
    keys = list(seen)
    return PairSet(spec, [a for a, _ in keys], [b for _, b in keys])


def _exact_overlap(pool: PairSet) -> dict[str, float]:
    keys = set(zip(pool.s1, pool.s2, strict=True))
    keys |= {(b, a) for a, b in keys}
    out = {}
    for name in STS7:
        ps = load_sts_set(name)
        out[name] = round(sum(p in keys for p in zip(ps.s1, ps.s2, strict=True)) / len(ps), 4)
    return out


def _row(label: str, exact_pool: PairSet, norm_pool: PairSet) -> dict:
    """The pool as the earlier runs built it (exact strings), measured both ways, and as built now."""
    old = overlap(exact_pool, list(STS7))
    new = overlap(norm_pool, list(STS7))
    return {
        "pool": label,
        "earlier runs: pairs": len(exact_pool),
        "earlier runs: reported (exact strings)": _exact_overlap(exact_pool),
        "earlier runs: true (normalised)": old.per_set,
        "earlier runs: true setting": old.setting,
        "now: pairs": len(norm_pool),
        "now: overlap (normalised)": new.per_set,
        "now: setting": new.setting,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    full_exact, full_norm = _exact_pool("sts-all"), load_pairs("sts-all")
    for n in (3000, 6000, 8000):
        rows.append(
            _row(
                f"sts-all --max-pairs {n} (seed {DEFAULT_SEED})",
                subsample(full_exact, n, DEFAULT_SEED),
                subsample(full_norm, n, DEFAULT_SEED),
            )
        )
    rows.append(_row("sts-all (whole pool)", full_exact, full_norm))
    ind_exact = _exact_pool("sts-inductive")
    raw_ind = load_pairs("stsb-train,sickr-train")  # normalised dedup, no exclusion
    rows.append(_row("stsb-train + sickr-train (the old sts-inductive)", ind_exact, raw_ind))
    rows.append(_row("stsb-train + sickr-train --exclude-eval-pairs, exact-string exclusion (old)",
                     _exact_drop(ind_exact), _exact_drop(raw_ind)))  # fmt: skip
    rows.append(
        _row("sts-inductive (now: minus the STS7 pairs, normalised)", ind_exact, load_pairs("sts-inductive"))
    )
    rows.append(
        _row("sts-all --exclude-eval-pairs (normalised)", full_exact, drop_pairs_in(full_norm, list(STS7)))
    )
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


def _exact_drop(pool: PairSet) -> PairSet:
    banned: set[tuple[str, str]] = set()
    for name in STS7:
        ps = load_sts_set(name)
        for a, b in zip(ps.s1, ps.s2, strict=True):
            banned |= {(a, b), (b, a)}
    idx = [i for i, p in enumerate(zip(pool.s1, pool.s2, strict=True)) if p not in banned]
    return PairSet(pool.name, [pool.s1[i] for i in idx], [pool.s2[i] for i in idx])


if __name__ == "__main__":
    raise SystemExit(main())
