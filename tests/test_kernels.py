"""pairsmith.kernels.cross_attention_pool: the reference against a naive loop, every impl against the reference.

Tolerances (each one stated where it is used):
- fp64 oracle vs fp32 compute: scores and sums are fp32 with at most ~60 terms of O(1) values, so the
  error is a few fp32 ulps (1.2e-7) times the term count: 2e-5 absolute/relative covers it with margin.
- bf16 inputs: every impl computes in fp32 from the same bf16 inputs and rounds the result once to
  bf16, so two impls differ by at most one bf16 rounding step (2**-8 relative each side): rtol 2**-7.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from pairsmith.errors import FailedPrecondition, InvalidInput
from pairsmith.kernels import Impl, cross_attention_pool, cross_attention_pool_projected

FAST_IMPLS = ["packed"]  # checked against the reference on the CPU here; triton has its own tests below


def make_case(
    lens: list[int],
    n_q: int = 2,
    heads: int = 2,
    dim: int = 8,
    d_v: int | None = None,
    dtype: torch.dtype = torch.float32,
    per_item: bool = False,
    seed: int = 0,
):
    g = torch.Generator().manual_seed(seed)
    total = sum(lens)
    d_v = d_v or dim
    q_shape = (len(lens), n_q, heads, dim) if per_item else (n_q, heads, dim)
    q = torch.randn(q_shape, generator=g).to(dtype)
    k = torch.randn(total, heads, dim, generator=g).to(dtype)
    v = torch.randn(total, heads, d_v, generator=g).to(dtype)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def naive_loop(q, k, v, cu, scale):
    """Independent oracle: one item and one head at a time, fp64, torch.softmax."""
    n_items = cu.numel() - 1
    n_q, heads, _ = q.shape[-3:]
    out = torch.zeros(n_items, n_q, heads, v.shape[-1], dtype=torch.float64)
    lse = torch.full((n_items, n_q, heads), -math.inf, dtype=torch.float64)
    for b in range(n_items):
        s, e = int(cu[b]), int(cu[b + 1])
        if e == s:
            continue
        qb = q[b] if q.dim() == 4 else q
        for h in range(heads):
            scores = scale * qb[:, h].double() @ k[s:e, h].double().T  # (Nq, L)
            out[b, :, h] = torch.softmax(scores, dim=-1) @ v[s:e, h].double()
            lse[b, :, h] = torch.logsumexp(scores, dim=-1)
    return out, lse


RAGGED = [
    [3, 0, 1, 7, 2],  # an empty item, a length-1 item
    [0],  # one empty item only
    [1, 1, 1],
    [40, 5, 0, 0, 17, 1],  # a long item next to empties
    [13] * 6,  # uniform (multi-layer pooling shape)
]


@pytest.mark.parametrize("lens", RAGGED)
@pytest.mark.parametrize("n_q,heads,per_item", [(1, 1, False), (5, 3, False), (3, 2, True)])
def test_reference_matches_naive_loop(lens, n_q, heads, per_item):
    q, k, v, cu = make_case(lens, n_q=n_q, heads=heads, dim=8, d_v=6, per_item=per_item)
    out, lse = cross_attention_pool(q, k, v, cu, impl="reference")
    want_out, want_lse = naive_loop(q, k, v, cu, 1 / math.sqrt(8))
    assert out.shape == (len(lens), n_q, heads, 6) and out.dtype == torch.float32
    assert lse.shape == (len(lens), n_q, heads) and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=2e-5, atol=2e-5)  # fp32 vs fp64: see header
    torch.testing.assert_close(lse.double(), want_lse, rtol=2e-5, atol=2e-5)


def test_empty_item_gives_zeros_and_minus_inf_lse():
    q, k, v, cu = make_case([0, 2, 0])
    for impl in ["reference", *FAST_IMPLS]:
        q_, k_, v_ = (t.clone().requires_grad_() for t in (q, k, v))
        out, lse = cross_attention_pool(q_, k_, v_, cu, impl=impl)
        assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
        assert torch.isneginf(lse[0]).all() and torch.isneginf(lse[2]).all() and torch.isfinite(lse[1]).all()
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q_, k_, v_)), impl


def test_large_scores_do_not_overflow():
    # Scores of ~1e4: exp overflows fp32 unless the max is subtracted first.
    q, k, v, cu = make_case([4, 1, 6], dim=4)
    for impl in ["reference", *FAST_IMPLS]:
        out, lse = cross_attention_pool(q * 100, k * 100, v, cu, impl=impl)
        want_out, want_lse = naive_loop(q * 100, k * 100, v, cu, 0.5)
        torch.testing.assert_close(out.double(), want_out, rtol=1e-4, atol=1e-4)  # near-one-hot softmax
        torch.testing.assert_close(lse.double(), want_lse, rtol=2e-5, atol=2e-5)


def test_scale_and_mean_over_queries():
    q, k, v, cu = make_case([3, 0, 5], n_q=4)
    out, _ = cross_attention_pool(q, k, v, cu, scale=0.3, impl="reference")
    want, _ = naive_loop(q, k, v, cu, 0.3)
    torch.testing.assert_close(out.double(), want, rtol=2e-5, atol=2e-5)
    for impl in ["reference", *FAST_IMPLS]:
        mean, _ = cross_attention_pool(q, k, v, cu, scale=0.3, impl=impl, mean_over_queries=True)
        assert mean.shape == (3, 2, 8)
        torch.testing.assert_close(mean.double(), want.mean(dim=1), rtol=2e-5, atol=2e-5)


def grads(impl, q, k, v, cu, dout, **kw):
    q_, k_, v_ = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = cross_attention_pool(q_, k_, v_, cu, impl=impl, **kw)
    (out.to(dout.dtype) * dout).sum().backward()
    return out, lse, q_.grad, k_.grad, v_.grad


def assert_close_scaled(got, want, rtol, name, floor=0.0):
    # Gradients are sums of mixed-sign terms: compare to the tensor's scale, not elementwise-relative.
    atol = rtol * max(float(want.abs().max()) if want.numel() else 0.0, floor)
    torch.testing.assert_close(
        got.double(), want.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}"
    )


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("per_item", [False, True])
def test_forward_and_gradients_vs_naive_fp64(impl, seed, per_item):
    # Random ragged shapes: empties, length 1, long items; Nq 1 and many; H > 1; Dv != D.
    g = torch.Generator().manual_seed(100 + seed)
    lens = torch.randint(0, 30, (9,), generator=g).tolist() + [0, 1, 64]
    n_q = [1, 7, 16][seed]
    q, k, v, cu = make_case(
        lens, n_q=n_q, heads=3, dim=16, d_v=8, dtype=torch.float64, per_item=per_item, seed=seed
    )
    dout = torch.randn(len(lens), n_q, 3, 8, generator=g, dtype=torch.float64)
    want = grads("reference", q, k, v, cu, dout)
    # the fp64 reference itself against the loop (autograd through the loop gives the gradients)
    q_, k_, v_ = (t.clone().requires_grad_() for t in (q, k, v))
    loop_out, _ = naive_loop(q_, k_, v_, cu, 0.25)
    (loop_out * dout).sum().backward()
    for got, ref, name in zip(want[2:], (q_.grad, k_.grad, v_.grad), "qkv", strict=True):
        assert_close_scaled(got, ref, 1e-10, f"reference d{name}")  # fp64 both sides
    got = grads(impl, q.float(), k.float(), v.float(), cu, dout.float())
    torch.testing.assert_close(got[0].double(), want[0], rtol=2e-5, atol=2e-5)  # fp32 vs fp64: see header
    torch.testing.assert_close(got[1].double(), want[1], rtol=2e-5, atol=2e-5)
    for g_, w_, name in zip(got[2:], want[2:], "qkv", strict=True):
        # dq sums over every key of every item (~400 terms): a few fp32 ulps per term, relative to the max
        assert_close_scaled(g_, w_, 5e-5, f"{impl} d{name}")


@pytest.mark.parametrize("per_item", [False, True])
def test_packed_uniform_lengths_vs_naive_fp64(per_item):
    # Every item 13 keys (multi-layer pooling): the packed path takes its dense branch.
    q, k, v, cu = make_case(
        [13] * 5, n_q=9, heads=3, dim=16, d_v=8, dtype=torch.float64, per_item=per_item, seed=5
    )
    dout = torch.randn(5, 9, 3, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    q_, k_, v_ = (t.clone().requires_grad_() for t in (q, k, v))
    loop_out, loop_lse = naive_loop(q_, k_, v_, cu, 0.25)
    (loop_out * dout).sum().backward()
    got = grads("packed", q.float(), k.float(), v.float(), cu, dout.float())
    torch.testing.assert_close(got[0].double(), loop_out.detach(), rtol=2e-5, atol=2e-5)  # fp32: see header
    torch.testing.assert_close(got[1].double(), loop_lse, rtol=2e-5, atol=2e-5)
    for g_, w_, name in zip(got[2:], (q_.grad, k_.grad, v_.grad), "qkv", strict=True):
        assert_close_scaled(g_, w_, 5e-5, f"packed uniform d{name}")  # fp32 sums of ~65 terms


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_bf16_matches_reference_bf16(impl):
    lens = [5, 0, 1, 23, 9, 14]
    q, k, v, cu = make_case(lens, n_q=4, heads=2, dim=16, dtype=torch.bfloat16, seed=3)
    dout = torch.randn(len(lens), 4, 2, 16, generator=torch.Generator().manual_seed(4))
    want = grads("reference", q, k, v, cu, dout)
    got = grads(impl, q, k, v, cu, dout)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    # fp32 math on identical bf16 inputs, one rounding to bf16 each: within one bf16 step (2**-7 relative)
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=2**-7, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=2e-5, atol=2e-5)  # lse stays fp32
    for g_, w_, name in zip(got[2:], want[2:], "qkv", strict=True):
        assert g_.dtype == torch.bfloat16
        # gradients: fp32 sums in different orders, then one bf16 rounding: two bf16 steps of the max
        assert_close_scaled(g_, w_, 2**-6, f"{impl} d{name} bf16")


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
def test_item_alone_equals_item_in_batch(impl):
    lens = [4, 0, 11, 1, 7]
    q, k, v, cu = make_case(lens, n_q=3, heads=2, dim=8)
    out, lse = cross_attention_pool(q, k, v, cu, impl=impl)
    for b in range(len(lens)):
        s, e = int(cu[b]), int(cu[b + 1])
        one = torch.tensor([0, e - s], dtype=cu.dtype)
        o1, l1 = cross_attention_pool(q, k[s:e], v[s:e], one, impl=impl)
        # same item, same arithmetic per item: only summation order may differ with batch composition
        torch.testing.assert_close(o1[0], out[b], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(l1[0], lse[b], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
def test_projected_matches_explicit_projection_with_gradients(impl):
    g = torch.Generator().manual_seed(7)
    lens = [3, 0, 12, 1]
    heads, dim, d_v, c_in = 2, 8, 4, 10
    x = torch.randn(sum(lens), c_in, generator=g, dtype=torch.float64)
    w_k = torch.randn(heads * dim, c_in, generator=g, dtype=torch.float64) / 3
    w_v = torch.randn(heads * d_v, c_in, generator=g, dtype=torch.float64) / 3
    b_k = torch.randn(heads * dim, generator=g, dtype=torch.float64)
    b_v = torch.randn(heads * d_v, generator=g, dtype=torch.float64)
    q = torch.randn(5, heads, dim, generator=g, dtype=torch.float64)
    cu = torch.tensor([0, 3, 3, 15, 16])
    dout = torch.randn(4, 5, heads, d_v, generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, x, w_k, w_v, b_k, b_v)]
    out, _ = naive_loop(
        leaves[0],
        (leaves[1] @ leaves[2].T + leaves[4]).view(-1, heads, dim),
        (leaves[1] @ leaves[3].T + leaves[5]).view(-1, heads, d_v),
        cu,
        1 / math.sqrt(dim),
    )
    (out * dout).sum().backward()
    want = [t.grad for t in leaves]
    got_leaves = [t.float().clone().requires_grad_() for t in (q, x, w_k, w_v, b_k, b_v)]
    q_, x_, wk_, wv_, bk_, bv_ = got_leaves
    got, _ = cross_attention_pool_projected(q_, x_, wk_, wv_, cu, b_k=bk_, b_v=bv_, impl=impl)
    torch.testing.assert_close(got.double(), out.detach(), rtol=2e-5, atol=2e-5)  # fp32 vs fp64: see header
    (got * dout.float()).sum().backward()
    for leaf, w, name in zip(got_leaves, want, ["q", "x", "w_k", "w_v", "b_k", "b_v"], strict=True):
        # fp32 sums of ~100 terms. db_k is exactly 0 in exact arithmetic (q.b_k shifts every score of a
        # query equally; softmax ignores it), so it is compared on the O(1) scale of the other gradients.
        assert_close_scaled(leaf.grad, w, 5e-5, f"{impl} d{name}", floor=1.0)


def test_auto_picks_packed_on_cpu_and_impl_is_validated():
    from pairsmith.kernels.dispatch import resolve_impl

    assert resolve_impl("auto", torch.device("cpu")) is Impl.PACKED
    assert resolve_impl(Impl.REFERENCE, torch.device("cpu")) is Impl.REFERENCE
    q, k, v, cu = make_case([2, 3])
    with pytest.raises(InvalidInput, match="impl: unknown 'fast'"):
        cross_attention_pool(q, k, v, cu, impl="fast")


def test_auto_on_cpu_pads_small_ragged_problems_only():
    from pairsmith.kernels.dispatch import AUTO_REFERENCE_MAX_KEYS, choose_impl

    small = make_case([3, 0, 7, 1])  # ragged, 11 keys
    q, _, _, cu = small
    assert choose_impl("auto", q, cu) is Impl.REFERENCE
    assert choose_impl("packed", q, cu) is Impl.PACKED  # an explicit choice is kept
    _, _, _, cu_eq = make_case([5, 5, 5])  # equal lengths: the packed dense branch
    assert choose_impl("auto", q, cu_eq) is Impl.PACKED
    _, _, _, cu_one = make_case([9])
    assert choose_impl("auto", q, cu_one) is Impl.PACKED
    lens = [1, 2, 3] * (AUTO_REFERENCE_MAX_KEYS // 6)
    _, _, _, cu_big = make_case(lens + [AUTO_REFERENCE_MAX_KEYS - sum(lens)])  # ragged, exactly the limit
    assert int(cu_big[-1]) == AUTO_REFERENCE_MAX_KEYS
    assert choose_impl("auto", q, cu_big) is Impl.PACKED
    # Same answer whichever ran: auto (reference here) equals packed.
    q, k, v, cu = small
    torch.testing.assert_close(
        cross_attention_pool(q, k, v, cu)[0], cross_attention_pool(q, k, v, cu, impl="packed")[0]
    )


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    from pairsmith.kernels.dispatch import triton_available

    if not triton_available():
        pytest.skip("triton not installed: the refusal names the pip install instead")
    from pairsmith.kernels import triton_pool

    monkeypatch.setattr(triton_pool, "interpreter_active", lambda: False)  # as if TRITON_INTERPRET were unset
    q, k, v, cu = make_case([2, 3])
    with pytest.raises(FailedPrecondition, match="TRITON_INTERPRET=1"):
        cross_attention_pool(q, k, v, cu, impl="triton")


def _bad_inputs():
    q, k, v, cu = make_case([2, 0, 3])
    cu64 = cu.long()
    return [
        ("q rank", (q[0], k, v, cu), "q: expected"),
        ("k rank", (q, k[:, 0], v, cu), "k, v: expected packed"),
        ("int q", (q.long(), k, v, cu), "q: dtype"),
        ("mixed dtype", (q, k.double(), v, cu), "share one dtype"),
        ("head mismatch", (q, k[:, :1], v[:, :1], cu), "shapes disagree"),
        ("dim mismatch", (q, k[..., :4], v, cu), "shapes disagree"),
        ("total mismatch", (q, k, v[:-1], cu), "shapes disagree"),
        ("cu float", (q, k, v, cu.float()), "cu_seqlens: expected int32 or int64"),
        ("cu 2-D", (q, k, v, cu[None]), "cu_seqlens: expected a 1-D"),
        ("cu start", (q, k, v, cu64 + 1), "must start at 0"),
        ("cu end", (q, k, v, torch.tensor([0, 2, 2, 4])), "must end at total"),
        ("cu decreasing", (q, k, v, torch.tensor([0, 3, 2, 5])), "non-decreasing; item 1"),
        ("per-item B", (q.expand(2, *q.shape), k, v, cu), "need B = len"),
        ("not a tensor", (q.tolist(), k, v, cu), "q: expected a torch.Tensor"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs_raise_invalid_input(case):
    _, args, match = case
    with pytest.raises(InvalidInput, match=match):
        cross_attention_pool(*args)


def test_bad_scale_and_projection_inputs():
    q, k, v, cu = make_case([2, 3])
    with pytest.raises(InvalidInput, match="scale: expected a finite"):
        cross_attention_pool(q, k, v, cu, scale=float("nan"))
    x = torch.randn(5, 6)
    w = torch.randn(16, 6)
    with pytest.raises(InvalidInput, match="w_k: expected"):
        cross_attention_pool_projected(q, x, w[:, :5], w, cu)
    with pytest.raises(InvalidInput, match="b_v: expected shape"):
        cross_attention_pool_projected(q, x, w, w, cu, b_v=torch.zeros(3))
    with pytest.raises(InvalidInput, match="x: expected"):
        cross_attention_pool_projected(q, x[None], w, w, cu)


# --- Triton kernel, run on the CPU in Triton's interpreter --------------------------------------------


@pytest.fixture
def interpret():
    """The interpreter must be on before triton's first import: tests/conftest.py sets TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"triton cannot be imported here ({exc}); install it: pip install 'triton==3.9.0'")
    from pairsmith.kernels import triton_pool

    assert triton_pool.interpreter_active(), "triton was imported before TRITON_INTERPRET=1 was set"
    return triton_pool


def _triton_vs_reference(q, k, v, cu, *, rtol, grad_rtol, **kw):
    dout = torch.randn(
        (cu.numel() - 1, *q.shape[-3:-1], v.shape[-1]), generator=torch.Generator().manual_seed(9)
    ).to(torch.float32)
    want = grads("reference", q, k, v, cu, dout, **kw)
    got = grads("triton", q, k, v, cu, dout, **kw)
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=rtol, atol=rtol)
    torch.testing.assert_close(got[1], want[1], rtol=2e-5, atol=2e-5)  # lse: fp32 either way
    for g_, w_, name in zip(got[2:], want[2:], "qkv", strict=True):
        assert g_.dtype == w_.dtype
        assert_close_scaled(g_, w_, grad_rtol, f"triton d{name}")


@pytest.mark.parametrize("items_per_program,num_warps", [(1, None), (3, None), (1, 8)])
def test_triton_fp32_forward_and_gradients(interpret, monkeypatch, items_per_program, num_warps):
    # 40 keys > BLOCK_L = 32: the online softmax crosses a tile; 3 items per program: dq partials summed
    # inside a program and across programs (the cross-item reduction of the shared-query gradient);
    # num_warps 8: the launch option bench/kernel_gpu_check.py --num-warps sets reaches both kernels.
    monkeypatch.setattr(interpret, "ITEMS_PER_PROGRAM", items_per_program)
    monkeypatch.setattr(interpret, "NUM_WARPS", num_warps)
    if num_warps is not None:
        assert interpret._launch() == {"num_warps": num_warps}
    q, k, v, cu = make_case([3, 0, 1, 40, 2, 5, 0], n_q=3, heads=2, dim=16, d_v=8, seed=11)
    # IEEE fp32 dots in different summation orders than torch's einsum: fp32 ulps (see header)
    _triton_vs_reference(q, k, v, cu, rtol=2e-5, grad_rtol=5e-5)


def test_triton_per_item_queries_and_many_queries(interpret):
    q, k, v, cu = make_case([4, 0, 1, 9], n_q=17, heads=1, dim=8, d_v=8, per_item=True, seed=12)
    _triton_vs_reference(q, k, v, cu, rtol=2e-5, grad_rtol=5e-5)  # fp32: see header


def test_triton_fp16(interpret):
    q, k, v, cu = make_case([6, 0, 1, 33], n_q=2, heads=2, dim=16, dtype=torch.float16, seed=13)
    # The kernel rounds probabilities (and dS) to fp16 before the P@V and dS@K dots, as FlashAttention
    # does; the reference keeps them fp32. Each rounding is 2**-11 relative; with sums of up to ~33 terms
    # and one fp16 rounding of the result, 4e-3 of the values' scale holds with margin.
    _triton_vs_reference(q, k, v, cu, rtol=4e-3, grad_rtol=4e-3)


def test_triton_bf16_is_not_checked_in_the_interpreter(interpret):
    pytest.skip(
        "Triton 3.9's interpreter computes bf16 wrongly (ENVIRONMENT.md); bf16 is checked on a GPU only"
    )


def test_triton_projected_mean_and_item_alone(interpret):
    g = torch.Generator().manual_seed(14)
    lens = [2, 0, 5, 1]
    cu = torch.tensor([0, 2, 2, 7, 8])
    q = torch.randn(2, 2, 16, generator=g)
    x = torch.randn(8, 12, generator=g)
    w_k, w_v = torch.randn(32, 12, generator=g) / 3, torch.randn(32, 12, generator=g) / 3
    outs = {}
    for impl in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (q, x, w_k, w_v)]
        out, _ = cross_attention_pool_projected(*leaves, cu, impl=impl, mean_over_queries=True)  # (B, H, 16)
        out.pow(2).sum().backward()
        outs[impl] = (out.detach(), [t.grad for t in leaves])
    torch.testing.assert_close(outs["triton"][0], outs["reference"][0], rtol=2e-5, atol=2e-5)  # fp32
    for got, want, name in zip(
        outs["triton"][1], outs["reference"][1], ["q", "x", "w_k", "w_v"], strict=True
    ):
        assert_close_scaled(got, want, 5e-5, f"triton d{name}")  # fp32 sums of tens of terms
    # an item alone equals the item in the batch
    alone, _ = cross_attention_pool_projected(q, x[2:7], w_k, w_v, torch.tensor([0, 5]), impl="triton")
    batch, _ = cross_attention_pool_projected(q, x, w_k, w_v, cu, impl="triton")
    torch.testing.assert_close(alone[0], batch[2], rtol=1e-6, atol=1e-6)
    assert len(lens) == batch.shape[0]


@pytest.mark.slow
def test_triton_kernels_compile_for_an_h100_class_gpu():
    # No GPU here: compile both kernels to sm_90 cubin (the real compiler, stricter than the interpreter)
    # in a fresh process, since this one imported triton in interpreter mode. ~30 s.
    pytest.importorskip("triton", reason="triton not installed: pip install 'triton==3.9.0'")
    code = (
        "from pairsmith.kernels.triton_pool import compile_for_gpu\n"
        "for dt in ('fp32', 'bf16'):\n"
        "    for per_item in (False, True):\n"
        "        print(dt, per_item, compile_for_gpu(dt, 90, per_item))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("_bwd_kernel") == 4, res.stdout


def test_auto_on_cuda_avoids_triton_for_large_fp32_tiles(monkeypatch):
    """On CUDA, auto keeps Triton except fp32 with a query x head-dim tile over the measured limit
    (H200: Nq 64 x D 128 fp32 ran 0.09x the eager reference; Nq 64 x D 64 ran 2.0x)."""
    import pairsmith.kernels.dispatch as dispatch

    monkeypatch.setattr(dispatch, "resolve_impl", lambda impl, device: Impl.TRITON)  # as on a GPU
    cu = torch.tensor([0, 3, 5])

    def q(n_q, dim, dtype):
        return torch.zeros(n_q, 2, dim, dtype=dtype)

    assert dispatch.choose_impl("auto", q(64, 128, torch.float32), cu) is Impl.REFERENCE
    assert dispatch.choose_impl("auto", q(64, 64, torch.float32), cu) is Impl.TRITON  # at the limit
    assert dispatch.choose_impl("auto", q(33, 65, torch.float32), cu) is Impl.REFERENCE  # padded: 64 x 128
    assert dispatch.choose_impl("auto", q(64, 128, torch.bfloat16), cu) is Impl.TRITON
    assert dispatch.choose_impl("auto", q(4, 16, torch.float32), cu) is Impl.TRITON  # Byte2Word-sized
    assert dispatch.choose_impl("triton", q(64, 128, torch.float32), cu) is Impl.TRITON  # explicit: kept
