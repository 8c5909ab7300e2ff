"""Summarise bench/experiments/pooling.sh: per variant mean ± sample std over seeds, paired deltas.

    .venv/bin/python bench/pooling_report.py runs/pooling [--json runs/pooling/summary.json]

Reads RUN/<variant>-s<seed>/{report,sts,wikiqa}.json; prints a markdown table (STS-B dev, SICK-R dev
Spearman x100, WikiQA dev MAP x100, pooler size) and the per-seed delta of each variant minus mean
pooling on the same seed (same training subset), with the goal check (multi-layer >= mean + 0.5 STS-B).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

VARIANTS = ("mean", "multi-layer", "last-layer", "multi-layer-paper")
COLUMNS = (("stsb-dev", "sts"), ("sickr-dev", "sts"), ("MAP", "wikiqa"))


def load(run: Path) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for d in sorted(run.glob("*-s*")):
        if not d.is_dir() or not (d / "wikiqa.json").exists() or not (d / "sts.json").exists():
            continue
        variant, seed = d.name.rsplit("-s", 1)
        rep = json.loads((d / "report.json").read_text())
        row = {
            "stsb-dev": json.loads((d / "sts.json").read_text())["results"]["stsb-dev"],
            "sickr-dev": json.loads((d / "sts.json").read_text())["results"]["sickr-dev"],
            "MAP": json.loads((d / "wikiqa.json").read_text())["results"]["MAP"],
            "pooler_params": rep["pooler_params"],
            "pooler_pct": rep["pooler_pct_of_encoder"],
            "train_pairs": rep["train_pairs"],
            "steps": rep["fit"]["steps"],
        }
        out.setdefault(variant, {})[int(seed)] = row
    return out


def overlap_report(max_pairs: int, seeds: list[int]) -> dict:
    """Share of each evaluation set's pairs / sentences found in a seed's training subset (normalised)."""
    from pairsmith.distill.data import load_retrieval_set, load_sts_set
    from pairsmith.distill.pairsets import load_pairs, subsample
    from pairsmith.distill.textnorm import norm_pair_key, normalise_text

    out: dict = {}
    for seed in seeds:
        train = subsample(load_pairs("stsb-train", labeled=True), max_pairs, seed)
        pairs = {norm_pair_key(a, b) for a, b in zip(train.s1, train.s2, strict=True)}
        sents = {normalise_text(t) for t in train.s1 + train.s2}
        row = {}
        for name in ("stsb-dev", "sickr-dev"):
            ev = load_sts_set(name)
            row[name] = {
                "pairs": round(
                    sum(norm_pair_key(a, b) in pairs for a, b in zip(ev.s1, ev.s2, strict=True)) / len(ev), 4
                ),
                "sentences": round(sum(normalise_text(t) in sents for t in ev.s1 + ev.s2) / (2 * len(ev)), 4),
            }
        wq = load_retrieval_set("wikiqa-dev")
        texts = list(wq.queries.values()) + list(wq.docs.values())
        row["wikiqa-dev"] = {
            "sentences": round(sum(normalise_text(t) in sents for t in texts) / len(texts), 4)
        }
        out[f"seed{seed}"] = row
    return out


def _ms(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.2f} (n=1)" if xs else "-"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--overlap", type=int, default=0, help="also: normalised train/eval overlap at this --max-pairs"
    )
    args = ap.parse_args()
    res = load(args.run)
    lines = [
        "| pooling | seeds | STS-B dev | SICK-R dev | WikiQA dev MAP | pooler params (% of encoder) |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict = {}
    for v in VARIANTS:
        rows = res.get(v, {})
        if not rows:
            continue
        cols = {c: [r[c] for r in rows.values()] for c, _ in COLUMNS}
        any_row = next(iter(rows.values()))
        size = (
            f"{any_row['pooler_params']:,} ({any_row['pooler_pct']:.2f} %)"
            if any_row["pooler_params"]
            else "0"
        )
        lines.append(
            f"| {v} | {','.join(map(str, sorted(rows)))} | "
            + " | ".join(_ms(cols[c]) for c, _ in COLUMNS)
            + f" | {size} |"
        )
        summary[v] = {"seeds": sorted(rows), **{c: cols[c] for c, _ in COLUMNS}}
    base = res.get("mean", {})
    lines += [
        "",
        "| delta vs mean (same seed) | seeds | STS-B dev | SICK-R dev | WikiQA dev MAP |",
        "|---|---|---|---|---|",
    ]
    for v in VARIANTS[1:]:
        seeds = sorted(set(res.get(v, {})) & set(base))
        if not seeds:
            continue
        d = {c: [res[v][s][c] - base[s][c] for s in seeds] for c, _ in COLUMNS}
        lines.append(
            f"| {v} − mean | {','.join(map(str, seeds))} | "
            + " | ".join(_ms(d[c]) for c, _ in COLUMNS)
            + " |"
        )
        summary[f"{v}-minus-mean"] = {"seeds": seeds, **d}
    print("\n".join(lines))
    ml = summary.get("multi-layer-minus-mean")
    if ml:
        gain = statistics.mean(ml["stsb-dev"])
        ok = len(ml["seeds"]) >= 3 and gain >= 0.5
        print(
            f"\ngoal (multi-layer >= mean + 0.5 STS-B dev over >= 3 seeds): {'reached' if ok else 'NOT reached'} "
            f"(mean delta {gain:+.2f} over {len(ml['seeds'])} seeds)"
        )
        summary["goal_reached"] = ok
    if args.overlap:
        summary["overlap"] = overlap_report(args.overlap, sorted({s for v in res.values() for s in v}))
        print("\noverlap (normalised text) of the training subset with each evaluation set:")
        print(json.dumps(summary["overlap"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
