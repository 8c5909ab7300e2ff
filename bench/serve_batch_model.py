"""Cost model of server batching vs in-process encode (no timing: tokenizer only).

A forward is modelled as costing its padded tokens plus a fixed per-forward overhead (in token
equivalents; ``pairsmith serve`` measures it at warm-up and logs it). For the serve bench's texts,
this prints the modelled server/in-process efficiency for pools of queued requests, with the old
plan (sorted chunks of 32 rows) and the padding-aware plan (``plan_batches``). It explains the
shape of ``bench/serve_bench.py`` results; it is not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from pairsmith.encoders.pipeline import plan_batches  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from serve_bench import make_texts
    from transformers import AutoTokenizer

    from pairsmith.encoders.source import default_model_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overhead", type=float, default=62.0, help="per-forward overhead, token equivalents")
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--texts-per-request", type=int, default=8)
    args = ap.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(str(default_model_dir()))
    lengths = np.array([len(x) for x in tok(make_texts(args.texts))["input_ids"]])
    f = args.overhead

    def chunks(pool):  # old plan, and in-process encode: sorted, 32 rows per forward
        s = np.sort(pool)[::-1]
        return sum(len(s[i : i + 32]) * s[i] + f for i in range(0, len(s), 32))

    def planned(pool):
        s = np.sort(pool)[::-1]
        return sum((e - b) * s[b] + f for b, e in plan_batches(s, 32, 8192, f))

    inproc = chunks(lengths)
    print(f"{len(lengths)} texts, {lengths.sum()} real tokens; in-process cost {inproc:.0f} (overhead {f})")
    tpr = args.texts_per_request
    reqs = [lengths[i : i + tpr] for i in range(0, len(lengths), tpr)]
    for clients, pattern in ((1, [1]), (4, [1, 3]), (16, [1, 15]), (16, [8, 8]), (64, [25, 39])):
        i = k = 0
        old = new = 0.0
        while i < len(reqs):
            n = pattern[k % len(pattern)]
            pool = np.concatenate(reqs[i : i + n])
            old, new = old + chunks(pool), new + planned(pool)
            i, k = i + n, k + 1
        print(f"{clients:3d} clients x {tpr} texts, batches of {pattern} requests: "
              f"old plan {inproc / old:.2f}, padding-aware plan {inproc / new:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
