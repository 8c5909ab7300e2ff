"""Render every benchmark JSON under bench/results/ into docs/benchmarks.md (`make bench-report`).

Two kinds of input:

- a JSON with a top-level ``report`` object ``{"section", "title", "columns", "rows", "notes"}``
  (or a list of them) beside ``command``, ``code``, ``machine`` and ``date`` (what every bench script
  writes): its table is rendered as given, numbers as the JSON writes them;
- the older result files, each family in its own format (encode, kernel, Uni-Encoder, Byte2Word,
  pooling and reliability runs): an adapter below computes the table from the file's data.

Tables are grouped by section, then by machine (CPU and ISA, or GPU); quality tables that do not
depend on the machine form their own group. Every table names its command, commit and date. A file
with ``"report": null`` is skipped on purpose; a JSON no adapter knows is an error naming the file.

    python bench/report.py [--results bench/results] [--out docs/benchmarks.md] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUALITY = "Model quality (any machine)"
TASKS = {"sst2": "SST-2"}
SECTION_ORDER = [
    "CPU engines",
    "Serving",
    "Indexes",
    "Distillation",
    "Uni-Encoder",
    "Byte2Word",
    "Trainable pooling",
    "Kernels",
    "GPU",
    "Reliability",
]


class ReportError(ValueError):
    """A result file the generator cannot render (names the file and what is wrong)."""


@dataclass
class Table:
    section: str
    title: str
    machine: str
    columns: list[str]
    rows: list[list[str]]
    notes: str = ""
    command: str = "not recorded"
    commit: str = "not recorded"
    date: str = "not recorded"
    sources: list[str] = field(default_factory=list)


# -- formatting ----------------------------------------------------------------------------------


def cell(v: object) -> str:
    """A value from a ``report`` row, as written in the JSON (numbers are not re-rounded)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return repr(v)
    return str(v).replace("\n", " ")


def f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def sci(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.1e}"


def pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def mean_sd(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def commit_of(d: dict) -> str:
    """Short commit (``+dirty`` when the tree had changes) from any of the recorded shapes."""
    code = d.get("code")
    m = d.get("machine")
    if code is None and isinstance(m, dict):
        code = m.get("code")
    if isinstance(code, dict) and code.get("commit"):
        return code["commit"][:7] + ("+dirty" if code.get("dirty") else "")
    if isinstance(code, str) and code:
        return code[:7] if re.fullmatch(r"[0-9a-f]{8,40}", code) else code
    if isinstance(d.get("commit"), str):
        return d["commit"]
    return "not recorded"


def committed(path: Path) -> str:
    """When a result file that records no date was first committed (git), else "not recorded"."""
    try:
        out = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%ad", "--date=short", "--", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return f"committed {out[-1]}" if out else "not recorded"


def date_of(d: dict) -> str:
    for v in (
        d.get("date"),
        (d.get("machine") or {}).get("date") if isinstance(d.get("machine"), dict) else None,
    ):
        if isinstance(v, str) and v:
            return v
    at = (d.get("fit") or {}).get("at") if isinstance(d.get("fit"), dict) else None
    if isinstance(at, str):
        return at.replace("T", " ").replace("Z", " UTC")
    return "not recorded"


def feature_set(flags: list[str]) -> str:
    """The ISA name `cpu_features()` would give for these CPU flags."""
    if any(x.startswith("amx") for x in flags):
        return "amx"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if any(x.startswith("avx512") for x in flags):
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "ISA not recorded"


def machine_of(d: dict, path: Path) -> str:
    m = d.get("machine")
    cpu = d.get("cpu")
    if isinstance(m, dict):
        if m.get("gpu") or m.get("device"):
            return f"GPU: {m.get('gpu') or m.get('device')}"
        isa = m.get("feature_set") or feature_set(m.get("flags") or [])
        return f"{m.get('cpu', 'CPU')} · {isa}"
    if isinstance(m, str) and m and not isinstance(cpu, str):
        return m  # a machine named in words
    cpu = d.get("cpu")
    if isinstance(cpu, str) and "ISA:" in cpu:
        name, rest = cpu.split(";", 1)
        flags = rest.split("ISA:", 1)[1].split(";", 1)[0].split()
        return f"{name.strip()} · {feature_set(flags)}"
    hint = re.search(r"(avx512_vnni|avx512|avx2|amx)", path.name)
    base = cpu if isinstance(cpu, str) and cpu else "CPU"
    if hint:
        return f"{base} · {hint.group(1)} (from the file name)"
    return f"{base} · ISA not recorded"


def reconstructed(script: str, args: dict, skip: tuple[str, ...] = ("json", "data", "out")) -> str:
    """A command line rebuilt from the arguments a result file recorded (paths left out)."""
    parts = [f"python {script}"]
    for k, v in args.items():
        if k in skip or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts) + " (rebuilt from the recorded arguments)"


# -- format (a): a report object -----------------------------------------------------------------


def from_report(d: dict, path: Path) -> list[Table]:
    """The table of a ``report`` object (or of each object, when ``report`` is a list of them)."""
    reports = d["report"] if isinstance(d["report"], list) else [d["report"]]
    out = []
    for n, r in enumerate(reports):
        where = "report" if len(reports) == 1 else f"report[{n}]"
        if not isinstance(r, dict):
            raise ReportError(f"{path}: {where} is not an object")
        missing = [k for k in ("section", "title", "columns", "rows") if k not in r]
        if missing:
            raise ReportError(f"{path}: {where} lacks {', '.join(missing)}")
        cols = list(r["columns"])
        for i, row in enumerate(r["rows"]):
            if not isinstance(row, list) or len(row) != len(cols):
                raise ReportError(
                    f"{path}: {where}.rows[{i}] is not a list of {len(cols)} cells (one per column)"
                )
        out.append(
            Table(
                section=str(r["section"]),
                title=str(r["title"]),
                machine=machine_of(d, path),
                columns=[cell(c) for c in cols],
                rows=[[cell(v) for v in row] for row in r["rows"]],
                notes=str(r.get("notes") or ""),
                command=str(d.get("command") or "not recorded"),
                commit=commit_of(d),
                date=date_of(d),
                sources=[str(path)],
            )
        )
    return out


# -- older families, one adapter each -------------------------------------------------------------


def encode_bench(d: dict, path: Path) -> list[Table]:
    out = []
    cmd = reconstructed("bench/encode_bench.py", d.get("args") or {})
    for part, unit, base_name in (
        ("bi", "sentences/s", "sentence-transformers encode (baseline)"),
        ("cross", "pairs/s", "sentence-transformers predict (baseline)"),
    ):
        res = d.get(part)
        if not res:
            continue
        med = {k: statistics.median(v) for k, v in res["speed"].items()}
        base = med[base_name]
        quality = "STS-B dev Spearman" if part == "bi" else "Spearman vs torch logits"
        cols = [
            "engine",
            f"{unit} (median of {len(res['speed'][base_name])})",
            "× sentence-transformers",
            quality,
            "batch drift",
        ]
        if part == "cross":
            cols.append("max |logit − torch|")
        rows = []
        for name, m in med.items():
            row = [
                name,
                f(m, 0),
                f(m / base),
                f(res["spearman"].get(name)),
                sci(res["invariance"].get(name)),
            ]
            if part == "cross":
                row.append(sci(res["max_abs_logit_diff_vs_torch"].get(name)))
            rows.append(row)
        what = "Bi-encoder encode" if part == "bi" else "Cross-encoder scoring"
        model = (d.get("args") or {}).get("model", "default")
        out.append(
            Table(
                section="CPU engines",
                title=f"{what}, STS-B dev ({res['n']:,} {'texts' if part == 'bi' else 'pairs'}), model {model}",
                machine=machine_of(d, path),
                columns=cols,
                rows=rows,
                notes=(
                    "All engines in one process, interleaved per repetition; batch drift is the largest "
                    "difference between a text encoded alone and inside a batch."
                    + (
                        " The cross-encoder is a fresh head on the model: speed and agreement only."
                        if part == "cross"
                        else ""
                    )
                ),
                command=cmd,
                commit=commit_of(d),
                date=date_of(d),
                sources=[str(path)],
            )
        )
    return out


def op_profile(d: dict, path: Path) -> list[Table]:
    shares = sorted(d["shares"].items(), key=lambda kv: -kv[1])
    big = [[op, f(s, 1)] for op, s in shares if s >= 1.0]
    rest = sum(s for _, s in shares if s < 1.0)
    a = d.get("args") or {}
    return [
        Table(
            section="CPU engines",
            title=f"Where the time goes: {a.get('kind', '?')}-encoder, {a.get('variant', '?')}, by ONNX op type",
            machine=machine_of(d, path),
            columns=["op type", "% of run time"],
            rows=big + [["all others", f(rest, 1)]],
            notes="onnxruntime's per-node profile summed by op type.",
            command=reconstructed("bench/onnx_op_profile.py", a),
            commit=commit_of(d),
            date=date_of(d),
            sources=[str(path)],
        )
    ]


def gpu_encode(d: dict, path: Path) -> list[Table]:
    rows = [
        [
            name,
            f"{v['sent_per_s']:,}",
            ", ".join(f"{x:,}" for x in v["runs"]),
            f"{v['min_cos_vs_torch_fp32']:.4f}",
        ]
        for name, v in d["variants"].items()
    ]
    return [
        Table(
            section="GPU",
            title=f"Encode on the GPU, {d.get('texts', '')}",
            machine=f"GPU: {d['gpu']}",
            columns=["variant", "sentences/s (best)", "runs", "min cosine vs torch fp32"],
            rows=rows,
            notes=f"torch {d.get('torch')}; onnxruntime providers {', '.join(d.get('providers', []))} (no CUDA provider: ONNX rows not run).",
            command="bash bench/gpu_check.sh (command line not recorded)",
            commit=commit_of(d),
            date=date_of(d),
            sources=[str(path)],
        )
    ]


def kernel_cpu(d: dict, path: Path) -> list[Table]:
    rows = []
    for r in d["rows"]:
        rows.append(
            [
                r["name"],
                f"{r['n_items']:,}",
                f"{r['len_min']}–{r['len_max']}",
                f"{r['total_keys']:,}",
                f(r["fwd"]["sdpa_padded_ms"], 1),
                f(r["fwd"]["packed_ms"], 1),
                f(r["fwd"]["speedup"]),
                f(r["fwd+bwd"]["speedup"]),
                f"{r['max_abs_diff']:.1e}",
            ]
        )
    threads = re.search(r"(\d+) threads", d.get("cpu", ""))
    return [
        Table(
            section="Kernels",
            title="Cross-attention pooling: packed CPU path vs padded SDPA",
            machine=machine_of(d, path),
            columns=[
                "shape",
                "items",
                "keys per item",
                "keys",
                "SDPA fwd ms",
                "packed fwd ms",
                "fwd ×",
                "fwd+bwd ×",
                "max |diff|",
            ],
            rows=rows,
            notes=(
                f"Median of {d.get('repeats')} runs, the two sides interleaved"
                + (f", {threads.group(1)} threads" if threads else "")
                + "; the baseline pads the packed keys and calls scaled_dot_product_attention with a mask."
            ),
            command=f"python bench/kernel_bench.py --repeats {d.get('repeats')} (command line not recorded)",
            commit=commit_of(d),
            date=date_of(d),
            sources=[str(path)],
        )
    ]


def kernel_gpu(d: dict, path: Path) -> list[Table]:
    rows = [
        [
            r["shape"],
            r["dtype"],
            f"{r['keys']:,}",
            f(r["triton_fwd_ms"], 3),
            f(r["reference_fwd_ms"], 3),
            f(r["sdpa_fwd_ms"], 3),
            f(r["speedup_fwd_vs_eager"]),
            f(r["speedup_fwdbwd_vs_eager"]),
            f(r["speedup_fwd_vs_sdpa"]),
            f(r["triton_fwd_GBps"], 0),
        ]
        for r in d["rows"]
    ]
    return [
        Table(
            section="Kernels",
            title="Triton cross-attention pooling vs eager PyTorch and SDPA",
            machine=f"GPU: {d['device']}",
            columns=[
                "shape",
                "dtype",
                "keys",
                "Triton fwd ms",
                "eager fwd ms",
                "SDPA fwd ms",
                "fwd × eager",
                "fwd+bwd × eager",
                "fwd × SDPA",
                "Triton GB/s",
            ],
            rows=rows,
            notes=f"Copy bandwidth measured {d['copy_GBps']:,.0f} GB/s (peak {d['peak_GBps']:,.0f}).",
            command="python bench/kernel_gpu_check.py --dtypes fp32 (command line not recorded)",
            commit=commit_of(d),
            date=date_of(d),
            sources=[str(path)],
        )
    ]


def uni_bench(d: dict, path: Path) -> list[Table]:
    has_ceiling = all("ceiling" in r for r in d["rows"])
    cols = [
        "N candidates",
        "Uni arrow ms",
        "Uni context-blind ms",
        "cross-encoder ms",
        "× arrow",
        "× context-blind",
    ]
    if has_ceiling:
        cols += ["tokens Uni", "tokens cross", "ceiling ×"]
    rows = []
    for r in d["rows"]:
        row = [
            str(r["N"]),
            f(r["uni-arrow_ms"], 1),
            f(r["uni-context-blind_ms"], 1),
            f(r["cross_ms"], 1),
            f(r["speedup_arrow"]),
            f(r["speedup_context_blind"]),
        ]
        if has_ceiling:
            row += [f(r["uni_tokens"], 0), f(r["cross_tokens"], 0), f(r["ceiling"])]
        rows.append(row)
    args = {
        "model": d.get("model"),
        "data": d.get("data"),
        "contexts": d.get("contexts"),
        "reps": d.get("reps"),
        "threads": d.get("threads"),
    }
    last = d.get("cross_last_layer")
    return [
        Table(
            section="Uni-Encoder",
            title=(
                f"Ranking N candidates: Uni-Encoder vs cross-encoder, {d.get('data', 'data not recorded')}, "
                f"model {d.get('model', 'not recorded')}"
            ),
            machine=machine_of(d, path),
            columns=cols,
            rows=rows,
            notes=(
                f"Milliseconds per context (median over {d.get('contexts')} contexts × {d.get('reps')} repetitions, "
                f"{d.get('threads')} thread); limits {d['limits']['context']}/{d['limits']['candidate']} tokens."
                + (f" Cross-encoder last layer: {last}." if last else "")
                + (
                    " Ceiling: the cross-encoder's linear-layer work over the Uni-Encoder's."
                    if has_ceiling
                    else ""
                )
            ),
            command=reconstructed("bench/uni_bench.py", args),
            commit=commit_of(d),
            date=date_of(d),
            sources=[str(path)],
        )
    ]


def pooling_probe(d: dict, path: Path) -> list[Table]:
    rows = [[f"layer {k}" + (" (embeddings)" if k == "0" else ""), f(v)] for k, v in d["layers"].items()]
    rows += [
        [f"mix: {k}", f"{f(v['raw'])} (normalised first: {f(v['normalised'])})"]
        for k, v in d["mixes"].items()
    ]
    return [
        Table(
            section="Trainable pooling",
            title=f"Mean pooling of each hidden layer, model {d['model']} ({d['n']} STS-B train pairs held out)",
            machine=QUALITY,
            columns=["pooled layer(s)", "Spearman × 100"],
            rows=rows,
            notes="No training: how much each layer (and fixed mixes) carries before a pooler learns to mix them.",
            command=reconstructed("bench/pooling_layer_probe.py", {"model": d["model"], "pairs": d["pairs"]}),
            commit=commit_of(d),
            date=date_of(d),
            sources=[str(path)],
        )
    ]


def reliability_meta(path: Path) -> tuple[str, str, str]:
    """Command, commit and date of `make reliability`'s fixed-name outputs, from its summary."""
    if path.name not in ("faults.json", "fuzz.json", "load.json"):
        return "python bench/reliability/run.py (command line not recorded)", "not recorded", "not recorded"
    summary = path.with_name("summary.md")
    text = summary.read_text(encoding="utf-8") if summary.exists() else ""
    m = re.search(r"\(`([^`]+)`\), ([0-9-]+), commit ([0-9a-f]+)", text)
    if not m:
        return "make reliability (command line not recorded)", "not recorded", "not recorded"
    return m.group(1), m.group(3), m.group(2)


def reliability_faults(d: dict, path: Path) -> list[Table]:
    cmd, commit, date = reliability_meta(path)
    killed = ", ".join(f"{k} {v}" for k, v in sorted(d["killed_during"].items()))
    return [
        Table(
            section="Reliability",
            title="kill -9 during writes: acknowledged writes after restart",
            machine=QUALITY,
            columns=[
                "rounds",
                "rounds passed",
                "acknowledged operations",
                "live items checked",
                "killed during",
            ],
            rows=[
                [
                    str(d["rounds"]),
                    str(d["rounds_passed"]),
                    f"{d['acknowledged_ops']:,}",
                    f"{d['live_items_checked']:,}",
                    killed,
                ]
            ],
            notes="Each round kills the writer at a random moment and checks every acknowledged write and delete after the restart.",
            command=cmd,
            commit=commit,
            date=date,
            sources=[str(path)],
        )
    ]


def reliability_fuzz(d: dict, path: Path) -> list[Table]:
    cmd, commit, date = reliability_meta(path)
    rows = []
    for target, v in d.items():
        codes = ", ".join(f"{k} {n:,}" for k, n in sorted(v["codes"].items(), key=lambda kv: (-kv[1], kv[0])))
        rows.append([target, f"{v['examples']:,}", codes])
    internal = sum(v["codes"].get("INTERNAL", 0) + v["codes"].get("UNKNOWN", 0) for v in d.values())
    return [
        Table(
            section="Reliability",
            title=f"Fuzzing every RPC: status codes (INTERNAL or UNKNOWN: {internal})",
            machine=QUALITY,
            columns=["target", "calls", "status codes"],
            rows=rows,
            notes="Random and mutated request messages (`raw:` rows: bytes at the wire level).",
            command=cmd,
            commit=commit,
            date=date,
            sources=[str(path)],
        )
    ]


def reliability_load(d: dict, path: Path) -> list[Table]:
    cmd, commit, date = reliability_meta(path)
    rows = []
    phases = (
        [("1 client, before", d["baseline"])]
        + [(f"{p['clients']} clients", p) for p in d["load"]]
        + [("1 client, after", d["recovery"])]
    )
    for name, p in phases:
        codes = ", ".join(f"{k} {n:,}" for k, n in sorted(p["codes"].items(), key=lambda kv: -kv[1])) or "–"
        rows.append(
            [
                name,
                f(p["seconds"], 0),
                f"{p['calls']:,}",
                f(p["throughput_rps"], 1),
                f(p["p50_ms"], 1),
                f(p["p99_ms"], 1),
                codes,
                f(p["rss_mb"]["growth_pct"]),
            ]
        )
    s = d["saturation"]
    codes = ", ".join(f"{k} {n:,}" for k, n in sorted(s["codes"].items(), key=lambda kv: -kv[1]))
    rows.append(
        [
            f"{s['in_flight']} calls at once",
            f(s["seconds"], 0),
            f"{sum(s['codes'].values()):,}",
            "–",
            "–",
            "–",
            codes,
            "–",
        ]
    )
    m = d.get("machine") or {}
    return [
        Table(
            section="Reliability",
            title=f"Mixed-workload load test, model {d.get('model')}",
            machine=f"{m.get('cpu', 'CPU')} · ISA not recorded, {m.get('cores', '?')} cores",
            columns=[
                "phase",
                "seconds",
                "calls",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "status codes",
                "RSS growth %",
            ],
            rows=rows,
            notes=(
                "Embed, Score, Rerank, Search (Flat and HNSW), Upsert and Delete against a real server. "
                "Latency depends on the cores left to the server; the file does not record what else ran."
            ),
            command=cmd,
            commit=commit,
            date=d.get("date") or date,
            sources=[str(path)],
        )
    ]


# -- families rendered from several files at once ---------------------------------------------------


def uni_training(items: list[tuple[dict, Path]]) -> list[Table]:
    groups: dict[tuple, list[tuple[dict, Path]]] = {}
    for d, p in items:
        c = d["config"]
        groups.setdefault((c["model"], d["train_contexts"], c["data"]), []).append((d, p))
    out = []
    for (model, contexts, data), runs in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        sets = sorted({s for d, _ in runs for s in d["eval"]}, reverse=True)
        rows, by_arm = [], {}
        runs.sort(
            key=lambda dp: (dp[0]["config"]["kind"], dp[0]["config"]["mlm_weight"], dp[0]["config"]["seed"])
        )
        for d, _ in runs:
            c = d["config"]
            arm = c["kind"] + (f" + MLM {c['mlm_weight']}" if c["mlm_weight"] else "")
            rows.append(
                [arm, str(c["seed"])] + [f(d["eval"][s]["R@1"], 1) for s in sets] + [f(d["wall_s"], 0)]
            )
            by_arm.setdefault(arm, []).append(d)
        summary = [
            [arm, str(len(ds))] + [mean_sd([d["eval"][s]["R@1"] for d in ds]) for s in sets]
            for arm, ds in by_arm.items()
        ]
        c0 = runs[0][0]["config"]
        cmd = (
            f"pairsmith train uni-encoder --data {data} --model {model} --kind KIND --mask {c0['mask']} "
            f"--max-contexts {contexts} --epochs {c0['epochs']} --batch-size {c0['batch_size']} --lr {c0['lr']} "
            f"--eval-limit {c0['eval_limit']} --seed SEED (rebuilt from the recorded configuration)"
        )
        dates = sorted(date_of(d) for d, _ in runs)
        common = dict(
            section="Uni-Encoder",
            machine=QUALITY,
            command=cmd,
            commit="not recorded",
            date=f"{dates[0]} – {dates[-1]}",
        )
        title = f"Same-budget comparison from {model}: {contexts:,} {data} training contexts"
        out.append(
            Table(
                title=title + ", R@1 per run",
                columns=["arm", "seed"] + [f"{s} R@1" for s in sets] + ["train s (CPU)"],
                rows=rows,
                notes="Each arm trains the same backbone on the same contexts, batches and budget; R@1 ranks each context's candidates.",
                sources=[str(p) for _, p in runs],
                **common,
            )
        )
        out.append(
            Table(
                title=title + ", mean ± sd over seeds",
                columns=["arm", "seeds"] + [f"{s} R@1" for s in sets],
                rows=summary,
                notes="Sample standard deviation over the seeds above.",
                sources=[str(p) for _, p in runs],
                **common,
            )
        )
    return out


def uni_eval_rows(items: list[tuple[dict, Path]]) -> list[Table]:
    out = []
    for d, p in sorted(items, key=lambda dp: dp[1].name):
        rows = []
        for r in d["rows"]:
            m = r["model"]
            label = m
            if m.startswith("runs/"):  # a run folder: name the arm and its backbone, not the path
                label = f"trained {m.rstrip('/').split('/')[-1]}" + (" (from mpnet)" if "mpnet" in m else "")
            rows.append(
                [
                    label,
                    r["scorer"],
                    r["set"],
                    f(r["R@1"]),
                    f(r["R@2"]),
                    f(r["R@5"]),
                    f(r["MRR"]),
                    f"{r['cases']:,}",
                ]
            )
        seed = re.search(r"seed(\d+)", p.name)
        out.append(
            Table(
                section="Uni-Encoder",
                title="Response selection on "
                + ", ".join(dict.fromkeys(r["set"] for r in d["rows"]))
                + (f" (seed {seed.group(1)})" if seed else ""),
                machine=QUALITY,
                columns=["model", "scorer", "set", "R@1", "R@2", "R@5", "MRR", "cases"],
                rows=rows,
                notes="Models of the same-budget comparison scored on further sets or masks.",
                command="python bench/uni_eval.py (command line not recorded)",
                commit=commit_of(d),
                date=date_of(d),
                sources=[str(p)],
            )
        )
    return out


def byte2word(items: list[tuple[dict, Path]]) -> list[Table]:
    groups: dict[tuple, list[tuple[dict, Path]]] = {}
    for d, p in items:
        groups.setdefault((d["task"], d["size"], d["mlm_steps"], d["ft_steps"]), []).append((d, p))
    out = []
    for (task, size, mlm, ft), runs in sorted(groups.items()):
        runs.sort(key=lambda dp: (dp[0]["unit"], dp[1].name))
        rows, by_unit = [], {}
        for d, p in runs:
            seed = re.search(r"-s(\d+)\.report\.json$", p.name)
            clean, noisy = d["dev_acc"], d["noise"]["all"]["mean"]
            rows.append(
                [
                    d["unit"],
                    seed.group(1) if seed else "?",
                    pct(clean),
                    pct(noisy),
                    pct(noisy - clean),
                    pct(d["noise"]["advglue_sst2"]["acc"]),
                    f"{d['params_input_embedding']:,}",
                    f"{d['params_total']:,}",
                    f(d["wall_s"], 0),
                    commit_of(d),
                ]
            )
            by_unit.setdefault(d["unit"], []).append(d)
        summary = [
            [
                u,
                str(len(ds)),
                mean_sd([100 * d["dev_acc"] for d in ds]),
                mean_sd([100 * (d["noise"]["all"]["mean"] - d["dev_acc"]) for d in ds]),
            ]
            for u, ds in by_unit.items()
        ]
        cmd = (
            f"pairsmith train byte2word --mlm-corpus CORPUS --task {task} --config {size} --max-steps {mlm} "
            f"--ft-steps {ft} [--tokenizer wordpiece] (rebuilt from the recorded report)"
        )
        commits = sorted({commit_of(d) for d, _ in runs})
        dates = "not recorded"
        common = dict(
            section="Byte2Word", machine=QUALITY, command=cmd, commit=", ".join(commits), date=dates
        )
        title = f"{TASKS.get(task, task)} dev accuracy, {size} config, {mlm} MLM + {ft:,} fine-tuning steps"
        out.append(
            Table(
                title=title + ", per run",
                columns=[
                    "unit",
                    "seed",
                    "dev acc %",
                    "noisy dev acc %",
                    "noise drop",
                    "AdvGLUE acc %",
                    "input-embedding params",
                    "params",
                    "train s (CPU)",
                    "commit",
                ],
                rows=rows,
                notes="Byte2Word (`bytes`) and its WordPiece baseline of the same depth and width, both trained from scratch; noisy: 5 % swaps, 5 % drops, 10 % case changes, mean of 3 noise seeds.",
                sources=[str(p) for _, p in runs],
                **common,
            )
        )
        out.append(
            Table(
                title=title + ", mean ± sd over seeds",
                columns=["unit", "seeds", "dev acc %", "noise drop"],
                rows=summary,
                notes="Sample standard deviation over the seeds above.",
                sources=[str(p) for _, p in runs],
                **common,
            )
        )
    return out


# -- dispatch -------------------------------------------------------------------------------------

Single = Callable[[dict, Path], list[Table]]


def single_adapter(d: dict) -> Single | None:
    if isinstance(d.get("bi"), dict) or isinstance(d.get("cross"), dict):
        return encode_bench
    if "shares" in d:
        return op_profile
    if "variants" in d and "gpu" in d:
        return gpu_encode
    rows = d.get("rows")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        if "fwd" in rows[0]:
            return kernel_cpu
        if "triton_fwd_ms" in rows[0]:
            return kernel_gpu
    if d.get("bench") == "uni_bench":
        return uni_bench
    if d.get("bench") == "pooling_layer_probe":
        return pooling_probe
    if "rounds_passed" in d:
        return reliability_faults
    if "saturation" in d and "load" in d:
        return reliability_load
    if d and all(isinstance(v, dict) and set(v) == {"examples", "codes"} for v in d.values()):
        return reliability_fuzz
    return None


def collect(results: Path) -> tuple[list[Table], list[str]]:
    """Every table from every JSON under ``results``; and the files skipped on purpose."""
    tables: list[Table] = []
    skipped: list[str] = []
    uni_train: list[tuple[dict, Path]] = []
    uni_rows: list[tuple[dict, Path]] = []
    b2w: list[tuple[dict, Path]] = []
    for path in sorted(results.rglob("*.json")):
        rel = path.relative_to(ROOT) if ROOT in path.resolve().parents else path
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReportError(f"{path}: not readable JSON ({e})") from e
        if not isinstance(d, dict):
            raise ReportError(f"{path}: the top level is not an object")
        if "report" in d:
            if d["report"] is None:
                skipped.append(str(rel))
                continue
            tables += from_report(d, rel)
        elif d.get("kind") == "train-uni-encoder":
            uni_train.append((d, rel))
        elif "unit" in d and "dev_acc" in d:
            b2w.append((d, rel))
        elif isinstance(d.get("rows"), list) and d["rows"] and "scorer" in d["rows"][0]:
            uni_rows.append((d, rel))
        else:
            adapter = single_adapter(d)
            if adapter is None:
                raise ReportError(f"{path}: no 'report' object and no adapter knows this format")
            try:
                tables += adapter(d, rel)
            except (KeyError, TypeError, ValueError) as e:
                raise ReportError(f"{path}: {adapter.__name__} could not read it ({e!r})") from e
    tables += uni_training(uni_train) + uni_eval_rows(uni_rows) + byte2word(b2w)
    for t in tables:
        if t.date == "not recorded" and t.sources:
            t.date = committed(Path(t.sources[0]))
    return tables, skipped


# -- rendering ------------------------------------------------------------------------------------


def esc(text: str) -> str:
    return text.replace("|", "\\|")


def anchor(text: str) -> str:
    a = re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-")
    return a


def section_key(name: str) -> tuple[int, str]:
    return (SECTION_ORDER.index(name) if name in SECTION_ORDER else len(SECTION_ORDER), name)


def machine_key(name: str) -> tuple[int, str]:
    return (2 if name == QUALITY else 1 if name.startswith("GPU") else 0, name)


def _shown(command: str) -> str:
    """The command as printed: a ``--notes '...'`` value is elided (its text is the table's notes)."""
    return re.sub(r"--notes '[^']*'", "--notes '…'", command)


def render(tables: list[Table], skipped: list[str]) -> str:
    by_section: dict[str, dict[str, list[Table]]] = {}
    for t in tables:
        by_section.setdefault(t.section, {}).setdefault(t.machine, []).append(t)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench-report` (bench/report.py) from the JSON under bench/results/. Do not edit. -->",
        "",
        "Every figure on this page is computed from a result file committed under `bench/results/`; "
        "each table names the command that produced it, the commit it ran and the date. Tables are grouped "
        "by topic, then by machine (CPU and ISA, or GPU): compare figures only within one machine. Ratios "
        "(×) were measured side by side in one run. To add a table, have a bench script write a JSON with a "
        "`report` object (see `bench/report.py`) and run `make bench-report`.",
        "",
        "## Contents",
        "",
    ]
    used: set[str] = set()

    def unique(text: str) -> str:
        a, i = anchor(text), 1
        while a in used:
            i += 1
            a = f"{anchor(text)}-{i}"
        used.add(a)
        return a

    body: list[str] = []
    toc: list[str] = []
    for section in sorted(by_section, key=section_key):
        a = unique(section)
        toc.append(f"- [{section}](#{a})")
        body += [f"## {section}", ""]
        for machine in sorted(by_section[section], key=machine_key):
            heading = machine if machine.startswith(section) else f"{section}: {machine}"
            a = unique(heading)
            toc.append(f"  - [{machine}](#{a})")
            body += [f"### {heading}", ""]
            for t in by_section[section][machine]:
                unique(t.title)
                body += [f"#### {t.title}", ""]
                body.append("| " + " | ".join(esc(c) for c in t.columns) + " |")
                body.append("|" + "---|" * len(t.columns))
                body += ["| " + " | ".join(esc(c) for c in r) + " |" for r in t.rows]
                body.append("")
                if t.notes:
                    body += [t.notes, ""]
                body += [f"Command: `{_shown(t.command)}` · commit {t.commit} · {t.date}", ""]
    lines += toc + [""] + body
    if skipped:
        lines += ["## Files without a table", ""] + [f"- `{s}`" for s in skipped] + [""]
    return "\n".join(lines).rstrip() + "\n"


def generate(results: Path) -> str:
    tables, skipped = collect(results)
    return render(tables, skipped)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from a fresh rendering")
    args = ap.parse_args(argv)
    try:
        text = generate(args.results)
    except ReportError as e:
        print(f"bench-report: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"bench-report: {args.out} is not current; run `make bench-report`", file=sys.stderr)
            return 1
        return 0
    from pairsmith.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {args.out} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
