"""Summarise a Byte2Word experiment: bench/byte2word_report.py DIR [--prefix P] -> a markdown table.

Reads DIR/{bytes,wordpiece}-s*/report.json (run folders written by bench/byte2word_experiment.sh) or
the committed copies DIR/P-{bytes,wordpiece}-s*.report.json (e.g. ``bench/results/byte2word``
with ``--prefix s7-ft9600``), so a committed table regenerates without the runs. The tables of
``bench/byte2word_choice.py`` print with ``bench/distill_report.py bench/results/byte2word/choice-*.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(out: str, prefix: str = "") -> None:
    runs: dict[str, list[dict]] = {}
    paths = sorted(Path(out).glob("*-s*/report.json")) if not prefix else []
    paths += sorted(Path(out).glob(f"{prefix}-*-s*.report.json")) if prefix else []
    if not paths:
        raise SystemExit(
            f"byte2word_report: no report.json under {out}" + (f" with prefix {prefix}" if prefix else "")
        )
    for path in paths:
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
    args = sys.argv[1:]
    pre = args[args.index("--prefix") + 1] if "--prefix" in args else ""
    main(args[0], pre)
