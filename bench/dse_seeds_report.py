"""Mean and spread over seeds of the DSE runs of bench/experiments/dse_mpnet.sh.

.venv/bin/python bench/dse_seeds_report.py --runs runs [--prefix dse-mpnet-stsb] [--seeds 2021 2022 2023]
    [--alphas 0.5 0] [--tag ""] [--json bench/results/distill/dse-mpnet-seeds.json]
.venv/bin/python bench/dse_seeds_report.py --from-json bench/results/distill/dse-mpnet-seeds.json

Reads ``<runs>/<prefix>-a<alpha>-s<seed><tag>/report.json`` and prints one markdown table: the undistilled
student, the labels-only student (alpha 0), the DSE student (alpha > 0) and the teacher, each on the
selection split (``dev`` in the reports: it picks the checkpoint, so its column is optimistic) and on the
test set (STS-B dev here: never used for selection). Then the target check, read on the test column:
the DSE student's mean within 5% of the teacher, and above both student baselines (mean, and per seed
against the labels-only student of the same seed).

``--json FILE`` writes the figures as a committed report (command, code, machine, date, the per-seed
figures, the goal and a "report" table); ``--from-json FILE`` prints the table of such a file again
without the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COLUMNS = ("dev", "test")  # dev = the selection split, test = the reported set


def summarize(values: list[float]) -> dict:
    """Mean, sample standard deviation (ddof 1; 0 for one value), min, max and n."""
    if not values:
        raise ValueError("summarize: no values")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "mean": statistics.fmean(values),
        "sd": sd,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _score(row: dict | None, col: str, metric: str) -> float | None:
    if not row or col not in row or row[col] is None:
        return None
    return float(row[col][metric])


def collect(runs: Path, prefix: str, seeds: list[int], alphas: list[str], tag: str = "") -> dict:
    """Per-row, per-column lists of scores (one per seed) read from the runs' report.json files.

    The undistilled and the teacher rows do not depend on the seed: every run's copy is collected and
    must agree (``fixed_rows_agree``), else the runs did not share a student or a teacher.
    """
    rows: dict[str, dict[str, list[float]]] = {}
    per_seed: dict[str, dict[int, float]] = {}
    missing: list[str] = []
    metric = None
    for a in alphas:
        name = "labels_only" if float(a) == 0.0 else f"dse_a{a}"
        for seed in seeds:
            path = runs / f"{prefix}-a{a}-s{seed}{tag}" / "report.json"
            if not path.exists():
                missing.append(str(path))
                continue
            rep = json.loads(path.read_text(encoding="utf-8"))
            metric = metric or rep["metric"]
            for key, label in (("student", name), ("student_start", "undistilled"), ("teacher", "teacher")):
                for col in COLUMNS:
                    v = _score(rep["rows"].get(key), col, rep["metric"])
                    if v is not None:
                        rows.setdefault(label, {}).setdefault(col, []).append(v)
            t = _score(rep["rows"].get("student"), "test", rep["metric"])
            if t is not None:
                per_seed.setdefault(name, {})[seed] = t
    fixed_ok = all(
        max(vals) - min(vals) < 1e-9
        for lab in ("undistilled", "teacher")
        for vals in rows.get(lab, {}).values()
    )
    return {
        "metric": metric,
        "rows": rows,
        "per_seed_test": per_seed,
        "missing": missing,
        "fixed_rows_agree": fixed_ok,
    }


def goals(data: dict, dse_row: str) -> dict:
    """The target on the test column: within 5% of the teacher and above both student baselines."""
    rows = data["rows"]
    mean = lambda lab: summarize(rows[lab]["test"])["mean"]  # noqa: E731
    dse, teacher = mean(dse_row), mean("teacher")
    base0, start = mean("labels_only"), mean("undistilled")
    a = data["per_seed_test"].get(dse_row, {})
    b = data["per_seed_test"].get("labels_only", {})
    paired = {s: a[s] - b[s] for s in sorted(a) if s in b}
    return {
        "within_5pct_of_teacher": dse >= 0.95 * teacher,
        "gap_to_teacher_pct": 100.0 * (teacher - dse) / teacher,
        "above_undistilled": dse > start,
        "above_labels_only_mean": dse > base0,
        "dse_minus_labels_only_per_seed": paired,
        "above_labels_only_every_seed": bool(paired) and all(d > 0 for d in paired.values()),
    }


def _cell(vals: list[float] | None) -> str:
    if not vals:
        return "—"
    s = summarize(vals)
    if s["n"] == 1 or s["max"] == s["min"]:
        return f"{s['mean']:.2f}"
    return f"{s['mean']:.2f} ± {s['sd']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"


def table(data: dict, dse_row: str) -> list[str]:
    rep = report_object(data, dse_row)
    out = ["| " + " | ".join(rep["columns"]) + " |", "|" + "---|" * len(rep["columns"])]
    return out + [f"| {a} | {b} | {c} | **{d}** |" for a, b, c, d in rep["rows"]]


def report_object(data: dict, dse_row: str, notes: str = "") -> dict:
    """The table as a committed "report" object (section, title, columns, rows, notes)."""
    labels = {
        "undistilled": "undistilled default model (cosine)",
        "labels_only": "default fine-tuned on the labels alone (alpha 0)",
        dse_row: f"DSE student (labels + teacher, alpha {dse_row.removeprefix('dse_a')})",
        "teacher": "teacher (cross-encoder)",
    }
    rows = []
    for key, label in labels.items():
        r = data["rows"].get(key, {})
        rows.append([label, len(r.get("test", [])), _cell(r.get("dev")), _cell(r.get("test"))])
    return {
        "section": "Distillation",
        "title": "DSE over seeds: undistilled, labels-only, DSE student, teacher",
        "columns": ["row", "runs", "selection split (picks the checkpoint)", "STS-B dev (test)"],
        "rows": rows,
        "notes": notes or "Mean ± sample sd [min, max] over seeds; the selection column is optimistic.",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--prefix", default="dse-mpnet-stsb")
    ap.add_argument("--seeds", nargs="+", type=int, default=[2021, 2022, 2023])
    ap.add_argument("--alphas", nargs="+", default=["0.5", "0"])
    ap.add_argument("--tag", default="")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--from-json", default=None, help="print the table of a committed report JSON and exit")
    args = ap.parse_args()
    if args.from_json:
        from distill_report import markdown, report_tables

        doc = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        for t in report_tables(doc, args.from_json):
            print("\n".join(markdown(t)))
        if doc.get("goals"):
            print("\n" + json.dumps(doc["goals"], indent=1))
        return 0
    data = collect(Path(args.runs), args.prefix, args.seeds, args.alphas, args.tag)
    dse_row = next(f"dse_a{a}" for a in args.alphas if float(a) != 0.0)
    print("\n".join(table(data, dse_row)))
    if data["missing"]:
        print("\nmissing: " + ", ".join(data["missing"]))
    if not data["fixed_rows_agree"]:
        print("\nWARNING: the undistilled/teacher rows differ between runs")
    g = goals(data, dse_row) if all(k in data["rows"] for k in (dse_row, "labels_only", "teacher")) else None
    if g:
        print("\n" + json.dumps(g, indent=1))
    if args.json:
        from bench_common import machine_facts

        from pairsmith.atomic import atomic_write_json
        from pairsmith.distill.provenance import code_version

        note = (
            f"{args.prefix}, seeds {' '.join(map(str, args.seeds))}; mean ± sample sd [min, max] over seeds."
        )
        if data["missing"]:
            note += f" Missing runs: {len(data['missing'])}."
        atomic_write_json(
            args.json,
            {
                "command": " ".join(sys.argv),
                "code": code_version(),
                "machine": machine_facts(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **data,
                "goals": g,
                "report": report_object(data, dse_row, note),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
