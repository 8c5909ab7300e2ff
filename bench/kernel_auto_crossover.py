"""Where ``impl="auto"`` should switch on the CPU: reference (padded) vs packed time by problem size.

Ragged multi-layer-like items (7-13 keys, 12 heads, Nq 16) and Byte2Word-like words (1-24 bytes, 4 heads,
Nq 1 and 4), B = 1 ... 1,024 items; forward and forward + backward; median of --repeats calls after two
warm-up calls. The printed reference / packed ratio is what ``kernels.dispatch.AUTO_REFERENCE_MAX_KEYS``
is set from (ratio < 1: the reference is faster). Prints the CPU and its ISA.

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/kernel_auto_crossover.py [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from kernel_bench import Shape, isa_line, make_inputs

from pairsmith.distill.provenance import code_version
from pairsmith.kernels import cross_attention_pool

FAMILIES = [
    ("ml-pool", 7, 13, 16, 12, 32),
    ("byte2word Nq1", 1, 24, 1, 4, 32),
    ("byte2word Nq4", 1, 24, 4, 4, 32),
]
ITEMS = (1, 4, 16, 64, 256, 1024)


def median_ms(impl: str, inputs, repeats: int, grad: bool) -> float:
    q, k, v, cu = inputs
    times = []
    for _ in range(repeats + 2):
        leaves = [t.detach().requires_grad_(grad) for t in (q, k, v)]
        t0 = time.perf_counter()
        out = cross_attention_pool(*leaves, cu, impl=impl)[0]
        if grad:
            out.sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [isa_line(), f"code {code_version()}", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())]
    lines.append("family           items   keys  grad   reference_ms  packed_ms  reference/packed")
    print("\n".join(lines), flush=True)
    for name, lo, hi, n_q, heads, dim in FAMILIES:
        for n in ITEMS:
            inputs = make_inputs(Shape(name, n, lo, hi, n_q, heads, dim))
            keys = int(inputs[3][-1])
            for grad in (False, True):
                ref = median_ms("reference", inputs, args.repeats, grad)
                packed = median_ms("packed", inputs, args.repeats, grad)
                line = f"{name:15s} {n:6d} {keys:6d} {int(grad):5d} {ref:14.3f} {packed:10.3f} {ref / packed:17.2f}"
                lines.append(line)
                print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
