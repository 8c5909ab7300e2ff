"""A/B: BiEncoder.encode sentences/s on all STS-B dev sentences, in this checkout.

Run it alternately in two checkouts (e.g. before and after a refactor), each under the CPU lock:

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/core_ab.py LABEL
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from pairsmith.encoders import BiEncoder  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    data = os.environ.get("PAIRSMITH_DATA", "../shared/data")
    path = os.path.join(data, "sts/stsbenchmark/sts-dev.csv")
    with open(path, encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh]
    texts = [r[5] for r in rows if len(r) > 6] + [r[6] for r in rows if len(r) > 6]
    enc = BiEncoder.load("default", device="cpu", backend="torch")
    enc.encode(texts[:64])  # warm-up
    t0 = time.perf_counter()
    enc.encode(texts, batch_size=32)
    dt = time.perf_counter() - t0
    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    print(f"{label} {len(texts) / dt:.0f} sent/s ({len(texts)} sentences)")


if __name__ == "__main__":
    main()
