"""A/B: BiEncoder.encode sentences/s on STS-B dev in this checkout (run it in two checkouts, alternating).

flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/core_ab.py LABEL
"""

import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import torch

torch.set_num_threads(2)
from pairsmith.encoders import BiEncoder

rows = [
    l.rstrip("\n").split("\t")
    for l in open(
        os.path.join(os.environ.get("PAIRSMITH_DATA", "../shared/data"), "sts/stsbenchmark/sts-dev.csv"),
        encoding="utf-8",
    )
]
texts = [r[5] for r in rows if len(r) > 6] + [r[6] for r in rows if len(r) > 6]
enc = BiEncoder.load("default", device="cpu")
enc.encode(texts[:64])
t = time.perf_counter()
enc.encode(texts, batch_size=32)
dt = time.perf_counter() - t
print(f"{sys.argv[1]} {len(texts) / dt:.0f} sent/s")
