"""Byte2Word: choose query init, byte layers and budget on a clean selection split, then SST-2 dev.

    bench/byte2word_choice.py run OUTDIR [--config small] [--seeds 0,1] [--final-seeds 0,1,2]
    bench/byte2word_choice.py report OUTDIR --json bench/results/byte2word/choice-small

``run`` (one process, one thread, resumable: a finished step is read back, never rerun):

1. ``split``: ``bench/byte2word_probe.py split`` (2,000 selection rows of SST-2 train that share no
   text with the fit rows, whole-word containment both ways).
2. ``variants``: bytes, no MLM, ``--probe-ft`` fine-tuning steps on fit, accuracy on select, for
   each (query std, byte layers) in :data:`VARIANTS` and each ``--seeds``. The best mean wins
   (ties: the earlier, simpler entry).
3. ``budget``: the chosen variant, then WordPiece, at ``--budgets`` (MLM steps, fine-tuning steps),
   seed 0 (the bytes run at the probes' budget is the seed-0 probe itself). The budget with the best
   bytes selection accuracy wins.
4. ``sst2``: bytes and WordPiece at the chosen settings, trained on all of SST-2 train, accuracy
   on SST-2 dev (and its noisy copies), for each ``--final-seeds`` (seed-major order).

``report`` writes one JSON per stage that ran, ``STEM-{variants,budget,sst2}.json`` (command, code,
machine, date, every run, the choices, and that stage's "report" table) from OUTDIR/steps.jsonl and
the SST-2 runs' report.json files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS: tuple[tuple[float, int], ...] = ((0.02, 0), (1.0, 0), (0.02, 1), (1.0, 1))


def _steps(out: Path) -> list[dict]:
    path = out / "steps.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(d: dict) -> tuple:
    return (d["stage"], d["unit"], d["query_std"], d["byte_layers"], d["mlm_steps"], d["ft_steps"], d["seed"])


def _probe(
    out: Path, args, stage: str, unit: str, qstd: float, layers: int, mlm: int, ft: int, seed: int
) -> dict:
    """One fit/select run, or its earlier result."""
    want = {"stage": stage, "unit": unit, "query_std": qstd, "byte_layers": layers, "mlm_steps": mlm, "ft_steps": ft, "seed": seed}  # fmt: skip
    for d in _steps(out):
        if _key(d) == _key(want):
            return d
    from pairsmith.distill.byte2word import Byte2WordTrainConfig, Trainer
    from pairsmith.distill.byte2word_data import read_corpus, read_labelled

    fit, sel = read_labelled(out / "split" / "fit.tsv"), read_labelled(out / "split" / "select.tsv")
    cfg = Byte2WordTrainConfig(
        out=str(out / "tmp"),
        mlm_corpus=str(out / "corpus.txt"),
        unit=unit,
        size=args.config,
        max_steps=mlm,
        ft_steps=ft,
        seed=seed,
        byte_layers=layers,
        query_std=qstd,
    )
    t0 = time.time()
    tr = Trainer(cfg)
    tr.pretrain(read_corpus(cfg.mlm_corpus) if mlm else [], mlm)
    losses = tr.finetune(fit, ft)
    want |= {
        "select_acc": tr.accuracy(sel),
        "ft_loss_last50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "wall_s": round(time.time() - t0, 1),
    }
    with open(out / "steps.jsonl", "a") as fh:
        fh.write(json.dumps(want) + "\n")
    print(json.dumps(want), flush=True)
    return want


def _reuse(out: Path, qstd: float, layers: int, ft: int) -> None:
    """Record the seed-0 variant probe as the bytes budget run with the same settings."""
    steps = _steps(out)
    want = {"stage": "budget", "unit": "bytes", "query_std": qstd, "byte_layers": layers, "mlm_steps": 0, "ft_steps": ft, "seed": 0}  # fmt: skip
    if any(_key(d) == _key(want) for d in steps):
        return
    src = next(d for d in steps if _key(d) == _key(want | {"stage": "variants"}))
    with open(out / "steps.jsonl", "a") as fh:
        fh.write(json.dumps(src | {"stage": "budget", "reused_from": "variants"}) + "\n")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def choose_variant(steps: list[dict]) -> tuple[float, int]:
    runs = [d for d in steps if d["stage"] == "variants"]
    scores = {v: _mean(accs) for v in VARIANTS if (accs := [d["select_acc"] for d in runs if (d["query_std"], d["byte_layers"]) == v])}  # fmt: skip
    return max(scores, key=lambda v: (scores[v], -VARIANTS.index(v)))


def choose_budget(steps: list[dict], budgets: list[tuple[int, int]]) -> tuple[int, int]:
    runs = {(d["mlm_steps"], d["ft_steps"]): d["select_acc"] for d in steps if d["stage"] == "budget" and d["unit"] == "bytes"}  # fmt: skip
    got = [b for b in budgets if b in runs]
    return max(got, key=lambda b: (runs[b], -budgets.index(b)))


def run(args) -> None:
    import torch

    from pairsmith.distill.byte2word import Byte2WordTrainConfig, train_byte2word

    torch.set_num_threads(1)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "corpus.txt").exists():
        from pairsmith.distill.byte2word_data import build_mlm_corpus

        build_mlm_corpus(out / "corpus.txt", args.data)
    if not (out / "split" / "split.json").exists():
        from byte2word_probe import split

        split(out / "split", args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = _budgets(args.budgets)
    for seed in seeds:
        for qstd, layers in VARIANTS:
            _probe(out, args, "variants", "bytes", qstd, layers, 0, args.probe_ft, seed)
    qstd, layers = choose_variant(_steps(out))
    for unit in ("bytes", "wordpiece"):
        for mlm, ft in budgets:
            if unit == "bytes" and (mlm, ft) == (0, args.probe_ft) and 0 in seeds:
                _reuse(out, qstd, layers, args.probe_ft)  # the same run as the variant probe of seed 0
            else:
                q, n = (qstd, layers) if unit == "bytes" else (1.0, 0)
                _probe(out, args, "budget", unit, q, n, mlm, ft, 0)
    mlm, ft = choose_budget(_steps(out), budgets)
    for seed in (int(s) for s in args.final_seeds.split(",")):
        for unit in ("bytes", "wordpiece"):
            d = out / f"sst2-{unit}-s{seed}"
            if (d / "report.json").exists():
                continue
            rep = train_byte2word(
                Byte2WordTrainConfig(
                    out=str(d),
                    mlm_corpus=str(out / "corpus.txt"),
                    task="sst2",
                    data=args.data,
                    unit=unit,
                    size=args.config,
                    max_steps=mlm,
                    ft_steps=ft,
                    byte_layers=layers if unit == "bytes" else 0,
                    query_std=qstd,
                    seed=seed,
                    select="none",  # all of SST-2 train, the last step: the budget is the choice
                )
            )
            print(json.dumps({k: rep[k] for k in ("unit", "dev_acc", "wall_s")} | {"seed": seed}), flush=True)


def _budgets(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in b.split(":")) for b in text.split(",")]  # type: ignore[misc]


def report(args) -> None:
    from bench_common import machine_facts

    from pairsmith.atomic import atomic_write_json
    from pairsmith.distill.provenance import code_version

    out = Path(args.outdir)
    steps = _steps(out)
    split = json.loads((out / "split" / "split.json").read_text())
    budgets = _budgets(args.budgets)
    variant = choose_variant(steps)
    rows_v = []
    for v in VARIANTS:
        accs = [
            d["select_acc"]
            for d in steps
            if d["stage"] == "variants" and (d["query_std"], d["byte_layers"]) == v
        ]
        if accs:
            rows_v.append([v[0], v[1], len(accs), round(100 * _mean(accs), 2), " / ".join(f"{100 * a:.1f}" for a in accs)])  # fmt: skip
    rows_b = [
        [d["unit"], d["mlm_steps"], d["ft_steps"], d["seed"], round(100 * d["select_acc"], 2), d["wall_s"]]
        for d in steps
        if d["stage"] == "budget"
    ]
    got_budget = [b for b in budgets if any(d["stage"] == "budget" and (d["mlm_steps"], d["ft_steps"]) == b and d["unit"] == "bytes" for d in steps)]  # fmt: skip
    budget = choose_budget(steps, budgets) if got_budget else None
    finals: dict[str, list[dict]] = {}
    for p in sorted(out.glob("sst2-*-s*/report.json")):
        rep = json.loads(p.read_text())
        rep["seed"] = int(p.parent.name.rsplit("-s", 1)[1])
        finals.setdefault(rep["unit"], []).append(rep)
    rows_f = []
    for unit, reps in finals.items():
        accs = [r["dev_acc"] for r in reps]
        noisy = [r["noise"]["all"]["mean"] for r in reps if "noise" in r]
        rows_f.append(
            [
                unit,
                ",".join(str(r["seed"]) for r in reps),
                reps[0]["mlm_steps"],
                reps[0]["ft_steps"],
                reps[0]["params_input_embedding"],
                round(100 * _mean(accs), 2),
                round(100 * (max(accs) - min(accs)) / 2, 2),
                round(100 * _mean(noisy), 2) if noisy else None,
            ]
        )
    missing = [f"sst2-{u}-s{s}" for s in args.final_seeds.split(",") for u in ("bytes", "wordpiece") if not (out / f"sst2-{u}-s{s}" / "report.json").exists()]  # fmt: skip
    have = {(d["stage"], d["unit"], d["query_std"], d["byte_layers"], d["mlm_steps"], d["ft_steps"], d["seed"]) for d in steps}  # fmt: skip
    missing = (
        [
            f"variant q{q} l{n} s{seed}"
            for seed in (int(x) for x in args.seeds.split(","))
            for q, n in VARIANTS
            if ("variants", "bytes", q, n, 0, args.probe_ft, seed) not in have
        ]
        + [
            f"budget {u} {m}:{f}"
            for u in ("bytes", "wordpiece")
            for m, f in budgets
            if not any(k[0] == "budget" and k[1] == u and (k[4], k[5]) == (m, f) for k in have)
        ]
        + missing
    )
    caveat = f"{args.config} config; one thread per run, runs one after another. "
    caveat += f"Not run in the time given: {', '.join(missing)}. " if missing else ""
    caveat += f"{args.notes} " if args.notes else ""
    doc = {
        "command": shlex.join(sys.argv),
        "run_command": args.run_command,
        "code": code_version(),
        "run_code": _run_code(out),
        "machine": machine_facts(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "split": split,
        "steps": steps,
        "chosen": {"query_std": variant[0], "byte_layers": variant[1], "budget_mlm_ft": budget},
        "sst2": {
            u: [
                {
                    k: r.get(k)
                    for k in (
                        "seed",
                        "dev_acc",
                        "dev_n",
                        "noise",
                        "wall_s",
                        "commit",
                        "mlm_steps",
                        "ft_steps",
                        "size",
                    )
                }
                for r in reps
            ]
            for u, reps in finals.items()
        },  # fmt: skip
        "missing": missing,
        "reports": [
            {
                "section": "Byte2Word",
                "title": "Query init and byte layers, chosen on a clean SST-2 train split (bytes, no MLM)",
                "columns": ["query std", "byte layers", "seeds", "select acc (mean)", "per seed"],
                "rows": rows_v,
                "notes": f"Selection split of SST-2 train: {split['select']} rows of >= 10 words that no other row "
                f"contains; {split['fit']} fit rows, none inside or holding a selection row (whole words, "
                f"normalised; conflicts {split['conflicts']}). {args.probe_ft} fine-tuning steps. {caveat}"
                f"Chosen: query std {variant[0]}, {variant[1]} byte layer(s).",
            },
            {
                "section": "Byte2Word",
                "title": "Budget (MLM steps, fine-tuning steps) on the same split, seed 0",
                "columns": ["unit", "MLM steps", "fine-tuning steps", "seed", "select acc", "wall s"],
                "rows": rows_b,
                "notes": f"Chosen: {budget} (best bytes selection accuracy). {caveat}",
            },
            {
                "section": "Byte2Word",
                "title": "SST-2 dev: bytes vs WordPiece at the chosen settings and budget",
                "columns": [
                    "unit",
                    "seeds",
                    "MLM steps",
                    "fine-tuning steps",
                    "input-embedding params",
                    "dev acc (mean)",
                    "half range",
                    "dev acc, all noise (mean)",
                ],  # fmt: skip
                "rows": rows_f,
                "notes": "Trained on all of SST-2 train, the last step is the model (dev is never used to pick). "
                "Noise: swap 0.05 + drop 0.05 + case 0.1 per letter, 3 noise seeds. " + caveat,
            },
        ],
    }
    tables = dict(zip(("variants", "budget", "sst2"), doc.pop("reports"), strict=True))
    for stage, table in tables.items():
        if table["rows"]:  # a stage that did not run has no table
            path = f"{args.json}-{stage}.json"
            atomic_write_json(path, {**doc, "report": table})
            print(path)
            print(json.dumps(table, indent=1))


def _run_code(out: Path) -> dict | None:
    for p in sorted(out.glob("sst2-*-s*/report.json")):
        return json.loads(p.read_text()).get("code")
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("outdir")
        p.add_argument("--data", default=None)
        p.add_argument("--config", choices=["tiny", "small"], default="small")
        p.add_argument("--seeds", default="0,1", help="seeds of the variant probes")
        p.add_argument("--probe-ft", type=int, default=300, help="fine-tuning steps of the variant probes")
        p.add_argument("--budgets", default="0:300,0:1200,400:1200", help="MLM:FT pairs to compare")
        p.add_argument("--final-seeds", default="0,1,2")
    sub.choices["report"].add_argument("--json", required=True, help="path stem of the JSON files to write")
    sub.choices["report"].add_argument("--run-command", default="", help="the run command, for the record")
    sub.choices["report"].add_argument("--notes", default="", help="a caveat added to every table's notes")
    args = ap.parse_args()
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
