"""Scale with work: throughput and p99 latency as text length and request size grow, per CPU backend.

For torch, ONNX fp32 and ONNX int8 (static; ``--variants`` adds others), in
one process, interleaved per point:

- text length: one call of ``--length-batch`` texts (default 32) of exactly
  16, 32, 64, 128, 256 tokens (synthetic words trimmed with the model's own
  tokenizer);
- request size: one call of 1, 4, 16, 64, 256 texts of 12-30 tokens.

Each point repeats the call for ``--seconds`` (at least ``--min-calls``):
throughput = texts / median call time, p99 = 99th percentile of call times
(with few calls this is close to the slowest call). Then the resident memory
(RSS) of ``pairsmith serve`` per backend after a warm-up request. Writes a
JSON file and two PNG plots (matplotlib, the ``dev`` extra) into ``--out-dir``.
Every line names the CPU feature set.

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/scale_bench.py --out-dir docs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_facts, machine_line  # noqa: E402

LENGTHS = (16, 32, 64, 128, 256)
SIZES = (1, 4, 16, 64, 256)
_WORDS = (
    "the a river market model server batch token query answer search index vector quietly bright small "
    "large runs writes reads finds learns builds morning evening city village mountain ocean forest music "
    "code tea coffee bread rain snow wind sun committee budget harvest library station engine report"
).split()


def texts_of_length(tokenizer, n_texts: int, tokens: int, seed: int = 0) -> list[str]:
    """Texts that tokenise to exactly ``tokens`` ids (specials included), via the model's tokenizer."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_texts):
        words = list(rng.choice(_WORDS, size=tokens * 2))
        ids = tokenizer.encode([" ".join(words)]).ids[0]
        body = ids[1 : tokens - 1]  # keep [CLS] ... [SEP] room
        text = tokenizer._tok.decode(body)
        got = len(tokenizer.encode([text]).ids[0])
        while got > tokens:  # a decode/encode round trip can split differently: trim words
            text = text.rsplit(" ", 1)[0]
            got = len(tokenizer.encode([text]).ids[0])
        out.append(text)
    return out


def sentences(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(10, 27)))) + "." for _ in range(n)]


def time_calls(fn, seconds: float, min_calls: int) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return times


def load_encoders(model: str, variants: list[str]) -> dict:
    from pairsmith.encoders import BiEncoder
    from pairsmith.encoders.onnx_export import ExportConfig, export_onnx

    export_onnx(model, ExportConfig(quantize="int8-dynamic"))
    export_onnx(model, ExportConfig(quantize="int8-static"))
    encs = {"torch": BiEncoder.load(model, device="cpu", backend="torch")}
    for v in variants:
        encs[f"onnx {v}"] = BiEncoder.load(model, device="cpu", backend="onnx", onnx_variant=v)
    return encs


def server_rss(model: str, backend: str) -> float:
    """RSS (MiB) of ``pairsmith serve --backend X`` after one Embed call."""
    import grpc
    from peers import rss_mib
    from serve_bench import start_server, wait_serving

    from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2 as pb
    from pairsmith.service.gen.pairsmith.v1 import pairsmith_service_pb2_grpc as pb_grpc

    proc, port, _ = start_server(model, ["--backend", backend])
    try:
        target = f"127.0.0.1:{port}"
        wait_serving(target)
        with grpc.insecure_channel(target) as ch:
            pb_grpc.PairsmithServiceStub(ch).Embed(pb.EmbedRequest(texts=sentences(64)), timeout=120)
        return round(rss_mib(proc.pid), 1)
    finally:
        proc.terminate()
        proc.wait(60)


def plot(res: dict, out_dir: Path, line: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, xlabel, fname in (
        ("length", f"tokens per text (batch of {res['length_batch']})", "scale_length.png"),
        ("size", "texts per call (12-30 tokens each)", "scale_request.png"),
    ):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for name, pts in res[key].items():
            xs = [p["x"] for p in pts]
            ax1.plot(xs, [p["texts_per_s"] for p in pts], marker="o", label=name)
            ax2.plot(xs, [p["p99_ms"] for p in pts], marker="o", label=name)
        for ax, ylabel in ((ax1, "texts/s"), (ax2, "p99 latency per call (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        ax1.set_yscale("log")
        ax2.set_yscale("log")
        ax1.legend()
        fig.suptitle(line, fontsize=8)
        fig.tight_layout()
        p = out_dir / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--variants", default="fp32,int8-static", help="onnx variants besides torch")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--length-batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=1.5, help="per point and backend")
    ap.add_argument("--min-calls", type=int, default=5)
    ap.add_argument("--no-rss", action="store_true", help="skip the server memory measurement")
    ap.add_argument("--out-dir", type=Path, default=Path("docs"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    facts = machine_facts()
    line = machine_line(facts)
    print(f"machine: {line}", flush=True)
    encs = load_encoders(args.model, [v for v in args.variants.split(",") if v])
    tok = encs["torch"].tokenizer
    for e in encs.values():
        e.encode(sentences(64))  # warm-up
    res: dict = {"machine": facts, "length_batch": args.length_batch, "length": {}, "size": {}}
    for key, xs in (("length", args.lengths), ("size", args.sizes)):
        for x in (int(v) for v in xs.split(",")):
            if key == "length":
                batch = texts_of_length(tok, args.length_batch, x)
            else:
                batch = sentences(x, seed=x)
            for name, enc in encs.items():
                times = time_calls(
                    lambda enc=enc, b=batch: enc.encode(b, batch_size=32), args.seconds, args.min_calls
                )
                pt = {
                    "x": x,
                    "texts_per_s": round(len(batch) / statistics.median(times), 1),
                    "p50_ms": round(1e3 * float(np.percentile(times, 50)), 2),
                    "p99_ms": round(1e3 * float(np.percentile(times, 99)), 2),
                    "calls": len(times),
                }
                res[key].setdefault(name, []).append(pt)
                print(f"[{facts['feature_set']}] {key}={x:4d} {name:18s} {pt}", flush=True)
    if not args.no_rss:
        res["server_rss_mib"] = {b: server_rss(args.model, b) for b in ("torch", "onnx")}
        print(f"[{facts['feature_set']}] server RSS after warm-up (MiB): {res['server_rss_mib']}", flush=True)
    res["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for p in plot(res, args.out_dir, line):
        print(f"wrote {p}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
