"""Collect a ``bench/uni_experiment.sh`` run into one report JSON (three arms x seeds).

Reads ``ROOT/{uni,bi,cross}-s{seed}/report.json`` and ``ROOT/untrained.json`` (the untrained
bi-encoder on the same evaluation subsets) and writes per run the selection scores (start,
trained, kept) and the evaluation, per arm the mean and spread over seeds, and the goal checks:
warm Uni-Encoder R@1 >= fine-tuned bi-encoder R@1 + 2 on every evaluation set (means over
seeds), and no warm Uni-Encoder seed below the untrained bi-encoder.

    .venv/bin/python bench/uni_report.py runs/uni-warm --json bench/results/uni/warm_three_arms.json

``--reuse OLD.json`` (or ``--reuse REV:bench/results/uni/....json``) adds the runs recorded in an earlier report of the same budget for every
(arm, seed) the folder does not hold (e.g. a seed added later); each such run keeps the commit it
was recorded at (``from``), and a budget that differs is refused.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ARMS = {
    "bi": "bi-encoder, fine-tuned",
    "uni": "Uni-Encoder, warm (context-blind, gated)",
    "cross": "cross-encoder, warm (gated, one candidate per row)",
}


BUDGET_KEYS = (
    "model",
    "data",
    "max_contexts",
    "batch_size",
    "epochs",
    "lr",
    "gate_lr",
    "bi_scale",
    "max_context_tokens",
    "max_candidate_tokens",
    "negatives",
    "select",
    "select_limit",
    "eval_limit",
)


def _set_key(name: str) -> str:
    return re.sub(r"\[:\d+\]$", "", name)


def _gates(model_dir: Path) -> dict | None:
    """How far the cross-segment gates opened: per gate tensor, its most open entry and mean."""
    head = model_dir / "uni_head.safetensors"
    if not head.is_file():
        return None
    from safetensors.numpy import load_file

    return {
        k: {"max": round(float(v.max()), 2), "mean": round(float(v.mean()), 2)}
        for k, v in load_file(str(head)).items()
        if k.startswith("gate_")
    } or None


def _gate_note(runs: list[dict]) -> str:
    opened = [r["gates"]["gate_c2x"]["max"] for r in runs if r["arm"] == "uni" and r.get("gates")]
    if not opened:
        return ""
    return (
        f"Most open candidate->context gate after training: {min(opened):.1f} to {max(opened):.1f} "
        "(start -30): in this budget the warm Uni-Encoder stays close to its bi-encoder."
    )


def _root_code(root: Path) -> str | None:
    return (root / "CODE").read_text().strip() if (root / "CODE").is_file() else None


def _budget(cfg: dict) -> dict:
    return {k: cfg.get(k) for k in BUDGET_KEYS}


def _read_reuse(spec: str) -> dict:
    """A report JSON from a file, or from git as ``REV:PATH`` (a committed earlier version)."""
    if Path(spec).is_file() or ":" not in spec:
        return json.loads(Path(spec).read_text())
    import subprocess

    return json.loads(
        subprocess.run(["git", "show", spec], check=True, capture_output=True, text=True).stdout
    )


def _reuse(old: dict, old_path: str, runs: list[dict], untrained: dict) -> dict:
    """Add the runs of report ``old`` for the (arm, seed) pairs ``runs`` lacks; return the untrained row."""
    have = {(r["arm"], r["seed"]) for r in runs}
    budget = _budget(runs[0]["config"]) if runs else old["budget"]
    if budget != old["budget"]:
        diff = {
            k: (old["budget"].get(k), budget.get(k)) for k in budget if old["budget"].get(k) != budget.get(k)
        }
        raise SystemExit(f"--reuse {old_path}: another budget (old, new): {diff}")
    for r in old["runs"]:
        if (r["arm"], r["seed"]) not in have:
            runs.append({**r, "from": f"{old_path} (code {r.get('code') or old.get('code')})"})
    runs.sort(key=lambda r: (r["arm"], r["seed"]))
    return untrained or old.get("untrained", {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="the experiment's output folder")
    ap.add_argument("--json", required=True, help="where to write the report")
    ap.add_argument("--code", default=None, help="commit the runs used (default: ROOT/CODE)")
    ap.add_argument(
        "--reuse", default=None, help="an earlier report JSON whose runs fill missing (arm, seed)"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import machine_facts

    root = Path(args.root)
    runs: list[dict] = []
    for rep_path in sorted(root.glob("*-s*/report.json")):
        kind, seed = rep_path.parent.name.rsplit("-s", 1)
        rep = json.loads(rep_path.read_text())
        runs.append(
            {
                "arm": kind,
                "seed": int(seed),
                "start_score": rep.get("start_score"),
                "trained_score": rep.get("trained_score"),
                "best_score": rep.get("best_score"),
                "improved": rep.get("improved"),
                "train_contexts": rep["train_contexts"],
                "steps": rep["fit"]["steps"],
                "loss_curve": rep["fit"].get("loss_curve"),
                "wall_s": rep["wall_s"],
                "eval": {_set_key(k): v for k, v in rep["eval"].items()},
                "gates": _gates(rep_path.parent / "model"),
                "config": rep["config"],
                "code": (rep.get("code") or {}).get("commit") or _root_code(root),
            }
        )
    untrained = {}
    if (root / "untrained.json").is_file():
        for row in json.loads((root / "untrained.json").read_text())["rows"]:
            untrained[_set_key(row["set"])] = {k: row[k] for k in ("R@1", "R@2", "R@5", "MRR", "cases")}
    old = _read_reuse(args.reuse) if args.reuse else None
    if old is not None:
        untrained = _reuse(old, args.reuse, runs, untrained)
    sets = sorted({s for r in runs for s in r["eval"]})
    summary: dict = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        summary[arm] = {"seeds": sorted(r["seed"] for r in mine)}
        for s in sets:
            for metric in ("R@1", "MRR"):
                vals = [r["eval"][s][metric] for r in mine if s in r["eval"]]
                summary[arm][f"{s} {metric}"] = {
                    "mean": round(float(np.mean(vals)), 2),
                    "std": round(float(np.std(vals, ddof=1)), 2) if len(vals) > 1 else None,
                    "values": vals,
                }
    goals: dict = {}
    if "uni" in summary and "bi" in summary:
        for s in sets:
            u, b = summary["uni"][f"{s} R@1"]["mean"], summary["bi"][f"{s} R@1"]["mean"]
            goals[f"{s}: uni >= bi + 2 R@1"] = {
                "uni": u,
                "bi": b,
                "delta": round(u - b, 2),
                "met": u >= b + 2,
            }
    if untrained and "uni" in summary:
        below = [
            {"seed": r["seed"], "set": s, "uni": r["eval"][s]["R@1"], "untrained": untrained[s]["R@1"]}
            for r in runs
            if r["arm"] == "uni"
            for s in sets
            if s in untrained and r["eval"][s]["R@1"] < untrained[s]["R@1"]
        ]
        goals["uni never below the untrained bi-encoder (R@1, any seed, any set)"] = {
            "met": not below,
            "below": below,
        }
    columns = ["model", "seeds"] + [f"{s} {m}" for s in sets for m in ("R@1", "MRR")]
    rows = []
    if untrained:
        rows.append(["bi-encoder, untrained (the start)", "-"] + [
            untrained[s][m] if s in untrained else "-" for s in sets for m in ("R@1", "MRR")
        ])  # fmt: skip
    for arm, label in ARMS.items():
        if arm not in summary:
            continue
        cells = []
        for s in sets:
            for m in ("R@1", "MRR"):
                x = summary[arm][f"{s} {m}"]
                cells.append(f"{x['mean']:.2f}" + (f" ± {x['std']:.2f}" if x["std"] is not None else ""))
        rows.append([label, ",".join(map(str, summary[arm]["seeds"]))] + cells)
    cfg = next((r["config"] for r in runs if "from" not in r), runs[0]["config"] if runs else {})
    code = args.code or _root_code(root)
    experiment = (
        (root / "COMMAND").read_text().strip()  # the runs were made by hand, not by the script
        if (root / "COMMAND").is_file()
        else "CONTEXTS={} EVAL_LIMIT={} SELECT_LIMIT={} bash bench/uni_experiment.sh {}".format(
            cfg.get("max_contexts"), cfg.get("eval_limit"), cfg.get("select_limit"), root
        )
    )
    machine = machine_facts()
    added_note = ""
    if old is not None:  # the reused runs' own experiment and machine; the new runs' machine beside them
        experiment = [experiment, old.get("experiment_command")]
        new = [f"{r['arm']} seed {r['seed']}" for r in runs if "from" not in r]
        if old.get("machine") and old["machine"].get("feature_set") != machine.get("feature_set"):
            added_note = f" Made later on another CPU ({machine.get('feature_set')}): {', '.join(new)}."
        machine = {**old["machine"], "added_runs": {"runs": new, "machine": machine}}
    out = {
        "command": " ".join(["python", *sys.argv]),
        "experiment_command": experiment,
        "code": code,
        "machine": machine,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shared_machine": "2 vCPU shared with other jobs (load average well above 2); one thread per run",
        "budget": _budget(cfg),
        "untrained": untrained,
        "summary": summary,
        "goals": goals,
        "runs": runs,
        "report": {
            "section": "Uni-Encoder",
            "title": "Response selection at one budget: three arms from one bi-encoder (R@1 / MRR x 100, mean ± sd over seeds)",
            "columns": columns,
            "rows": rows,
            "notes": (
                f"All arms start from {cfg.get('model')} (all-MiniLM-L6-v2) and train on the same "
                f"{cfg.get('max_contexts')} MuTual train contexts per seed ({cfg.get('epochs')} epoch, batch "
                f"{cfg.get('batch_size')}, lr {cfg.get('lr')}), select on mutual-select (first "
                f"{cfg.get('select_limit')} contexts; the start model is a candidate) and report the first "
                f"{cfg.get('eval_limit')} contexts of mutual-heldout and DailyDialog++ dev. A small CPU budget. "
                + "; ".join(
                    f"{k}: {'met' if v['met'] else 'NOT met'}"
                    + (f" (delta {v['delta']:+.2f})" if "delta" in v else "")
                    for k, v in goals.items()
                )
                + ". "
                + _gate_note(runs)
                + added_note
            ),
        },
    }
    from pairsmith.atomic import atomic_write_json

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, out)
    print(json.dumps({"rows": rows, "goals": goals}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
