"""Cross-attention pooling as fused Triton kernels (forward and backward).

Layers, as in the Triton tutorials: private kernels (``_fwd_kernel``, ``_bwd_kernel``) -> launchers
(allocation, block sizes, grid) -> ``TritonPool`` (autograd.Function) -> ``cross_attention_pool_triton``.

Schedule: program (p, h) handles ITEMS consecutive items for head h. Per item it loads the Nq queries
once (BLOCK_Q rows, padded to 16 for ``tl.dot``) and walks the item's keys in tiles of BLOCK_L rows with an
online softmax, so k and v are read exactly once and the scores never leave registers. Bytes moved:
read q, k, v once, write out and lse once; the padded reference also writes and re-reads padded copies of
k and v and fp32 score tensors of B * H * Nq * Lmax.

Backward recomputes the probabilities from the saved lse (FlashAttention-2 equations):
dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dK = scale dS^T Q, dQ = scale dS K.
Each key row belongs to one item, so dK and dV rows are written once, without atomics. The query gradient
of shared queries is a sum over every item: each program accumulates it in registers across its ITEMS
items and writes one fp32 partial (grid rows x Nq x H x D); a second pass (a torch ``sum`` over the few
grid rows) finishes it. Deterministic, and never one copy of q per item. Per-item queries store dq directly.

Numerics: scores, softmax and accumulators in fp32; for fp16/bf16 inputs the probabilities are rounded to
the input dtype before the P @ V and dS @ K products (as FlashAttention does); fp32 inputs use IEEE fp32
dots (no TF32). On the CPU the kernels run only in Triton's interpreter (TRITON_INTERPRET=1), where bf16 is
not trustworthy. Kernels are jitted lazily, per interpreter setting, so the variable is read at first use.
"""

from __future__ import annotations

import functools
import os

import torch

try:  # the module must import without triton: pairsmith.kernels imports it only for impl="triton"
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = tl = None

from pairsmith.errors import InvalidInput


def _fwd_kernel(
    Q, K, V, CU, OUT, LSE, scale, n_items, n_q, dim, dim_v,
    stride_qb, stride_qi, stride_qh, stride_qd,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_ob, stride_oi, stride_oh, stride_od,
    stride_lb, stride_li, stride_lh,
    ITEMS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    h = tl.program_id(1)
    offs_q = tl.arange(0, BLOCK_Q)  # (BQ,)
    offs_l = tl.arange(0, BLOCK_L)  # (BL,)
    offs_d = tl.arange(0, BLOCK_D)  # (BD,)
    offs_dv = tl.arange(0, BLOCK_DV)  # (BDV,)
    q_ok = offs_q < n_q
    for it in range(ITEMS):
        b = pid * ITEMS + it
        if b < n_items:
            start = tl.load(CU + b)
            end = tl.load(CU + b + 1)
            q_ptrs = (
                Q + b * stride_qb + offs_q[:, None] * stride_qi + h * stride_qh + offs_d[None, :] * stride_qd
            )
            q = tl.load(q_ptrs, mask=q_ok[:, None] & (offs_d[None, :] < dim), other=0.0)  # (BQ, BD)
            m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)  # running max
            l_i = tl.zeros([BLOCK_Q], tl.float32)  # running sum of exp
            acc = tl.zeros([BLOCK_Q, BLOCK_DV], tl.float32)  # running sum of p * v
            for l0 in range(start, end, BLOCK_L):
                rows = l0 + offs_l  # (BL,)
                r_ok = rows < end
                k_ptrs = K + rows[None, :] * stride_kt + h * stride_kh + offs_d[:, None] * stride_kd
                kt = tl.load(k_ptrs, mask=r_ok[None, :] & (offs_d[:, None] < dim), other=0.0)  # (BD, BL)
                s = tl.dot(q, kt, input_precision=PRECISION) * scale  # (BQ, BL) fp32
                s = tl.where(r_ok[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: the tile has at least one key
                alpha = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = -inf)
                p = tl.exp(s - m_new[:, None])  # (BQ, BL), 0 past the item's end
                l_i = l_i * alpha + tl.sum(p, 1)
                v_ptrs = V + rows[:, None] * stride_vt + h * stride_vh + offs_dv[None, :] * stride_vd
                v = tl.load(v_ptrs, mask=r_ok[:, None] & (offs_dv[None, :] < dim_v), other=0.0)  # (BL, BDV)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m_i = m_new
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty item: 0 / 1 = 0
            lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))  # empty: -inf
            o_ptrs = (
                OUT
                + b * stride_ob
                + offs_q[:, None] * stride_oi
                + h * stride_oh
                + offs_dv[None, :] * stride_od
            )
            tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=q_ok[:, None] & (offs_dv[None, :] < dim_v))
            tl.store(LSE + b * stride_lb + offs_q * stride_li + h * stride_lh, lse, mask=q_ok)


def _bwd_kernel(
    Q, K, V, CU, DO, LSE, DELTA, DQ, DK, DV, scale, n_items, n_q, dim, dim_v,
    stride_qb, stride_qi, stride_qh, stride_qd,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_ob, stride_oi, stride_oh, stride_od,
    stride_lb, stride_li, stride_lh,
    stride_dqb, stride_dqi, stride_dqh, stride_dqd,
    PER_ITEM_Q: tl.constexpr, ITEMS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # dK, dV share k's and v's strides (allocated like them); dO, LSE and DELTA share out's and lse's.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ok = offs_q < n_q
    qd_mask = q_ok[:, None] & (offs_d[None, :] < dim)
    dq_acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)  # this program's share of the shared-query gradient
    for it in range(ITEMS):
        b = pid * ITEMS + it
        if b < n_items:
            start = tl.load(CU + b)
            end = tl.load(CU + b + 1)
            q_ptrs = (
                Q + b * stride_qb + offs_q[:, None] * stride_qi + h * stride_qh + offs_d[None, :] * stride_qd
            )
            q = tl.load(q_ptrs, mask=qd_mask, other=0.0)  # (BQ, BD)
            o_off = b * stride_ob + offs_q[:, None] * stride_oi + h * stride_oh + offs_dv[None, :] * stride_od
            do = tl.load(DO + o_off, mask=q_ok[:, None] & (offs_dv[None, :] < dim_v), other=0.0)  # (BQ, BDV)
            l_off = b * stride_lb + offs_q * stride_li + h * stride_lh
            lse = tl.load(LSE + l_off, mask=q_ok, other=0.0)  # (BQ,)
            delta = tl.load(DELTA + l_off, mask=q_ok, other=0.0)  # (BQ,) rowsum(dO * O)
            dq_item = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
            for l0 in range(start, end, BLOCK_L):
                rows = l0 + offs_l
                r_ok = rows < end
                k_off = rows[:, None] * stride_kt + h * stride_kh + offs_d[None, :] * stride_kd
                k = tl.load(K + k_off, mask=r_ok[:, None] & (offs_d[None, :] < dim), other=0.0)  # (BL, BD)
                v_off = rows[:, None] * stride_vt + h * stride_vh + offs_dv[None, :] * stride_vd
                v = tl.load(
                    V + v_off, mask=r_ok[:, None] & (offs_dv[None, :] < dim_v), other=0.0
                )  # (BL, BDV)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BQ, BL)
                p = tl.exp(s - lse[:, None])
                p = tl.where(q_ok[:, None] & r_ok[None, :], p, 0.0)  # (BQ, BL) probabilities
                dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)  # (BL, BDV)
                tl.store(
                    DV + v_off, dv.to(DV.dtype.element_ty), mask=r_ok[:, None] & (offs_dv[None, :] < dim_v)
                )
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BQ, BL)
                ds = p * (dp - delta[:, None]) * scale  # (BQ, BL)
                dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)  # (BL, BD)
                tl.store(DK + k_off, dk.to(DK.dtype.element_ty), mask=r_ok[:, None] & (offs_d[None, :] < dim))
                dq_item += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)  # (BQ, BD)
            if PER_ITEM_Q:
                dq_ptrs = (
                    DQ
                    + b * stride_dqb
                    + offs_q[:, None] * stride_dqi
                    + h * stride_dqh
                    + offs_d[None, :] * stride_dqd
                )
                tl.store(dq_ptrs, dq_item, mask=qd_mask)
            else:
                dq_acc += dq_item
    if not PER_ITEM_Q:  # one partial per program: row pid of the (grid rows, Nq, H, D) buffer
        dq_ptrs = (
            DQ
            + pid * stride_dqb
            + offs_q[:, None] * stride_dqi
            + h * stride_dqh
            + offs_d[None, :] * stride_dqd
        )
        tl.store(dq_ptrs, dq_acc, mask=qd_mask)


def interpreter_active() -> bool:
    """True when triton was imported under TRITON_INTERPRET=1 (its own library functions are interpreted).

    Setting the variable later is not enough: triton jits ``tl.zeros`` and friends at import time, and
    other libraries (transformers, torch) may import triton early. Set it at process start.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return os.environ.get("TRITON_INTERPRET", "0") == "1" and isinstance(tl.zeros, InterpretedFunction)


@functools.lru_cache(maxsize=2)
def _jitted(interpret: bool):  # noqa: ARG001 - the cache key: jit once per interpreter setting
    return triton.jit(_fwd_kernel), triton.jit(_bwd_kernel)


def _kernels():
    if triton is None:
        raise ImportError('impl="triton" needs Triton: pip install "triton==3.9.0"')
    return _jitted(interpreter_active())


ITEMS_PER_PROGRAM: int | None = None  # None: chosen from the item count (tests set it to cover both paths)
# None: Triton's default (4). fp32 tiles of 64 x 64 and up spill 8-40 KB of registers per thread at 4 warps
# and none at 8 (bench/kernel_spills.py); not yet timed on a GPU, so the default is unchanged and
# bench/kernel_gpu_check.py --num-warps sets this for an A/B run.
NUM_WARPS: int | None = None


def compile_kernel(kernel, dtype: str, meta: dict, arch: int = 90, num_warps: int | None = None):  # noqa: ANN001
    """One jitted kernel compiled for ``sm_<arch>`` by Triton's real compiler, without a GPU.

    Tensor pointers get ``dtype`` ("fp32" | "fp16" | "bf16"; LSE, DELTA and DQ are always fp32), the
    kernel's parameters named in ``meta`` become constexprs. Needs triton imported with TRITON_INTERPRET
    unset. Returns the compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata``).
    """
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, consts = {}, {}
    for i, n in enumerate(inspect.signature(kernel.fn).parameters):
        if n in meta:
            sig[n], consts[(i,)] = "constexpr", meta[n]
        elif n in ("Q", "K", "V", "OUT", "DO", "DK", "DV"):
            sig[n] = f"*{dtype}"
        elif n in ("LSE", "DELTA", "DQ"):
            sig[n] = "*fp32"
        else:
            sig[n] = {"CU": "*i32", "scale": "fp32"}.get(n, "i32")
    options = None if num_warps is None else {"num_warps": int(num_warps)}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def compile_for_gpu(dtype: str = "bf16", arch: int = 90, per_item_q: bool = False) -> dict[str, int]:
    """Compile both kernels to a CUDA binary for ``sm_<arch>`` without a GPU; returns shared memory per kernel.

    Catches what the interpreter forgives (types, shapes the real compiler rejects). Needs triton imported
    with TRITON_INTERPRET unset. dtype: "fp32" | "fp16" | "bf16".
    """
    meta = {"ITEMS": 8, "BLOCK_Q": 16, "BLOCK_L": 32, "BLOCK_D": 64, "BLOCK_DV": 64, "PER_ITEM_Q": per_item_q}
    meta["PRECISION"] = "ieee" if dtype == "fp32" else "tf32"
    shared = {}
    for kernel in _jitted(False):
        compiled = compile_kernel(kernel, dtype, meta, arch)
        assert "cubin" in compiled.asm
        shared[kernel.fn.__name__] = compiled.metadata.shared
    return shared


def tile_side(n: int) -> int:
    """A tile side for ``n`` rows or columns: the next power of two, at least 16 (``tl.dot`` needs >= 16)."""
    return max(16, 1 << (max(int(n), 1) - 1).bit_length())


def _blocks(n_q: int, dim: int, dim_v: int, n_items: int, dtype: torch.dtype) -> dict:
    items = ITEMS_PER_PROGRAM or (1 if n_items <= 4096 else 8)  # many tiny items: fewer, longer programs
    return {
        "ITEMS": items,
        "BLOCK_Q": tile_side(n_q),
        "BLOCK_L": 32,
        "BLOCK_D": tile_side(dim),
        "BLOCK_DV": tile_side(dim_v),
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",  # tf32 only applies to fp32 inputs
    }


def _launch() -> dict:
    return {} if NUM_WARPS is None else {"num_warps": int(NUM_WARPS)}


def _q_strides(q: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(q.stride()) if q.dim() == 4 else (0, *q.stride())  # shared q: item stride 0


def _forward(q, k, v, cu, scale):  # noqa: ANN001
    fwd, _ = _kernels()
    n_items = cu.numel() - 1
    n_q, heads, dim = q.shape[-3:]
    dim_v = v.shape[-1]
    out = torch.empty(n_items, n_q, heads, dim_v, dtype=q.dtype, device=q.device)  # (B, Nq, H, Dv)
    lse = torch.empty(n_items, n_q, heads, dtype=torch.float32, device=q.device)  # (B, Nq, H)
    if n_items == 0:
        return out, lse
    meta = _blocks(n_q, dim, dim_v, n_items, q.dtype)
    grid = (triton.cdiv(n_items, meta["ITEMS"]), heads)
    fwd[grid](
        q, k, v, cu, out, lse, scale, n_items, n_q, dim, dim_v,
        *_q_strides(q), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), **meta, **_launch(),
    )  # fmt: skip
    return out, lse


def _backward(q, k, v, cu, out, lse, d_out, scale):  # noqa: ANN001
    _, bwd = _kernels()
    n_items = cu.numel() - 1
    n_q, heads, dim = q.shape[-3:]
    dim_v = v.shape[-1]
    d_out = d_out.to(q.dtype).contiguous()  # (B, Nq, H, Dv), same strides as out
    delta = (d_out.float() * out.float()).sum(-1)  # (B, Nq, H), same strides as lse
    dk, dv = torch.empty_like(k), torch.empty_like(v)  # every row written once by its item's program
    meta = _blocks(n_q, dim, dim_v, n_items, q.dtype)
    n_prog = triton.cdiv(n_items, meta["ITEMS"]) if n_items else 0
    per_item = q.dim() == 4
    dq = torch.zeros(
        (n_items if per_item else max(n_prog, 1), n_q, heads, dim), dtype=torch.float32, device=q.device
    )
    if n_prog:
        bwd[(n_prog, heads)](
            q, k, v, cu, d_out, lse, delta, dq, dk, dv, scale, n_items, n_q, dim, dim_v,
            *_q_strides(q), *k.stride(), *v.stride(), *d_out.stride(), *lse.stride(), *dq.stride(),
            PER_ITEM_Q=per_item, **meta, **_launch(),
        )  # fmt: skip
    dq = dq if per_item else dq.sum(0)  # second pass: (grid rows, Nq, H, D) -> (Nq, H, D)
    return dq.to(q.dtype), dk, dv


class TritonPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu, scale):  # noqa: ANN001 - autograd signature
        out, lse = _forward(q, k, v, cu, scale)
        ctx.save_for_backward(q, k, v, cu, out, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, _d_lse):  # noqa: ANN001
        q, k, v, cu, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, cu, out, lse, d_out, ctx.scale)
        return dq, dk, dv, None, None


def cross_attention_pool_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path: out (B, Nq, H, Dv) in q's dtype, lse (B, Nq, H) fp32. Inputs validated by the caller."""
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidInput(f"impl='triton' supports fp32, fp16 and bf16 inputs, got {q.dtype}")
    if int(cu_seqlens[-1]) >= 2**31:
        raise InvalidInput(f"impl='triton': total keys {int(cu_seqlens[-1])} do not fit int32 offsets")
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    return TritonPool.apply(q.contiguous(), k.contiguous(), v.contiguous(), cu, scale)
