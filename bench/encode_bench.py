"""Encode throughput on CPU: sentence-transformers vs pairsmith torch vs every pairsmith engine.

Sentences/s on the STS-B dev sentences (both sides, 3,000 texts, tokenisation
included), all variants in one process, interleaved per repetition, median of
``--reps``; ratios against sentence-transformers' default ``encode``; STS-B dev
Spearman (cosine, x100) of each variant from the same embeddings; batch
invariance (max |a text alone - the same text in one batch|). Engines:
onnxruntime fp32 / static int8 / dynamic int8 and, when installed, OpenVINO on
the fp32 file (its own precision choice: bf16 on AMX) and on the static int8
file. Then the same for cross-encoder pairs/s on the STS-B dev pairs (a fresh
head on the default model: speed and agreement with torch only).

Every line names the CPU feature set (avx2 / avx512 / avx512_vnni / amx).
``--write-table`` stores this CPU's fastest batch-invariant engine (within 0.5
Spearman of fp32) in ``encoders/engine_table.json``, which ``backend='auto'`` reads.

Run it alone on the machine (the CPU is shared)::

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/encode_bench.py --reps 3 --json runs/encode_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_facts, machine_line  # noqa: E402


def load_stsb_dev(data: Path) -> tuple[np.ndarray, list[str], list[str]]:
    from pairsmith.distill.data import load_sts_set

    dev = load_sts_set("stsb-dev", root=data)
    return np.asarray(dev.scores, dtype=np.float64), list(dev.s1), list(dev.s2)


def spearman(vecs: np.ndarray, n: int, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    v = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return float(100 * spearmanr((v[:n] * v[n:]).sum(1), gold).statistic)


def timed(fn, reps_out: list[float], n: int):
    t = time.perf_counter()
    res = fn()
    reps_out.append(n / (time.perf_counter() - t))
    return res


# (label, backend, onnx_variant, streams): every CPU path pairsmith offers; openvino rows only when
# installed. streams None = the library default (one single-thread run per core); the
# "1 stream" row is the same engine running one batch at a time on all cores (the thread sweep).
ENGINE_VARIANTS = (
    ("pairsmith onnx fp32", "onnx", "fp32", None),
    ("pairsmith onnx int8 static", "onnx", "int8-static", None),
    ("pairsmith onnx int8 static, 1 stream x all threads", "onnx", "int8-static", 1),
    ("pairsmith onnx int8 dynamic", "onnx", "int8-dynamic", None),
    ("pairsmith openvino fp32-file (auto precision)", "openvino", "fp32", None),
    ("pairsmith openvino int8 static", "openvino", "int8-static", None),
)


def engine_variants(streams_sweep: tuple[int, ...] = ()) -> list[tuple[str, str, str, int | None]]:
    """ENGINE_VARIANTS that can run here, plus an int8-static row per ``--streams-sweep`` count."""
    from pairsmith.encoders.openvino_runtime import available

    rows = [v for v in ENGINE_VARIANTS if v[1] != "openvino" or available()]
    rows += [(f"pairsmith onnx int8 static, {n} streams", "onnx", "int8-static", n) for n in streams_sweep]
    return rows


def _stream_counts(text: str) -> tuple[int, ...]:
    """argparse type of --streams-sweep: comma-separated integers >= 1."""
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"stream counts must be >= 1, got {text!r}")
    return counts


def invariance(encode, texts: list[str]) -> float:
    """Max |a text alone - the same text in a batch| over ``texts`` (raw outputs)."""
    alone = np.stack([np.asarray(encode([t], 1), dtype=np.float64)[0] for t in texts])
    together = np.asarray(encode(texts, len(texts)), dtype=np.float64)
    return float(np.abs(alone - together).max())


def export_both(model: str) -> None:
    """fp32 + static int8 + dynamic int8 of ``model`` (the second export keeps the first's files)."""
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx
    from pairsmith.encoders.onnx_runtime import open_export
    from pairsmith.encoders.source import resolve_model
    from pairsmith.errors import PairsmithError

    try:  # an up-to-date export (fingerprint-checked) with both schemes and fused static MatMuls: reuse it
        facts = open_export(resolve_model(model), detect(model)).variants.values()
        have = {v.get("scheme") for v in facts}
        fused = any(v.get("scheme") == "static" and v.get("fused_matmuls") for v in facts)
        if {"static", "dynamic"} <= have and fused:
            return
    except PairsmithError:
        pass
    export_onnx(model, ExportConfig(quantize="int8-dynamic"))
    export_onnx(model, ExportConfig(quantize="int8-static"))


def detect(model: str) -> str:
    from pairsmith.encoders.onnx_graphs import detect_kind
    from pairsmith.encoders.source import resolve_model

    return detect_kind(resolve_model(model))


def bench_bi(args, gold, a, b) -> dict:
    from pairsmith.encoders import BiEncoder

    texts = a + b
    n = len(texts)
    export_both(args.model)
    st_enc = BiEncoder.load(args.model, device="cpu", backend="torch")
    st = st_enc.st_model  # sentence-transformers' own SentenceTransformer: the baseline
    bs = args.batch_size
    variants = {
        "sentence-transformers encode (baseline)": lambda: st.encode(texts, show_progress_bar=False),
        "pairsmith torch": lambda: st_enc.encode(texts, batch_size=bs).vectors,
    }
    raw = {"pairsmith torch": lambda xs, k: st_enc.encode(xs, batch_size=k, normalize=False).vectors}
    for name, backend, v, streams in engine_variants(args.streams_sweep):
        enc = BiEncoder.load(args.model, device="cpu", backend=backend, onnx_variant=v, streams=streams)
        enc.encode(texts[:64])  # warm-up: first-call allocations
        variants[name] = lambda enc=enc: enc.encode(texts, batch_size=bs).vectors
        raw[name] = lambda xs, k, enc=enc: enc.encode(xs, batch_size=k, normalize=False).vectors
    warm = texts[:64]
    st.encode(warm, show_progress_bar=False)
    st_enc.encode(warm)
    speed: dict[str, list[float]] = {k: [] for k in variants}
    quality: dict[str, float] = {}
    for rep in range(args.reps):
        for name, fn in variants.items():
            vecs = timed(fn, speed[name], n)
            quality[name] = spearman(np.asarray(vecs, dtype=np.float32), len(a), gold)
        print(
            f"  rep {rep + 1}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.0f}" for k, v in speed.items()),
            flush=True,
        )
    probe = texts[: args.invariance_texts]
    inv = {k: invariance(fn, probe) for k, fn in raw.items()}
    inv["sentence-transformers encode (baseline)"] = invariance(
        lambda xs, k: st.encode(xs, batch_size=k, show_progress_bar=False), probe
    )
    return {"n": n, "speed": speed, "spearman": quality, "invariance": inv}


def bench_cross(args, a, b) -> dict:
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from pairsmith.encoders import Activation, CrossEncoder

    pairs = list(zip(a, b, strict=True))[: args.cross_limit]
    n = len(pairs)
    with (
        tempfile.TemporaryDirectory(prefix="pairsmith-bench-ce-") as tmp,
        tempfile.TemporaryDirectory(prefix="pairsmith-bench-ce-full-") as tmp_full,
    ):
        CrossEncoder.from_backbone(args.model, device="cpu", seed=0).save(tmp)
        export_both(tmp)
        st = STCrossEncoder(tmp, device="cpu", local_files_only=True)
        torch_ce = CrossEncoder.load(tmp, device="cpu", backend="torch")
        engines = {}
        for name, backend, v, streams in engine_variants(args.streams_sweep):
            engines[name] = CrossEncoder.load(
                tmp, device="cpu", backend=backend, onnx_variant=v, streams=streams
            )
        raw = Activation.RAW
        bs = args.batch_size
        variants = {
            # Its defaults (sigmoid on); the logit is recovered below for the parity column.
            "sentence-transformers predict (baseline)": lambda: _logit(
                st.predict(pairs, show_progress_bar=False)
            ),
            "pairsmith torch": lambda: torch_ce.score(pairs, activation=raw, batch_size=bs).values,
        }
        for name, ce in engines.items():
            variants[name] = lambda ce=ce: ce.score(pairs, activation=raw, batch_size=bs).values
        if args.cross_ab:  # the same model with the last layer computed for every token (the old graph)
            for name, ce in full_last_layer(tmp, tmp_full).items():
                engines[name] = ce
                variants[name] = lambda ce=ce: ce.score(pairs, activation=raw, batch_size=bs).values
        # warm-up
        st.predict(pairs[:32], show_progress_bar=False)
        torch_ce.score(pairs[:32])
        for ce in engines.values():
            ce.score(pairs[:32])
        speed: dict[str, list[float]] = {k: [] for k in variants}
        logits: dict[str, np.ndarray] = {}
        for rep in range(args.reps):
            for name, fn in variants.items():
                logits[name] = np.asarray(timed(fn, speed[name], n), dtype=np.float32).reshape(-1)
            print(
                f"  rep {rep + 1}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.0f}" for k, v in speed.items()),
                flush=True,
            )
        probe = pairs[: args.invariance_texts]
        inv = {
            k: invariance(
                lambda xs, m, ce=ce: ce.score(xs, activation=raw, batch_size=m).values[:, None], probe
            )
            for k, ce in {"pairsmith torch": torch_ce, **engines}.items()
        }
    ref = logits["pairsmith torch"]
    diff = {k: float(np.abs(v - ref).max()) for k, v in logits.items()}
    # The head is fresh (random): the logits mean nothing, so quality = rank agreement with torch's logits.
    rank = {k: float(100 * spearmanr(v, ref).statistic) for k, v in logits.items()}
    return {"n": n, "speed": speed, "max_abs_logit_diff_vs_torch": diff, "spearman": rank, "invariance": inv}


def full_last_layer(model_dir: str, copy: str) -> dict:
    """torch and static int8 cross-encoders of ``model_dir`` with the full last layer (A/B rows)."""
    from pairsmith.encoders import CrossEncoder
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    CrossEncoder.load(model_dir, device="cpu", backend="torch", last_layer="full").save(copy)
    export_onnx(copy, ExportConfig(quantize="int8-static", last_layer="full"))
    return {
        "pairsmith torch, full last layer (A/B)": CrossEncoder.load(
            copy, device="cpu", backend="torch", last_layer="full"
        ),
        "pairsmith onnx int8 static, full last layer (A/B)": CrossEncoder.load(
            copy, device="cpu", backend="onnx", onnx_variant="int8-static", last_layer="full"
        ),
    }


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def report(title: str, res: dict, unit: str, quality: str, isa: str) -> list[str]:
    speed = res["speed"]
    base_name = next(iter(speed))
    base = statistics.median(speed[base_name])
    lines = [f"{title} ({res['n']} items, median of {len(speed[base_name])} reps; ISA {isa})", ""]
    lines.append(
        f"| variant | ISA | {unit} (median) | runs | x baseline | {quality} | max |alone - in batch| |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for name, runs in speed.items():
        med = statistics.median(runs)
        runs_s = ", ".join(f"{r:.0f}" for r in runs)
        inv = res["invariance"].get(name)
        inv_s = f"{inv:.1e}" if inv is not None else "-"
        lines.append(
            f"| {name} | {isa} | {med:.0f} | {runs_s} | {med / base:.2f}x | {res['spearman'][name]:.2f} | {inv_s} |"
        )
    return lines


def pick_engine(res: dict, max_loss: float = 0.5, max_drift: float = 1e-5) -> tuple[str, str] | None:
    """The fastest onnx/openvino variant that is batch-invariant and within ``max_loss`` Spearman of fp32."""
    ref = res["spearman"].get("pairsmith onnx fp32")
    best = None
    for name, backend, variant, streams in ENGINE_VARIANTS:
        if name not in res["speed"] or ref is None or streams is not None:
            continue
        if res["invariance"][name] > max_drift or ref - res["spearman"][name] > max_loss:
            continue
        med = statistics.median(res["speed"][name])
        if best is None or med > best[0]:
            best = (med, backend, variant, name)
    return None if best is None else (best[1], best[2])


def write_table_row(res: dict, facts: dict, path: Path) -> dict | None:
    """Record this CPU's measured fastest engine in the engine table (atomic write)."""
    from pairsmith.atomic import atomic_write_text
    from pairsmith.encoders.onnx_quant import read_engine_table

    pick = pick_engine(res)
    if pick is None:
        return None
    speed = res["speed"]
    base = statistics.median(next(iter(speed.values())))
    ratios = {k: round(statistics.median(v) / base, 2) for k, v in speed.items()}
    row = {
        "backend": pick[0],
        "variant": pick[1],
        "precision": "auto",
        "measured": f"{facts['date']}, {facts['cpu']} ({','.join(facts['flags'])}), bench/encode_bench.py",
        "ratios_vs_sentence_transformers": ratios,
    }
    table = read_engine_table(path)
    table.setdefault("rows", {})[facts["feature_set"]] = row
    atomic_write_text(path, json.dumps(table, indent=2, sort_keys=True) + "\n")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument(
        "--data",
        default=os.environ.get(
            "PAIRSMITH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")
        ),
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--batch-size", type=int, default=32, help="pairsmith batch size (baseline keeps its default, 32)"
    )
    p.add_argument("--limit", type=int, default=None, help="first N pairs only (smoke runs)")
    p.add_argument("--skip-cross", action="store_true")
    p.add_argument("--skip-bi", action="store_true", help="the cross-encoder part only")
    p.add_argument(
        "--cross-ab",
        action="store_true",
        help="add A/B rows: torch and int8 static with the full last layer (last_layer='full')",
    )
    p.add_argument(
        "--cross-limit", type=int, default=None, help="first N dev pairs for the cross-encoder part"
    )
    p.add_argument("--invariance-texts", type=int, default=48, help="texts checked alone vs in one batch")
    p.add_argument(
        "--write-table",
        action="store_true",
        help="record this CPU's fastest batch-invariant engine in encoders/engine_table.json (backend='auto')",
    )
    p.add_argument(
        "--streams-sweep",
        type=_stream_counts,
        default=(),
        help="comma-separated stream counts: extra int8-static rows (threads split evenly among streams)",
    )
    p.add_argument("--json", default=None, help="write raw figures here")
    args = p.parse_args(argv)
    if args.reps < 3:
        print("note: fewer than 3 repetitions; medians are fragile on a shared machine", file=sys.stderr)
    gold, a, b = load_stsb_dev(Path(args.data))
    if args.limit:
        gold, a, b = gold[: args.limit], a[: args.limit], b[: args.limit]
    facts = machine_facts()
    line = machine_line(facts)
    isa = facts["feature_set"]
    print(f"machine: {line}", flush=True)
    out = {"machine": facts, "args": vars(args)}
    if args.skip_bi and (args.skip_cross or args.write_table):
        p.error("--skip-bi: nothing to run with --skip-cross, and --write-table needs the bi-encoder part")
    lines = [f"machine: {line}", ""]
    if not args.skip_bi:
        print("bi-encoder:", flush=True)
        out["bi"] = bench_bi(args, gold, a, b)
        lines += report(
            "Bi-encoder sentences/s, STS-B dev", out["bi"], "sentences/s", "STS-B dev Spearman", isa
        )
    if not args.skip_cross:
        print("cross-encoder:", flush=True)
        out["cross"] = bench_cross(args, a, b)
        lines += [""] + report(
            "Cross-encoder pairs/s, STS-B dev pairs (fresh head)",
            out["cross"],
            "pairs/s",
            "rank agreement with torch logits",
            isa,
        )
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    lines.append(
        f"\nload average (1 min) at start {facts['load_avg_1m']}, at end {out['load_avg_1m_end']} (2 CPUs)"
    )
    if args.write_table:
        from pairsmith.encoders.onnx_quant import ENGINE_TABLE

        row = write_table_row(out["bi"], facts, ENGINE_TABLE)
        lines.append(f"engine table row {isa}: {row}")
    print("\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**out, "table": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
