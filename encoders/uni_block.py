"""Block attention for the Uni-Encoder: the masked row without its T x T tensors.

Under the Uni-Encoder's masks attention is block-sparse: a candidate query sees the context and
its own span; a context query sees the context (``context-blind``) or the context and every
candidate of its row (``arrow``). The dense path (``attention_bias`` (B, 1, T, T), plus the warm
head's (B, heads, T, T) gate bias per layer) spends work and memory on the square of the row
length, which grows with the square of the number of candidates N. This path runs the same
BERT-family layers from their own modules (``attention.self.query/key/value``,
``attention.output``, ``intermediate``, ``output``) and computes only the blocks the mask
leaves open, per layer and head::

    context part   every query (B, heads, T, dh) x the context keys (B, heads, Lx, dh)
    own span       candidate queries x their own span's keys, spans padded within length buckets
                   (S, heads, L, dh) x (S, heads, L, dh)
    arrow only     context queries x the row's candidate keys (B, heads, Lx, T - Lx)

Each part is a softmax attention that also returns its log-sum-exp (torch's fused CPU kernel
without autograd, plain tensor operations with it); one query's parts merge exactly into one
softmax (``o = o1 * sigmoid(lse1 - lse2) + o2 * sigmoid(lse2 - lse1)``, the merge of flash
attention), so the result is the dense path's to fp32 rounding. The warm head's gates are one
constant per head over a whole part (c2x over a candidate query's context keys, x2c over a
context query's candidate keys), so they are added to that part's log-sum-exp, not to T x T
logits. Every piece is linear in N for a fixed candidate length. Linear layers run on the row
layout (B, T, H), the same tokens the dense path computes. Padding queries are not the dense
path's (they attend to the context here, to themselves there); they reach no score.

Exact only where a layer is plain post-LN BERT attention with absolute positions (BERT, MiniLM,
RoBERTa: :func:`block_support`); other backbones (MPNet's relative position bias) keep the dense
path, and so does the ONNX export (it traces the dense forward).
"""

from __future__ import annotations

from dataclasses import dataclass

NEG = -1.0e4  # a blocked key's logit, as the dense path's additive mask: exp underflows to 0
BLOCK_MODEL_TYPES = ("bert", "roberta")  # layers built from the same modules, absolute positions


def block_support(backbone) -> str | None:
    """None where the block path is exact for ``backbone``; otherwise why not (the dense path runs)."""
    cfg = getattr(backbone, "config", None)
    model_type = str(getattr(cfg, "model_type", ""))
    if model_type not in BLOCK_MODEL_TYPES:
        return f"model_type {model_type!r} (block attention: {', '.join(BLOCK_MODEL_TYPES)})"
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return "a decoder / cross-attention configuration"
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {cfg.position_embedding_type!r}"
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None or not hasattr(backbone, "embeddings"):
        return "no embeddings / encoder.layer"
    for layer in layers:
        sa = getattr(getattr(layer, "attention", None), "self", None)
        if sa is None or not all(hasattr(sa, n) for n in ("query", "key", "value", "num_attention_heads")):
            return f"{type(layer).__name__}: not a BERT self-attention layer"
        if not all(hasattr(layer, n) for n in ("intermediate", "output")) or not hasattr(
            layer.attention, "output"
        ):
            return f"{type(layer).__name__}: no intermediate/output modules"
    return None


@dataclass(frozen=True)
class Bucket:
    """Candidate spans of similar length, padded to the longest: row and position of each token."""

    row: object  # (S, L) int64: the span's row
    pos: object  # (S, L) int64: the token's position in the row (0 in empty slots)
    member: object  # (S, L) bool: the slot holds a token


@dataclass(frozen=True)
class BlockIndex:
    """Where the segments of a batch of packed rows sit (built once per forward from ``spans``)."""

    lx: int  # widest context in the batch (the context leads every row)
    lx_min: int  # narrowest context
    ctx_keys: object  # (B, Lx) bool: position j < Lx is a context token of row b
    is_cand: object  # (B, T) bool: candidate tokens
    valid: object  # (B, T) bool: real tokens
    cand_from_lx: bool  # every position from lx_min on is a candidate token (no padding, one context length)
    buckets: tuple  # Bucket per length class: own-span attention pads a span to its class's longest


BUCKET_EDGES = (8, 16, 32, 64, 128, 256)  # own-span blocks are padded within these length classes
# A length class joins the next longer one when that pads fewer extra (query, key) pairs than this:
# a bucket costs ~10 tensor operations per layer, about what a couple of thousand pairs cost.
MERGE_PAIRS = 2048


def _group_classes(counts: list[int], widths: list[int], merge_pairs: int) -> list[list[int]]:
    """Length classes (ascending) -> groups of consecutive classes, one bucket each."""
    groups: list[list[int]] = []
    n = w = 0
    for i, (c, wi) in enumerate(zip(counts, widths, strict=True)):
        if groups and n * (wi * wi - w * w) <= merge_pairs:  # pad the group so far to wi
            groups[-1].append(i)
            n += c
        else:
            groups.append([i])
            n = c
        w = wi
    return groups


def block_index(spans, valid, merge_pairs: int | None = None) -> BlockIndex:
    """``spans`` (B, T) (-1 context and padding, k for candidate k), ``valid`` (B, T) bool;
    ``merge_pairs``: see :data:`MERGE_PAIRS` (the default)."""
    import torch

    merge_pairs = MERGE_PAIRS if merge_pairs is None else merge_pairs

    b, t = spans.shape
    dev = spans.device
    ctx = (spans < 0) & valid  # (B, T)
    is_cand = (spans >= 0) & valid  # (B, T)
    ctx_len = ctx.sum(1)  # (B,)
    lx, lx_min = int(ctx_len.max()), int(ctx_len.min())
    cols = torch.arange(t, device=dev).expand(b, t)  # (B, T)
    change = torch.ones_like(valid)
    change[:, 1:] = spans[:, 1:] != spans[:, :-1]
    run_start = torch.where(change, cols, 0).cummax(1).values  # (B, T)
    rows, pos = is_cand.nonzero(as_tuple=True)  # (K,) candidate tokens
    buckets = []
    if len(rows):
        n = int(spans.max()) + 1
        key = rows * n + spans[rows, pos]  # (K,) one id per (row, candidate)
        offset = pos - run_start[rows, pos]  # (K,) position inside the span
        lengths = torch.bincount(key, minlength=b * n)  # (B * n,)
        edges = torch.tensor(BUCKET_EDGES, device=dev)
        cls = torch.bucketize(lengths, edges)  # (B * n,) length class (last: longer than all edges)
        cls = torch.where(lengths > 0, cls, -1)  # -1: no such candidate
        present = torch.unique(cls[cls >= 0])  # (C,) ascending
        counts = [int((cls == c).sum()) for c in present]
        widths = [int(lengths[cls == c].max()) for c in present]
        for group in _group_classes(counts, widths, merge_pairs):
            spans_in = torch.isin(cls, present[group]).nonzero(as_tuple=True)[0]  # (S,)
            slot = torch.full((b * n,), -1, dtype=torch.long, device=dev)
            slot[spans_in] = torch.arange(len(spans_in), device=dev)
            sel = slot[key] >= 0  # (K,) tokens of this class
            width = int(lengths[spans_in].max())
            r_ = torch.zeros((len(spans_in), width), dtype=torch.long, device=dev)
            p_ = torch.zeros_like(r_)
            m_ = torch.zeros((len(spans_in), width), dtype=torch.bool, device=dev)
            at = (slot[key[sel]], offset[sel])
            r_[at], p_[at], m_[at] = rows[sel], pos[sel], True
            buckets.append(Bucket(r_, p_, m_))
    cand_from_lx = bool(is_cand[:, lx_min:].all())
    return BlockIndex(lx, lx_min, ctx[:, :lx], is_cand, valid, cand_from_lx, tuple(buckets))


def _heads(x, heads: int):
    """(B, T, H) -> (B, heads, T, dh)."""
    b, t, h = x.shape
    return x.view(b, t, heads, h // heads).transpose(1, 2)


def _part(q, k, v, keys=None, p_drop: float = 0.0):
    """Softmax attention of ``q`` (..., Q, dh) over one block of keys ``k``/``v`` (..., K, dh):
    (normalised output (..., Q, dh), log-sum-exp of the logits (..., Q, 1)). ``keys``: which keys
    are open, a bool broadcastable to (..., 1, K) (None: all). The scale is in ``q``.

    Two blocks of one query merge exactly: ``o = o1 * sigmoid(lse1 - lse2) + o2 * sigmoid(lse2 - lse1)``.
    Without autograd on a CPU this is torch's fused flash-attention kernel (its log-sum-exp
    carries no gradient); with autograd, plain tensor operations.
    """
    import torch

    fused = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if fused is not None and not p_drop and q.device.type == "cpu" and not torch.is_grad_enabled():
        shape = (*q.shape[:-1], k.shape[-2])  # (..., Q, K)
        bias = None
        if keys is not None:
            bias = torch.zeros((), dtype=q.dtype).masked_fill(~keys, NEG).expand(shape)
        lead = q.shape[:-2]  # the kernel takes (B, heads, L, dh): fold any other leading dims
        q4, k4, v4 = (x.reshape(-1, *x.shape[-3:]) if x.dim() != 4 else x for x in (q, k, v))
        b4 = bias.reshape(-1, *shape[-3:]) if bias is not None and len(shape) != 4 else bias
        o, lse = fused(q4, k4, v4, scale=1.0, attn_mask=b4)[:2]
        return o.reshape(*lead, *o.shape[-2:]), lse.reshape(*lead, lse.shape[-1], 1)
    s = torch.matmul(q, k.transpose(-1, -2))  # (..., Q, K)
    if keys is not None:
        s = s.masked_fill(~keys, NEG)
    m = s.amax(-1, keepdim=True).detach()  # any shift is exact: no gradient needed
    p = torch.exp(s - m)  # (..., Q, K)
    total = p.sum(-1, keepdim=True)  # (..., Q, 1): the softmax's sum, before any dropout
    if p_drop:  # dropout(p / total) @ v == dropout(p) @ v / total
        p = torch.nn.functional.dropout(p, p_drop, training=True)
    return torch.matmul(p, v) / total, m + torch.log(total)


def block_attention(sa, h, idx: BlockIndex, *, arrow: bool, gate_c2x=None, gate_x2c=None):
    """One self-attention (``sa``: a BERT ``attention.self``) under the Uni-Encoder mask.

    ``h`` (B, T, H) -> the heads' outputs, concatenated (B, T, H), as the dense masked attention
    computes them for every real token. ``gate_c2x``/``gate_x2c`` (heads,): the warm head's
    additive cross-segment gates of this layer (None: no gate, the linear head).
    """
    import torch

    b, t, hidden = h.shape
    heads = int(sa.num_attention_heads)
    dh = hidden // heads
    scale = float(getattr(sa, "scaling", dh**-0.5))
    p_drop = sa.dropout.p if sa.training else 0.0
    q_lin = sa.query(h) * scale  # (B, T, H): the scale folded into the queries
    k_lin, v_lin = sa.key(h), sa.value(h)  # (B, T, H)
    q, k, v = _heads(q_lin, heads), _heads(k_lin, heads), _heads(v_lin, heads)  # (B, heads, T, dh)
    kx, vx = k[:, :, : idx.lx], v[:, :, : idx.lx]  # (B, heads, Lx, dh)

    # Every query against the context keys. A candidate query's c2x gate is one constant over
    # all its context keys (a context query's x2c gate, over all candidate keys): it is added to
    # that part's log-sum-exp where the parts merge, not to every logit.
    # some rows' contexts may be shorter: their later keys are candidates
    keys = idx.ctx_keys[:, None, None, :] if idx.lx_min < idx.lx else None  # (B, 1, 1, Lx)
    o_x, lse_x = _part(q, kx, vx, keys, p_drop)  # (B, heads, T, dh) normalised, (B, heads, T, 1)
    out = o_x.transpose(1, 2).reshape(b * t, heads, dh)  # rows: context-blind context queries are done
    lse_rows = lse_x.transpose(1, 2).reshape(b * t, heads)  # (B * T, heads)

    if idx.buckets:  # candidate queries: their own span joins the context part in one softmax
        q_rows, k_rows, v_rows = (x.reshape(b * t, heads, dh) for x in (q_lin, k_lin, v_lin))
        where, values = [], []
        for bk in idx.buckets:
            flat = bk.row * t + bk.pos  # (S, L) into the row layout
            qc, kc, vc = (x[flat].transpose(1, 2) for x in (q_rows, k_rows, v_rows))  # (S, heads, L, dh)
            o_c, lse_c = _part(qc, kc, vc, bk.member[:, None, None, :], p_drop)  # (S, heads, L, dh|1)
            lse = lse_rows[flat]  # (S, L, heads): the context part
            if gate_c2x is not None:
                lse = lse + gate_c2x
            share = torch.sigmoid(lse - lse_c[..., 0].transpose(1, 2))[..., None]  # (S, L, heads, 1)
            merged = out[flat] * share + o_c.transpose(1, 2) * (1 - share)  # (S, L, heads, dh)
            where.append(flat[bk.member])
            values.append(merged[bk.member])  # (K_bucket, heads, dh)
        out = out.index_put((torch.cat(where),), torch.cat(values))  # out of place: autograd-safe
    out = out.reshape(b, t, hidden)  # (B, T, H)

    if arrow and idx.lx_min < t:  # context queries also see every candidate of their row (x2c gate)
        k0 = idx.lx_min  # candidate keys start here (in every row from its own context length)
        keys = None if idx.cand_from_lx else idx.is_cand[:, None, None, k0:]  # (B, 1, 1, T - k0)
        o_xc, lse_xc = _part(
            q[:, :, : idx.lx], k[:, :, k0:], v[:, :, k0:], keys, p_drop
        )  # (B, heads, Lx, dh|1)
        if gate_x2c is not None:
            lse_xc = lse_xc + gate_x2c[None, :, None, None]
        share = torch.sigmoid(lse_x[:, :, : idx.lx] - lse_xc)  # (B, heads, Lx, 1)
        ctx_out = o_x[:, :, : idx.lx] * share + o_xc * (1 - share)  # (B, heads, Lx, dh)
        ctx_out = ctx_out.transpose(1, 2).reshape(b, idx.lx, hidden)  # (B, Lx, H)
        head = torch.where(idx.ctx_keys[:, :, None], ctx_out, out[:, : idx.lx])
        out = torch.cat([head, out[:, idx.lx :]], dim=1)  # (B, T, H)
    return out  # (B, T, H)


def block_hidden(backbone, features: dict, *, arrow: bool, gates=None):
    """The backbone's last layer (B, T, H) under the Uni-Encoder mask, block by block.

    ``features``: input_ids, attention_mask, spans [, token_type_ids, position_ids] as the
    tokenizer lays them out. ``gates``: (gate_c2x, gate_x2c), each (layers, heads), or None.
    """
    kwargs = {"input_ids": features["input_ids"]}
    for name in ("token_type_ids", "position_ids"):
        if features.get(name) is not None:
            kwargs[name] = features[name]
    h = backbone.embeddings(**kwargs)  # (B, T, H)
    idx = block_index(features["spans"], features["attention_mask"].bool())
    for i, layer in enumerate(backbone.encoder.layer):
        c2x, x2c = (gates[0][i], gates[1][i]) if gates is not None else (None, None)
        att = block_attention(layer.attention.self, h, idx, arrow=arrow, gate_c2x=c2x, gate_x2c=x2c)
        att = layer.attention.output(att, h)  # dense -> dropout -> LayerNorm(+ h)
        h = layer.output(layer.intermediate(att), att)  # (B, T, H)
    return h


def dense_bias(spans, valid, arrow: bool, dtype):
    """The tokenizer's (B, 1, T, T) additive mask rebuilt in torch (the fallback where the block
    path is not exact and a batch came without ``attention_bias``)."""
    import torch

    ctx, cand = (spans < 0) & valid, (spans >= 0) & valid  # (B, T)
    k_ctx, k_cand = ctx[:, None, :], cand[:, None, :]  # (B, 1, T)
    same = spans[:, :, None] == spans[:, None, :]  # (B, T, T)
    ctx_sees = (k_ctx | k_cand) if arrow else k_ctx
    allowed = (ctx[:, :, None] & ctx_sees) | (cand[:, :, None] & (k_ctx | (same & k_cand)))
    eye = torch.eye(spans.shape[1], dtype=torch.bool, device=spans.device)[None]
    allowed = allowed | (~valid[:, :, None] & eye)  # a padding query sees itself
    zero = torch.zeros((), dtype=dtype, device=spans.device)
    return torch.where(allowed, zero, torch.tensor(NEG, dtype=dtype, device=spans.device))[:, None]
