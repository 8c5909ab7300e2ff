"""Summarise a Byte2Word experiment: bench/byte2word_report.py OUTDIR -> a markdown table on stdout.

Reads OUTDIR/{bytes,wordpiece}-s*/report.json (written by bench/byte2word_experiment.sh).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(out: str) -> None:
    runs: dict[str, list[dict]] = {}
    for path in sorted(Path(out).glob("*-s*/report.json")):
        rep = json.loads(path.read_text())
        runs.setdefault(rep["unit"], []).append(rep)
    cols = ["clean", "swap", "drop", "case", "all", "advglue"]

    def row(rep: dict) -> dict:
        n = rep.get("noise", {})
        vals = {"clean": rep["dev_acc"], "advglue": n.get("advglue_sst2", {}).get("acc")}
        vals |= {k: n[k]["mean"] for k in ("swap", "drop", "case", "all") if k in n}
        return vals

    print(
        "| model | seeds | input-emb params | MLM loss first→last 50 | "
        + " | ".join(cols)
        + " | drop clean→all | wall s |"
    )
    print("|---" * (len(cols) + 6) + "|")
    for unit, reps in runs.items():
        rows = [row(r) for r in reps]
        cell = []
        for c in cols:
            xs = [r[c] for r in rows if r.get(c) is not None]
            cell.append(
                f"{100 * np.mean(xs):.1f}" + (f" ± {100 * np.std(xs):.1f}" if len(xs) > 1 else "")
                if xs
                else "-"
            )
        drops = [r["clean"] - r["all"] for r in rows if "all" in r]
        r0 = reps[0]
        print(
            f"| {unit} | {len(reps)} | {r0['params_input_embedding']:,} | "
            f"{np.mean([r['mlm_loss_first50'] for r in reps]):.2f}→{np.mean([r['mlm_loss_last50'] for r in reps]):.2f} | "
            + " | ".join(cell)
            + f" | {100 * np.mean(drops):.1f} | {np.mean([r['wall_s'] for r in reps]):.0f} |"
        )
    if {"bytes", "wordpiece"} <= runs.keys():
        b, w = runs["bytes"][0], runs["wordpiece"][0]
        print(
            f"\ninput-embedding ratio bytes/wordpiece: {b['params_input_embedding'] / w['params_input_embedding']:.2%}"
        )
        print(f"commit: {b.get('commit')}")


if __name__ == "__main__":
    main(sys.argv[1])
