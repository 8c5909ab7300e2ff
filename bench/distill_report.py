"""Print markdown tables of the distillation runs from their report.json files.

.venv/bin/python bench/distill_report.py --runs runs [--tag=-e4]

``--tag`` picks the DSE teachers/students of one teacher budget (dse_teachers.sh/dse_students.sh TAG);
every ``te-*`` run with a report is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _load(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.exists() else None


def _f(x, nd=2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _code(r: dict) -> str:
    c = r.get("code")
    if not c:
        return "not recorded (run before code versions were recorded)"
    return (
        f"{str(c.get('commit'))[:10]}{' (dirty ' + str(c.get('diff_sha256')) + ')' if c.get('dirty') else ''}"
    )


def teachers(runs: Path, tag: str = "") -> list[str]:
    out = [
        "| teacher | train pairs | fit (pairs/s) | dev | dev, both orders | test |",
        "|---|---|---|---|---|---|",
    ]
    names = [f"teacher-stsb{tag}", f"teacher-mrpc{tag}", f"teacher-stsb-ft{tag}"]
    names += sorted(p.parent.name for p in runs.glob("teacher-mpnet-*/report.json"))
    for name in names:
        r = _load(runs / name / "report.json")
        if not r:
            continue
        m = r["metric"]
        dev, test = r.get("dev", {}), r.get("test", {})
        t = f"acc {_f(test.get('accuracy'))} / F1 {_f(test.get('f1'))}" if test else "—"
        d = f"{m} {_f(dev.get(m))}" + (f" (F1 {_f(dev.get('f1'))})" if "f1" in dev else "")
        out.append(
            f"| {name} | {r['train_pairs']} | {r['fit']['examples_per_s']} | {d} | {_f(dev.get(m + '_symmetric'))} | {t} |"
        )
    return out


# Extra DSE rows: run-name suffix -> row label.
VARIANTS = {
    "a0.5-knn": "DSE student + teacher-labelled kNN pairs (--augment knn, k=1)",
    "a0.5-mlp": "DSE student, MLP head (rescoring; not an embedding)",
    "a0.5-ftteacher": "DSE student, teacher started from the labels-only student",
}


def dse(runs: Path, task: str, tag: str = "") -> list[str]:
    a0 = _load(runs / f"dse-{task}-a0{tag}" / "report.json")
    a5 = _load(runs / f"dse-{task}-a0.5{tag}" / "report.json")
    if not (a0 or a5):
        return []
    ref = a5 or a0
    binary = ref["metric"] == "accuracy"
    if binary:
        out = ["| row | val acc | test acc | test F1 |", "|---|---|---|---|"]
    else:
        out = ["| row | STS-B dev Spearman |", "|---|---|"]

    def cells(row: dict | None) -> str:
        if not row:
            return "— |" * (3 if binary else 1)
        if binary:
            return f"{_f(row['dev']['accuracy'])} | {_f(row['test']['accuracy'])} | {_f(row['test']['f1'])} |"
        return f"{_f(row['dev']['spearman'])} |"

    out.append(f"| undistilled default model (cosine) | {cells(ref['rows'].get('student_start'))}")
    if a0:
        out.append(f"| default fine-tuned on the labels alone (alpha 0) | {cells(a0['rows'].get('student'))}")
    if a5:
        out.append(f"| DSE student (labels + teacher, alpha 0.5) | {cells(a5['rows'].get('student'))}")
    out.append(f"| teacher (cross-encoder, both orders) | {cells(ref['rows'].get('teacher'))}")
    for suffix, label in VARIANTS.items():
        v = _load(runs / f"dse-{task}-{suffix}{tag}" / "report.json")
        if v:
            extra = f" ({v['augment']['pairs']} extra pairs)" if v.get("augment") else ""
            out.append(f"| {label}{extra} | {cells(v['rows'].get('student'))}")
            if suffix == "a0.5-ftteacher":
                out.append(f"| its teacher (both orders) | {cells(v['rows'].get('teacher'))}")
    return out


def trans_encoder(runs: Path, name: str) -> list[str]:
    r = _load(runs / name / "report.json")
    if not r:
        return []
    sets = list(r["config"]["eval_sets"])
    sel = r.get("selection_set") or r["config"].get("dev")
    names = [f"{s}*" if s == sel else s for s in sets]
    head = "| cycle | model | " + " | ".join(names) + " | avg (all) | **avg without the selection set** |"
    out = [head, "|" + "---|" * (len(sets) + 4)]
    for row in r["cycles"]:
        for kind in ("bi", "cross"):
            for tag, v in row[kind].items():
                ev = v.get("eval", {})
                label = f"{kind} {tag}" if len(r["models"]) > 1 else kind
                vals = " | ".join(_f(ev.get(s)) for s in sets)
                rest = [ev[s] for s in sets if s != sel and s in ev]
                held = ev.get("avg_heldout", sum(rest) / len(rest) if rest else None)
                out.append(f"| {row['cycle']} | {label} | {vals} | {_f(ev.get('avg'))} | **{_f(held)}** |")
    lab = r["cycles"][1].get("labels_bi", {}) if len(r["cycles"]) > 1 else {}
    comb = (lab or {}).get("combined", {})
    out.append("")
    out.append(
        f"Setting: **{r['evaluation_setting']['setting']}**; {r['unlabeled_pairs']} unlabeled pairs; "
        f"bi labels mean {comb.get('mean')} (std {comb.get('std')}, {100 * comb.get('frac_below_0', 0):.1f}% < 0); "
        f"wall time {r['wall_s'] / 60:.1f} min; best: {json.dumps(r['best'])}; "
        f"* = the selection set ({sel}); code: {_code(r)}."
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--tag", default="", help="teacher budget tag of the DSE runs, e.g. -e4")
    args = ap.parse_args()
    runs = Path(args.runs)
    print("### Teachers\n")
    print("\n".join(teachers(runs, args.tag)))
    for task in ("stsb", "mrpc"):
        print(f"\n### DSE {task}\n")
        print("\n".join(dse(runs, task, args.tag)))
    sp = _load(runs / f"dse-speed{args.tag}.json")
    if sp:
        print(f"\n### Speed\n\n```json\n{json.dumps(sp, indent=1)}\n```")
    for name in sorted(p.parent.name for p in runs.glob("te-*/report.json")):
        lines = trans_encoder(runs, name)
        if lines:
            print(f"\n### {name}\n")
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
