"""GPU check of the Triton cross-attention pooling kernel: parity, GB/s, ratio vs eager PyTorch (< 5 min).

For each shape and dtype (bf16, fp32): Triton vs the eager reference (``impl="reference"``, padded
PyTorch) and vs padded SDPA, forward and forward + backward, median of CUDA-event timings. Prints
achieved GB/s (bytes the fused kernel must move: read q, k, v, write out and lse; backward also reads dO,
lse, delta and writes dk, dv) against the device's peak (from its memory clock and bus width) and a
measured device-to-device copy. Parity: triton vs an fp32 reference on the same inputs; bf16 is checked
here because Triton's CPU interpreter cannot run it. Without CUDA it prints a skip line and exits 0.

    python bench/kernel_gpu_check.py [--json OUT] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pairsmith.kernels import cross_attention_pool

SHAPES = [  # name, items, len_min, len_max, Nq, H, D
    ("byte2word Nq=1", 65_536, 1, 24, 1, 4, 64),
    ("byte2word Nq=4", 65_536, 1, 24, 4, 4, 64),
    ("ml-pool L=13 Nq=64", 512, 13, 13, 64, 12, 64),
    ("ml-pool L=33 Nq=64 (7B-like)", 256, 33, 33, 64, 32, 128),
]
# Parity bounds (max abs error vs an fp32 reference on the same inputs, values O(1)): fp32 dots are IEEE,
# so fp32 sums differ by ulps; bf16 rounds probabilities to bf16 (2**-8 relative) before P@V, as
# FlashAttention does, and rounds the output once more.
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def cuda_time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def peak_bandwidth() -> tuple[float | None, float]:
    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    peak = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None  # DDR: 2 per clock
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")  # 256 MiB
    dst = torch.empty_like(src)
    copy_s = cuda_time(lambda: dst.copy_(src), 10)
    return peak, 2 * src.numel() / copy_s / 1e9  # read + write


def padded_sdpa(q, k, v, cu):  # noqa: ANN001 - same baseline as bench/kernel_bench.py
    lens = cu[1:] - cu[:-1]
    lmax = int(lens.max())
    pos = torch.arange(lmax, device=k.device)
    valid = pos[None, :] < lens[:, None]
    idx = torch.where(valid, cu[:-1, None] + pos[None, :], 0)
    # Per-item query copies (an expanded view breaks SDPA's backward: "more than one element of the
    # written-to tensor refers to a single memory location"); cuDNN's attention is left out: it failed on
    # 65,536 items in bf16 on an H200 (mha_graph.execute), the memory-efficient kernel takes the mask.
    qe = q.transpose(0, 1).expand(len(lens), *q.transpose(0, 1).shape).contiguous()
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        out = F.scaled_dot_product_attention(
            qe, k[idx].transpose(1, 2), v[idx].transpose(1, 2), attn_mask=valid[:, None, None, :]
        )
    return out.transpose(1, 2)


def check_shape(name, n_items, lo, hi, n_q, heads, dim, dtype, repeats) -> dict:  # noqa: ANN001
    g = torch.Generator(device="cuda").manual_seed(0)
    lens = torch.randint(lo, hi + 1, (n_items,), device="cuda", generator=g)
    cu = torch.zeros(n_items + 1, dtype=torch.int32, device="cuda")
    cu[1:] = lens.cumsum(0)
    total = int(cu[-1])
    q = torch.randn(n_q, heads, dim, device="cuda", generator=g).to(dtype)
    k = torch.randn(total, heads, dim, device="cuda", generator=g).to(dtype)
    v = torch.randn(total, heads, dim, device="cuda", generator=g).to(dtype)
    d_out = torch.randn(n_items, n_q, heads, dim, device="cuda", generator=g).to(dtype)
    leaves = {impl: [t.clone().requires_grad_() for t in (q, k, v)] for impl in ("triton", "reference")}
    ref32 = [t.float().clone().requires_grad_() for t in (q, k, v)]
    out32, lse32 = cross_attention_pool(*ref32, cu, impl="reference")
    out32.backward(d_out.float())
    out_t, lse_t = cross_attention_pool(*leaves["triton"], cu, impl="triton")
    out_t.backward(d_out)
    err = {"out": float((out_t.float() - out32).abs().max()), "lse": float((lse_t - lse32).abs().max())}
    for n, a, b in zip("qkv", leaves["triton"], ref32, strict=True):
        err[f"d{n}"] = float((a.grad.float() - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-6))
    ok = err["out"] <= TOL[dtype] and all(err[f"d{n}"] <= TOL[dtype] for n in "qkv")
    # an item alone equals the same item in the batch
    b = n_items // 2
    s, e = int(cu[b]), int(cu[b + 1])
    alone, _ = cross_attention_pool(q, k[s:e], v[s:e], torch.tensor([0, e - s], device="cuda"), impl="triton")
    full, _ = cross_attention_pool(q, k, v, cu, impl="triton")
    ok = ok and torch.equal(alone[0], full[b])

    def fwd(impl):
        return lambda: cross_attention_pool(q, k, v, cu, impl=impl)

    def fwd_bwd(impl):
        def run():
            ls = [t.detach().requires_grad_() for t in (q, k, v)]
            if impl == "sdpa":
                padded_sdpa(*ls, cu.long()).backward(d_out)
            else:
                cross_attention_pool(*ls, cu, impl=impl)[0].backward(d_out)

        return run

    times: dict[str, float] = {}
    nan = float("nan")
    for impl in ("triton", "reference", "sdpa"):
        f = (lambda: padded_sdpa(q, k, v, cu.long())) if impl == "sdpa" else fwd(impl)
        for key, fn in ((f"{impl}_fwd_ms", f), (f"{impl}_fwdbwd_ms", fwd_bwd(impl))):
            try:
                times[key] = cuda_time(fn, repeats) * 1e3
            except Exception as e:  # a baseline failing must not hide the kernel's own figures
                if impl == "triton":
                    raise
                print(f"  {name} {dtype}: {key} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
                times[key] = nan
    es = torch.tensor([], dtype=dtype).element_size()
    fwd_bytes = (q.numel() + k.numel() + v.numel() + d_out.numel()) * es + lse32.numel() * 4 + cu.numel() * 4
    bwd_bytes = (
        q.numel() + k.numel() + v.numel() + 2 * d_out.numel() + k.numel() + v.numel()
    ) * es + 2 * lse32.numel() * 4
    return {
        "shape": name, "dtype": str(dtype).replace("torch.", ""), "items": n_items, "keys": total, "ok": bool(ok),
        "err": err, **times,
        "triton_fwd_GBps": fwd_bytes / (times["triton_fwd_ms"] / 1e3) / 1e9,
        "triton_fwdbwd_GBps": (fwd_bytes + bwd_bytes) / (times["triton_fwdbwd_ms"] / 1e3) / 1e9,
        "speedup_fwd_vs_eager": times["reference_fwd_ms"] / times["triton_fwd_ms"],
        "speedup_fwdbwd_vs_eager": times["reference_fwdbwd_ms"] / times["triton_fwdbwd_ms"],
        "speedup_fwd_vs_sdpa": times["sdpa_fwd_ms"] / times["triton_fwd_ms"],
        "speedup_fwdbwd_vs_sdpa": times["sdpa_fwdbwd_ms"] / times["triton_fwdbwd_ms"],
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--shapes", default="", help="only shapes whose name contains one of these (comma-separated)"
    )
    ap.add_argument("--dtypes", default="bf16,fp32", help="bf16 and/or fp32")
    ap.add_argument("--num-warps", type=int, default=None, help="Triton launch warps (default: Triton's, 4)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(
            "SKIP: no CUDA device here (torch sees none); run this script on a GPU machine. Nothing was measured."
        )
        return 0
    if args.num_warps is not None:
        from pairsmith.kernels import triton_pool

        triton_pool.NUM_WARPS = args.num_warps
    props = torch.cuda.get_device_properties(0)
    peak, copy_gbps = peak_bandwidth()
    peak_s = f"{peak:.0f} GB/s" if peak else "unknown"
    print(
        f"{props.name}, {props.total_memory / 2**30:.0f} GiB; peak DRAM {peak_s}; measured d2d copy {copy_gbps:.0f} GB/s"
    )
    print(
        f"torch {torch.__version__}; median of {args.repeats} CUDA-event timings; ms; num_warps {args.num_warps or 'default'}"
    )
    rows = []
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    pick = [x for x in args.shapes.split(",") if x]
    for dname in args.dtypes.split(","):
        dtype = dtypes[dname]
        for shape in SHAPES:
            if pick and not any(p in shape[0] for p in pick):
                continue
            t0 = time.perf_counter()
            try:
                r = check_shape(*shape, dtype, args.repeats)
            except Exception as e:  # one shape failing (compiler, memory) must not hide the others
                print(f"{shape[0]:<28} {str(dtype):<14} FAILED: {type(e).__name__}: {e}", flush=True)
                rows.append({"shape": shape[0], "dtype": str(dtype).replace("torch.", ""), "ok": False,
                             "error": f"{type(e).__name__}: {e}"})  # fmt: skip
                torch.cuda.empty_cache()
                continue
            rows.append(r)
            print(
                f"{r['shape']:<28} {r['dtype']:<8} ok={r['ok']} err(out)={r['err']['out']:.1e} "
                f"fwd: triton {r['triton_fwd_ms']:.2f} eager {r['reference_fwd_ms']:.2f} sdpa {r['sdpa_fwd_ms']:.2f} "
                f"({r['speedup_fwd_vs_eager']:.1f}x eager, {r['speedup_fwd_vs_sdpa']:.1f}x sdpa, "
                f"{r['triton_fwd_GBps']:.0f} GB/s = {r['triton_fwd_GBps'] / copy_gbps:.0%} of copy) | "
                f"fwd+bwd: triton {r['triton_fwdbwd_ms']:.2f} eager {r['reference_fwdbwd_ms']:.2f} "
                f"sdpa {r['sdpa_fwdbwd_ms']:.2f} ({r['speedup_fwdbwd_vs_eager']:.1f}x eager, "
                f"{r['triton_fwdbwd_GBps']:.0f} GB/s) [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": props.name, "peak_GBps": peak, "copy_GBps": copy_gbps, "rows": rows}, indent=1
            )
        )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
