"""Cross-attention pooling on the CPU: packed path vs padded SDPA, side by side in one run.

Baseline: what one writes without the kernel: pad the packed keys/values to the longest item, expand the
shared queries per item and call torch.nn.functional.scaled_dot_product_attention with a boolean mask.
Both sides start from the same packed inputs; the padding copy is part of the baseline's cost.

Shapes: Byte2Word-like (tens of thousands of words of 1-24 bytes, Nq 1-4) and multi-layer-pooling-like
(texts of 7 or 13 layer vectors, Nq 8-64). Forward, and forward + backward (gradients of q, k, v).
Median of --repeats runs, the two sides interleaved. Prints the CPU and its ISA.

    flock /tmp/pairsmith-cpu.lock .venv/bin/python bench/kernel_bench.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pairsmith.kernels import cross_attention_pool


@dataclass(frozen=True)
class Shape:
    name: str
    n_items: int
    len_min: int
    len_max: int
    n_q: int
    heads: int
    dim: int


SHAPES = [
    Shape("byte2word Nq=1", 20_000, 1, 24, 1, 4, 32),
    Shape("byte2word Nq=4", 20_000, 1, 24, 4, 4, 32),
    Shape("ml-pool L=7 Nq=8", 512, 7, 7, 8, 12, 32),
    Shape("ml-pool L=13 Nq=64", 256, 13, 13, 64, 12, 64),
    Shape("ml-pool L=7..13 Nq=16", 512, 7, 13, 16, 12, 32),
]


def isa_line() -> str:
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}; ISA: {' '.join(isa) or 'unknown'}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def make_inputs(shape: Shape, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(shape.len_min, shape.len_max + 1, (shape.n_items,), generator=g)
    cu = torch.zeros(shape.n_items + 1, dtype=torch.int64)
    cu[1:] = lens.cumsum(0)
    total = int(cu[-1])
    q = torch.randn(shape.n_q, shape.heads, shape.dim, generator=g)
    k = torch.randn(total, shape.heads, shape.dim, generator=g)
    v = torch.randn(total, shape.heads, shape.dim, generator=g)
    return q, k, v, cu


def padded_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """The baseline: pad, mask, SDPA. Returns (B, Nq, H, D) like the kernel."""
    lens = cu[1:] - cu[:-1]  # (B,)
    lmax = int(lens.max())
    pos = torch.arange(lmax)
    valid = pos[None, :] < lens[:, None]  # (B, Lmax)
    idx = torch.where(valid, cu[:-1, None] + pos[None, :], 0)  # (B, Lmax)
    kp = k[idx].transpose(1, 2)  # (B, H, Lmax, D); pads hold a copy of row 0, masked below
    vp = v[idx].transpose(1, 2)  # (B, H, Lmax, D)
    qe = q.transpose(0, 1).expand(len(lens), *q.transpose(0, 1).shape)  # (B, H, Nq, D), no copy
    out = F.scaled_dot_product_attention(qe, kp, vp, attn_mask=valid[:, None, None, :])  # (B, H, Nq, D)
    return out.transpose(1, 2)


def packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    return cross_attention_pool(q, k, v, cu, impl="packed")[0]


def run_once(fn, inputs, backward: bool, d_out: torch.Tensor) -> float:
    q, k, v, cu = inputs
    leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
    t0 = time.perf_counter()
    out = fn(*leaves, cu)
    if backward:
        out.backward(d_out)
    return time.perf_counter() - t0


def bench_shape(shape: Shape, repeats: int) -> dict:
    inputs = make_inputs(shape)
    q, k, v, cu = inputs
    with torch.no_grad():
        diff = float((packed(q, k, v, cu) - padded_sdpa(q, k, v, cu)).abs().max())
    d_out = torch.randn(shape.n_items, shape.n_q, shape.heads, shape.dim)
    row = {**asdict(shape), "total_keys": int(cu[-1]), "max_abs_diff": diff}
    for mode, backward in (("fwd", False), ("fwd+bwd", True)):
        times = {"sdpa_padded": [], "packed": []}
        for fn in (padded_sdpa, packed):  # warm-up
            run_once(fn, inputs, backward, d_out)
        for _ in range(repeats):
            for name, fn in (("sdpa_padded", padded_sdpa), ("packed", packed)):
                times[name].append(run_once(fn, inputs, backward, d_out))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        row[mode] = {
            "sdpa_padded_ms": med["sdpa_padded"] * 1e3,
            "packed_ms": med["packed"] * 1e3,
            "speedup": med["sdpa_padded"] / med["packed"],
            "spread_packed_ms": [min(times["packed"]) * 1e3, max(times["packed"]) * 1e3],
            "spread_sdpa_ms": [min(times["sdpa_padded"]) * 1e3, max(times["sdpa_padded"]) * 1e3],
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller item counts (a smoke run, not a figure)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES
    if args.quick:
        shapes = [
            Shape(s.name, max(64, s.n_items // 20), s.len_min, s.len_max, s.n_q, s.heads, s.dim)
            for s in SHAPES
        ]
    print(isa_line())
    print(f"median of {args.repeats}; times in ms; speedup = padded SDPA / packed (higher is better)")
    print(f"{'shape':<24} {'B':>6} {'keys':>7} {'mode':<8} {'sdpa_pad':>9} {'packed':>9} {'speedup':>8}")
    rows = []
    for shape in shapes:
        row = bench_shape(shape, args.repeats)
        rows.append(row)
        for mode in ("fwd", "fwd+bwd"):
            r = row[mode]
            print(
                f"{shape.name:<24} {shape.n_items:>6} {row['total_keys']:>7} {mode:<8} "
                f"{r['sdpa_padded_ms']:>9.1f} {r['packed_ms']:>9.1f} {r['speedup']:>7.2f}x",
                flush=True,
            )
    if args.json:
        from pairsmith.distill.provenance import code_version

        args.json.write_text(
            json.dumps(
                {"cpu": isa_line(), "code": code_version(), "repeats": args.repeats, "rows": rows}, indent=1
            )
        )


if __name__ == "__main__":
    main()
