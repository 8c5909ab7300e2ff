"""How much text the Byte2Word selection split shares with its fit rows: the clean rule vs the sub-phrase rule.

    .venv/bin/python bench/byte2word_split_check.py [--data DIR] [--json bench/results/byte2word/split-check.json]

Both splits hold out 2,000 SST-2 *train* rows of >= 10 words (seed 0). The sub-phrase rule (used before
``distill.byte2word_data.selection_split``) drew them from every such row and dropped fit rows that are a
phrase (>= 2 words) of a selection row, or equal to one. Counted for each: selection rows inside a fit row
(whole words, normalised), the same with the same label, and ``split_conflicts`` (fit/select pairs where
either text holds the other).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def subphrase_split(rows: list[tuple[str, int]]) -> tuple[list, list]:
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731 - the old rule's normalisation
    long_rows = [i for i, (t, _) in enumerate(rows) if len(t.split()) >= 10]
    held = set(random.Random(0).sample(long_rows, 2000))
    held_norm = [norm(rows[i][0]) for i in sorted(held)]
    blob, exact = "\n".join(held_norm), set(held_norm)
    fit = [
        (t, y)
        for i, (t, y) in enumerate(rows)
        if i not in held and not (norm(t) in exact or (len(norm(t).split()) >= 2 and norm(t) in blob))
    ]
    return fit, [rows[i] for i in sorted(held)]


def leak(fit: list, select: list) -> dict:
    from pairsmith.distill.byte2word_data import _Grams, split_conflicts, words_key

    grams = _Grams([words_key(t) for t, _ in fit])
    inside = same = 0
    for t, y in select:
        hits = grams.containing(words_key(t))
        inside += bool(hits)
        same += any(fit[j][1] == y for j in hits)
    return {"fit": len(fit), "select": len(select), "select_inside_a_fit_row": inside,
            "of_them_same_label": same, "conflicts": split_conflicts(fit, select)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from bench_common import machine_facts

    from pairsmith.atomic import atomic_write_json
    from pairsmith.distill.byte2word_data import read_labelled, selection_split
    from pairsmith.distill.data import data_root
    from pairsmith.distill.provenance import code_version

    rows = read_labelled(data_root(args.data) / "classification/sst2/sentiment-train")
    clean = selection_split(rows, 2000, min_words=10, seed=0)
    res = {"sub-phrase rule": leak(*subphrase_split(rows)), "selection_split": leak(clean.fit, clean.select)}
    cols = ["fit", "select", "select_inside_a_fit_row", "of_them_same_label", "conflicts"]
    doc = {
        "command": shlex.join(sys.argv),
        "code": code_version(),
        "machine": machine_facts(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_rows": len(rows),
        "splits": res,
        "report": {
            "section": "Byte2Word",
            "title": "Selection split of SST-2 train: text shared with the fit rows",
            "columns": ["split", *cols],
            "rows": [[name, *(r[c] for c in cols)] for name, r in res.items()],
            "notes": "2,000 held-out rows of >= 10 words, seed 0; containment on whole words of normalised "
            "text. conflicts = (fit, select) pairs where either text holds the other.",
        },
    }
    print(json.dumps(doc["report"], indent=1))
    if args.json:
        atomic_write_json(args.json, doc)


if __name__ == "__main__":
    main()
