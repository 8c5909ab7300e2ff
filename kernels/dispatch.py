"""The public entry points: validation at the boundary, then one of the implementations.

See the package docstring (``pairsmith/kernels/__init__.py``) for the contract.
"""

from __future__ import annotations

import enum
import importlib.util
import math

import torch
import torch.nn.functional as F

from pairsmith.errors import FailedPrecondition, InvalidInput, parse_enum

from .reference import cross_attention_pool_reference

TRITON_HINT = 'pip install "triton==3.9.0"'
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Impl(enum.Enum):
    """Which implementation runs. ``AUTO``: Triton on CUDA tensors when triton imports, else packed
    (the reference for small ragged CPU problems: ``choose_impl``)."""

    AUTO = "auto"
    REFERENCE = "reference"  # padded PyTorch, the specification (reference.py)
    PACKED = "packed"  # no padding: segment softmax + sparse products (packed.py); the CPU default
    TRITON = "triton"  # fused forward/backward kernels (triton_pool.py); CPU only under TRITON_INTERPRET=1


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str | Impl, device: torch.device) -> Impl:
    chosen = parse_enum(Impl, impl, "impl")
    if chosen is Impl.AUTO:
        return Impl.TRITON if device.type == "cuda" and triton_available() else Impl.PACKED
    if chosen is Impl.TRITON:
        if not triton_available():
            raise FailedPrecondition(f"impl='triton' needs Triton: {TRITON_HINT}")
        if device.type != "cuda":
            from .triton_pool import interpreter_active

            if not interpreter_active():
                raise FailedPrecondition(
                    f"impl='triton' on {device.type} tensors runs only in Triton's interpreter: set "
                    "TRITON_INTERPRET=1 at process start, before anything imports triton (slow; for tests), "
                    "or use impl='packed' on the CPU"
                )
    return chosen


# Below this many packed keys, ragged items run faster padded (the reference's few dense ops) than through
# the packed path's chain of small segment ops: measured on the AVX2 EPYC, 2 threads, forward / with
# backward, reference time / packed time: 4-16 items (37-172 keys) 0.36-0.78; 64 items (647-866 keys)
# 0.91-1.24; 256+ items 1.2-4.4 (bench/kernel_auto_crossover.py; bench/results/kernels/auto-crossover-s6.txt).
AUTO_REFERENCE_MAX_KEYS = 512


# ``auto`` on CUDA, fp32: the Triton kernel's fp32 (IEEE) dots run on CUDA cores, and a large query x
# head-dim tile spills: measured on an H200 (bench/kernel_gpu_check.py, docs/results.md, kernels/GPU),
# Nq 64 x D 128 took 22 ms forward vs 1.9 ms for the eager reference (0.09x), Nq 64 x D 64 was 2.0x
# faster than eager. Above this tile size auto takes the reference for fp32; bf16/fp16 keep Triton (6x).
AUTO_TRITON_FP32_MAX_TILE = 64 * 64


def triton_fp32_tile_too_large(n_q: int, dim: int, dtype: torch.dtype) -> bool:
    """Whether ``auto`` should avoid the Triton kernel: fp32 with a (padded) Nq x D tile over the limit."""
    from .triton_pool import tile_side  # the kernel's own tile rule (imports without triton)

    return dtype == torch.float32 and tile_side(n_q) * tile_side(dim) > AUTO_TRITON_FP32_MAX_TILE


def choose_impl(impl: str | Impl, q: torch.Tensor, cu_seqlens: torch.Tensor) -> Impl:
    """``resolve_impl`` plus, for ``auto``: on the CPU the reference for small ragged problems, on CUDA
    the reference for fp32 with a large query tile (:data:`AUTO_TRITON_FP32_MAX_TILE`).

    Equal lengths (one item, or multi-layer pooling where every text has L layer vectors) keep the packed
    path: its dense branch beats the reference there at every size measured (1 item: 1.8x).
    """
    from .packed import uniform_length

    requested = parse_enum(Impl, impl, "impl")
    chosen = resolve_impl(requested, q.device)
    if chosen is Impl.TRITON and requested is Impl.AUTO:
        n_q, _, dim = q.shape[-3:]
        return Impl.REFERENCE if triton_fp32_tile_too_large(n_q, dim, q.dtype) else Impl.TRITON
    if chosen is not Impl.PACKED or requested is not Impl.AUTO:
        return chosen
    if int(cu_seqlens[-1]) >= AUTO_REFERENCE_MAX_KEYS or cu_seqlens.numel() <= 2:
        return Impl.PACKED
    return Impl.PACKED if uniform_length(cu_seqlens) is not None else Impl.REFERENCE


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> int:
    """Raise InvalidInput naming the argument and the rule it breaks; return the item count B."""
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens)):
        if not isinstance(t, torch.Tensor):
            raise InvalidInput(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if q.dim() not in (3, 4):
        raise InvalidInput(f"q: expected (Nq, H, D) or per-item (B, Nq, H, D), got shape {_shape(q)}")
    if k.dim() != 3 or v.dim() != 3:
        raise InvalidInput(f"k, v: expected packed (total, H, D), got k {_shape(k)} and v {_shape(v)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in FLOAT_DTYPES:
            raise InvalidInput(f"{name}: dtype {t.dtype} is not a float type {FLOAT_DTYPES}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InvalidInput(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device == cu_seqlens.device):
        raise InvalidInput(
            f"q, k, v, cu_seqlens on different devices: {q.device}, {k.device}, {v.device}, {cu_seqlens.device}"
        )
    n_q, heads, dim = q.shape[-3:]
    if n_q == 0 or heads == 0 or dim == 0:
        raise InvalidInput(f"q: Nq, H and D must be >= 1, got shape {_shape(q)}")
    if k.shape[0] != v.shape[0] or k.shape[1] != heads or v.shape[1] != heads or k.shape[2] != dim:
        raise InvalidInput(
            f"shapes disagree: q {_shape(q)} (.., Nq, H={heads}, D={dim}), k {_shape(k)} must be (total, {heads}, {dim}), "
            f"v {_shape(v)} must be (total, {heads}, Dv) with the same total"
        )
    if v.shape[2] == 0:
        raise InvalidInput(f"v: Dv must be >= 1, got shape {_shape(v)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise InvalidInput(f"cu_seqlens: expected a 1-D (B+1,) tensor, got shape {_shape(cu_seqlens)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise InvalidInput(f"cu_seqlens: expected int32 or int64, got {cu_seqlens.dtype}")
    total = k.shape[0]
    first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
    if first != 0:
        raise InvalidInput(f"cu_seqlens: must start at 0, starts at {first}")
    if last != total:
        raise InvalidInput(f"cu_seqlens: must end at total = k.shape[0] = {total}, ends at {last}")
    steps = cu_seqlens[1:] - cu_seqlens[:-1]
    if steps.numel() and bool((steps < 0).any()):
        b = int(torch.nonzero(steps < 0)[0, 0])
        raise InvalidInput(
            f"cu_seqlens: must be non-decreasing; item {b} has cu[{b}] = {int(cu_seqlens[b])} > cu[{b + 1}] = {int(cu_seqlens[b + 1])}"
        )
    n_items = cu_seqlens.numel() - 1
    if q.dim() == 4 and q.shape[0] != n_items:
        raise InvalidInput(f"q: per-item queries {_shape(q)} need B = len(cu_seqlens) - 1 = {n_items} rows")
    return n_items


def check_scale(scale: float | None, dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InvalidInput(f"scale: expected a finite number, got {scale!r}")
    return float(scale)


def cross_attention_pool(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    impl: str | Impl = Impl.AUTO,
    mean_over_queries: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learned queries attend over ragged packed items; returns ``(out, lse)``.

    q (Nq, H, D) shared by all items, or per-item (B, Nq, H, D); k (total, H, D), v (total, H, Dv) packed;
    cu_seqlens (B+1,) int32/int64 item boundaries. out (B, Nq, H, Dv) in q's dtype ((B, H, Dv) with
    ``mean_over_queries``); lse (B, Nq, H) fp32, -inf for an item with no keys (whose out is 0).
    """
    check_inputs(q, k, v, cu_seqlens)
    scale = check_scale(scale, q.shape[-1])
    chosen = choose_impl(impl, q, cu_seqlens)
    if chosen is Impl.REFERENCE:
        out, lse = cross_attention_pool_reference(q, k, v, cu_seqlens, scale)
    elif chosen is Impl.PACKED:
        from .packed import cross_attention_pool_packed

        out, lse = cross_attention_pool_packed(q, k, v, cu_seqlens, scale)
    else:
        from .triton_pool import cross_attention_pool_triton

        out, lse = cross_attention_pool_triton(q, k, v, cu_seqlens, scale)
    return (out.mean(dim=1) if mean_over_queries else out), lse


def cross_attention_pool_projected(
    q: torch.Tensor,
    x: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    b_k: torch.Tensor | None = None,
    b_v: torch.Tensor | None = None,
    scale: float | None = None,
    impl: str | Impl = Impl.AUTO,
    mean_over_queries: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values projected from raw inputs, then pooled: k = x @ w_k.T + b_k, v = x @ w_v.T + b_v.

    x (total, C) packed; w_k (H*D, C) and w_v (H*Dv, C) in ``nn.Linear.weight`` layout (output feature
    h*D + d is head h, dim d); b_k (H*D,), b_v (H*Dv,) optional. Same outputs as ``cross_attention_pool``;
    gradients reach q, x, the weights and the biases. One GEMM over x makes k and v together (x read once).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise InvalidInput(f"x: expected packed raw inputs (total, C), got {getattr(x, 'shape', type(x))}")
    if not isinstance(q, torch.Tensor) or q.dim() not in (3, 4):
        raise InvalidInput(f"q: expected (Nq, H, D) or (B, Nq, H, D), got {getattr(q, 'shape', type(q))}")
    heads, dim = q.shape[-2:]
    c_in = x.shape[1]
    for name, w in (("w_k", w_k), ("w_v", w_v)):
        if (
            not isinstance(w, torch.Tensor)
            or w.dim() != 2
            or w.shape[1] != c_in
            or w.shape[0] % max(heads, 1)
        ):
            raise InvalidInput(
                f"{name}: expected (H*D, C) = ({heads}*D, {c_in}), got {getattr(w, 'shape', type(w))}"
            )
        if w.dtype != x.dtype or w.device != x.device:
            raise InvalidInput(
                f"{name}: dtype/device {w.dtype}/{w.device} differ from x's {x.dtype}/{x.device}"
            )
    if w_k.shape[0] != heads * dim:
        raise InvalidInput(f"w_k: expected {heads * dim} = H*D output features, got {w_k.shape[0]}")
    for name, bias, w in (("b_k", b_k, w_k), ("b_v", b_v, w_v)):
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (w.shape[0],)):
            raise InvalidInput(
                f"{name}: expected shape ({w.shape[0]},), got {getattr(bias, 'shape', type(bias))}"
            )
    d_v = w_v.shape[0] // heads
    bias = None
    if b_k is not None or b_v is not None:
        bias = torch.cat(
            [
                b_k if b_k is not None else w_k.new_zeros(w_k.shape[0]),
                b_v if b_v is not None else w_v.new_zeros(w_v.shape[0]),
            ]
        )  # (H*D + H*Dv,)
    kv = F.linear(x, torch.cat([w_k, w_v]), bias)  # (total, H*D + H*Dv): one pass over x for both
    k = kv[:, : heads * dim].reshape(-1, heads, dim)  # (total, H, D)
    v = kv[:, heads * dim :].reshape(-1, heads, d_v)  # (total, H, Dv)
    return cross_attention_pool(
        q, k, v, cu_seqlens, scale=scale, impl=impl, mean_over_queries=mean_over_queries
    )
