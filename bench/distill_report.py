"""Distillation tables (DSE, Trans-Encoder) from committed report JSON, and snapshots of runs into it.

    .venv/bin/python bench/distill_report.py [FILE.json ...]
        print every table of the committed reports (default: bench/results/distill/*.json) as markdown
    .venv/bin/python bench/distill_report.py --runs runs [--tag=-e4] --snapshot bench/results/distill/NAME.json
        read the runs' report.json files (teachers, DSE students, every ``te-*`` run) and write one
        committed JSON (command, code, machine, date, per-run reports, and a "reports" list of tables)

A committed report JSON has top-level "command", "code", "machine", "date" and a "report" object
(or a "reports" list) of {"section", "title", "columns", "rows", "notes"}; a file without them is an
error naming the file. ``--tag`` picks the DSE teachers/students of one teacher budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "distill"
REQUIRED = ("command", "code", "machine", "date")


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


def report_tables(doc: dict, where: str) -> list[dict]:
    """The report objects of one committed JSON; a missing key is an error naming ``where``."""
    missing = [k for k in REQUIRED if k not in doc]
    tables = doc.get("reports") or ([doc["report"]] if "report" in doc else [])
    if missing or not tables:
        raise ValueError(f"{where}: not a committed report (missing {missing or ['report']})")
    for t in tables:
        lack = [k for k in ("title", "columns", "rows") if k not in t]
        if lack:
            raise ValueError(f"{where}: report {t.get('title', '?')!r} lacks {lack}")
    return tables


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def markdown(table: dict) -> list[str]:
    """One report object as a markdown table with its notes."""
    cols = table["columns"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
    if table.get("notes"):
        out += ["", str(table["notes"])]
    return out


def _provenance(doc: dict) -> str:
    code = doc.get("code") or {}
    commit = code.get("commit") if isinstance(code, dict) else str(code)
    dirty = " (dirty)" if isinstance(code, dict) and code.get("dirty") else ""
    m = doc.get("machine") or {}
    isa = f"{m.get('cpu')} [{m.get('feature_set')}]" if isinstance(m, dict) else str(m)
    return f"Command: `{doc['command']}`; code {str(commit)[:10]}{dirty}; machine {isa}; {doc['date']}."


def print_committed(paths: list[Path]) -> int:
    bad = 0
    for p in paths:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            tables = report_tables(doc, str(p))
        except (ValueError, json.JSONDecodeError) as exc:
            print(f"distill_report: {exc}", file=sys.stderr)
            bad += 1
            continue
        for t in tables:
            print(f"\n### {t['title']}\n")
            print("\n".join(markdown(t)))
            print(f"\n{_provenance(doc)} Source: {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    return 1 if bad else 0


def _from_markdown(lines: list[str], section: str, title: str) -> dict | None:
    """A report object from the markdown lines the table functions above print."""
    table = [ln for ln in lines if ln.startswith("|")]
    if len(table) < 2:
        return None
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    rest = " ".join(ln for ln in lines if ln and not ln.startswith("|"))
    return {"section": section, "title": title, "columns": split(table[0]), "rows": [split(r) for r in table[2:]], "notes": rest}  # fmt: skip


def snapshot(runs: Path, tag: str, out: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_common import machine_facts

    from pairsmith.atomic import atomic_write_json
    from pairsmith.distill.provenance import code_version

    reports, raw = [], {}
    parts = [("DSE teachers", teachers(runs, tag))]
    parts += [(f"DSE students ({task})", dse(runs, task, tag)) for task in ("stsb", "mrpc")]
    te = sorted(p.parent.name for p in runs.glob("te-*/report.json"))
    parts += [(f"Trans-Encoder {name}", trans_encoder(runs, name)) for name in te]
    for title, lines in parts:
        rep = _from_markdown(lines, "Distillation", title)
        if rep:
            reports.append(rep)
    for p in sorted(runs.glob("*/report.json")):
        if p.parent.name.startswith(("teacher-", "dse-", "te-")):
            raw[p.parent.name] = json.loads(p.read_text())
    if not reports:
        raise SystemExit(f"distill_report: no teacher, dse-* or te-* report.json under {runs}")
    doc = {
        "command": " ".join(sys.argv),
        "code": code_version(),
        "machine": machine_facts(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": raw,
        "reports": reports,
    }
    doc["report"] = reports[0]
    atomic_write_json(out, doc)
    print(f"{len(reports)} tables from {len(raw)} runs -> {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="committed report JSON (default: bench/results/distill/*.json)")
    ap.add_argument("--runs", default=None, help="read the runs' report.json files under this folder")
    ap.add_argument("--tag", default="", help="teacher budget tag of the DSE runs, e.g. -e4")
    ap.add_argument("--snapshot", default=None, help="with --runs: write the committed JSON here")
    args = ap.parse_args()
    if args.runs:
        if not args.snapshot:
            ap.error("--runs needs --snapshot FILE (the committed JSON to write)")
        snapshot(Path(args.runs), args.tag, Path(args.snapshot))
        return 0
    files = [Path(f).resolve() for f in args.files] or sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"distill_report: no committed reports under {RESULTS}", file=sys.stderr)
        return 1
    return print_committed(files)


if __name__ == "__main__":
    raise SystemExit(main())
