"""Encode-speed cost of trainable pooling: sentences/s of each model and the ratio to mean pooling.

All models in one process, one thread, interleaved per repetition, median of ``--reps``; the same
texts (the first ``--n`` STS-B dev sentences), tokenisation included, pairsmith's torch pipeline.
Run it under the shared lock::

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/pooling_speed.py \
        mean=runs/pooling/mean-s1/model multi-layer=runs/pooling/multi-layer-s1/model \
        last-layer=runs/pooling/last-layer-s1/model --json runs/pooling/speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=DIR; the first is the baseline of the ratios")
    ap.add_argument("--n", type=int, default=1000, help="texts per repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from pairsmith.distill.data import load_sts_set
    from pairsmith.encoders import BiEncoder

    torch.set_num_threads(args.threads)
    dev = load_sts_set("stsb-dev")
    texts = list(dict.fromkeys(dev.s1 + dev.s2))[: args.n]
    models = {}
    for spec in args.models:
        name, path = spec.split("=", 1)
        models[name] = BiEncoder.load(path, device="cpu", backend="torch")
        models[name].encode(texts[:64], batch_size=args.batch_size)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.reps):
        for name, enc in models.items():
            t0 = time.perf_counter()
            enc.encode(texts, batch_size=args.batch_size)
            times[name].append(time.perf_counter() - t0)
    base = next(iter(models))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {
        k: {
            "texts_per_s": round(len(texts) / med[k], 1),
            "time_ratio_to_" + base: round(med[k] / med[base], 3),
        }
        for k in models
    }
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    out = {
        "cpu": cpu,
        "threads": args.threads,
        "texts": len(texts),
        "reps": args.reps,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "models": {k: v.split("=", 1)[1] for k, v in zip(models, args.models, strict=True)},
        "results": rows,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
