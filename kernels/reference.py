"""Cross-attention pooling, the readable PyTorch reference (the specification).

For item ``b`` with keys ``j`` in ``[cu[b], cu[b+1])`` (``L_b = cu[b+1] - cu[b]`` of them), query ``i``
and head ``h``::

    s[b,i,h,j] = scale * <q[i,h], k[j,h]>                  (accumulated in fp32)
    lse[b,i,h] = log sum_j exp(s[b,i,h,j])                 (-inf when L_b == 0)
    out[b,i,h] = sum_j exp(s[b,i,h,j] - lse[b,i,h]) v[j,h] (zeros when L_b == 0)

This version pads every item to the longest one, then runs dense batched matmuls with a mask.
It is the spec, not the fast path. Bytes it moves (fp32, T = sum L_b keys, Lmax = max L_b):

- reads  k, v: 2 * T * H * D * 4            writes padded copies: 2 * B * Lmax * H * D * 4 (the pad waste)
- writes scores s, mask, exp(s): ~3 * B * H * Nq * Lmax * 4, each read back once or twice
- writes out: B * Nq * H * D * 4

A fused kernel reads k and v once and keeps the scores in registers (``triton_pool.py``);
the packed CPU path drops the padding (``packed.py``).
"""

from __future__ import annotations

import torch


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and accumulation dtype: fp32, or fp64 for fp64 inputs (tests use fp64 as an oracle)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pad_items(x: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows (T, ...) -> padded (B, Lmax, ...) with zeros past each item's end, and the mask (B, Lmax)."""
    lens = cu_seqlens[1:] - cu_seqlens[:-1]  # (B,)
    n_items = lens.numel()
    lmax = int(lens.max()) if n_items else 0
    pos = torch.arange(lmax, device=x.device)  # (Lmax,)
    valid = pos[None, :] < lens[:, None]  # (B, Lmax)
    idx = torch.where(valid, cu_seqlens[:-1, None] + pos[None, :], 0)  # (B, Lmax) row of each slot
    if x.shape[0] == 0:  # no keys at all: every slot is padding
        return x.new_zeros((n_items, lmax, *x.shape[1:])), valid
    shape = (n_items, lmax) + (1,) * (x.dim() - 1)
    padded = x[idx] * valid.view(shape).to(x.dtype)  # (B, Lmax, ...) gathered, pads zeroed
    return padded, valid


def cross_attention_pool_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded reference. q (Nq, H, D) shared or (B, Nq, H, D); k (T, H, D); v (T, H, Dv); cu (B+1,).

    Returns out (B, Nq, H, Dv) in q's dtype and lse (B, Nq, H) in fp32 (fp64 for fp64 inputs).
    Inputs are assumed validated (``dispatch.check_inputs``). Autograd flows through plain ops.
    """
    acc = accum_dtype(q.dtype)
    kp, valid = pad_items(k, cu_seqlens)  # (B, Lmax, H, D), (B, Lmax)
    vp, _ = pad_items(v, cu_seqlens)  # (B, Lmax, H, Dv)
    if q.dim() == 3:
        s = torch.einsum("ihd,bjhd->bhij", q.to(acc), kp.to(acc))  # (B, H, Nq, Lmax)
    else:
        s = torch.einsum("bihd,bjhd->bhij", q.to(acc), kp.to(acc))  # (B, H, Nq, Lmax)
    s = (s * scale).masked_fill(~valid[:, None, None, :], float("-inf"))  # (B, H, Nq, Lmax)
    # Max-subtraction for stability; the softmax does not depend on m, so no gradient flows through it.
    m = s.amax(dim=-1, keepdim=True).detach() if s.shape[-1] else s.new_zeros((*s.shape[:-1], 1))
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # empty item: m = 0, exp(-inf) = 0
    p = torch.exp(s - m)  # (B, H, Nq, Lmax), 0 on pads
    den = p.sum(dim=-1, keepdim=True)  # (B, H, Nq, 1), 0 for an empty item
    lse = (m + torch.log(den)).squeeze(-1)  # (B, H, Nq): log 0 = -inf for an empty item
    num = torch.einsum("bhij,bjhd->bihd", p, vp.to(acc))  # (B, Nq, H, Dv)
    out = num / den.permute(0, 2, 1, 3).clamp_min(torch.finfo(acc).tiny)  # (B, Nq, H, Dv); 0/tiny = 0
    return out.to(q.dtype), lse.permute(0, 2, 1).detach()  # lse (B, Nq, H)
