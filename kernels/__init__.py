"""pairsmith.kernels: cross-attention pooling — a few learned queries attend over ragged, packed items.

One op serves multi-layer trainable pooling (queries over the layer vectors of each text) and
Byte2Word (queries over the bytes of each word). This package is the bottom layer: it imports
nothing from encoders, distill or service.

API (stable)::

    from pairsmith.kernels import Impl, cross_attention_pool, cross_attention_pool_projected

    out, lse = cross_attention_pool(q, k, v, cu_seqlens, scale=None, impl="auto", mean_over_queries=False)
    out, lse = cross_attention_pool_projected(q, x, w_k, w_v, cu_seqlens, b_k=None, b_v=None, scale=None,
                                              impl="auto", mean_over_queries=False)

Inputs
    q           (Nq, H, D) queries shared by every item (learned latents), or per-item (B, Nq, H, D).
    k           (total, H, D) keys of all items, packed back to back (no padding).
    v           (total, H, Dv) values, packed like k.
    cu_seqlens  (B+1,) int32/int64: item b owns rows cu_seqlens[b]:cu_seqlens[b+1]; starts at 0, never
                decreases, ends at total. Items may be empty.
    scale       multiplies the scores; default 1/sqrt(D).
    x, w_k, w_v (projected form) raw inputs (total, C) and ``nn.Linear`` weights (H*D, C), (H*Dv, C);
                k = x @ w_k.T + b_k, v = x @ w_v.T + b_v, made by one GEMM over x.
    q, k, v (and x, weights) share one float dtype (fp32, bf16, fp16; fp64 for reference/packed) and device.

Outputs
    out  (B, Nq, H, Dv) in the input dtype: out[b,i,h] = softmax_j(scale * q[i,h]·k[j,h]) @ v[j,h] over
         item b's rows j; the softmax is computed in fp32 per item and head.
         With ``mean_over_queries=True``: (B, H, Dv), the mean over the Nq queries.
    lse  (B, Nq, H) fp32: log-sum-exp of the scaled scores. No gradient flows through lse (it is
         returned detached, like FlashAttention's); gradients flow through out to q, k, v (x, w, b).
    An item with no keys gives out = 0 and lse = -inf (and zero gradients).

Implementations (``Impl``): ``reference`` (padded PyTorch, the spec: reference.py), ``packed``
(CPU path without padding waste: packed.py), ``triton`` (fused forward and backward kernels, the query
gradient reduced across items inside the kernel: triton_pool.py; on CPU tensors only under
TRITON_INTERPRET=1). ``auto``: triton on CUDA tensors when triton imports; on the CPU packed, except
the reference for small ragged problems (under ``dispatch.AUTO_REFERENCE_MAX_KEYS`` keys, measured).
Bad inputs raise ``pairsmith.errors.InvalidInput`` naming the argument; an implementation that
cannot run here raises ``FailedPrecondition`` with the fix.
"""

from __future__ import annotations

from .dispatch import Impl, cross_attention_pool, cross_attention_pool_projected

__all__ = ["Impl", "cross_attention_pool", "cross_attention_pool_projected"]
