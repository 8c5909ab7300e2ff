"""A cross-encoder forward that computes the last layer for [CLS] only (exact, ~14% fewer FLOPs).

A BERT-family sequence classifier reads one vector: the last layer's [CLS]
(pooler -> classifier). Every other position of the last layer is computed and
thrown away. Here the last layer computes keys and values for every token (the
[CLS] query attends to all of them) but the query, the attention output, both
LayerNorms and the feed-forward block for the [CLS] row only. For a 6-layer
MiniLM that removes 10/12 of one layer's matrix work: about 14% of the forward.

The result equals the full model's logits to float rounding (checked at build
time by :func:`cls_scorer_or_none`, which falls back to the full model when the
check fails). Only plain BERT encoders qualify (``model_type`` ``bert``,
absolute positions, a pooler and a linear classifier); anything else returns
``None`` and the caller keeps the full forward.

The layers are computed from their own submodules (``query``/``key``/``value``
Linears, ``attention.output``, ``intermediate``, ``output``), not through
``BertLayer.forward``, whose signature changes between transformers releases.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

# The largest |logit - full model's logit| accepted by the build-time check (fp32).
PARITY_ATOL = 1e-4


def last_layer_mode() -> str:
    """``cls-only`` (default) or ``full`` from PAIRSMITH_CROSS_LAST_LAYER (A/B runs, escape hatch)."""
    v = os.environ.get("PAIRSMITH_CROSS_LAST_LAYER", "cls-only").strip().lower()
    if v not in ("cls-only", "full"):
        raise InvalidInput(f"PAIRSMITH_CROSS_LAST_LAYER: expected cls-only or full, got {v!r}")
    return v


def _eligible(hf) -> str | None:
    """Why ``hf`` cannot take the CLS-only path (None: it can)."""
    cfg = hf.config
    if getattr(cfg, "model_type", None) != "bert":
        return f"model_type {getattr(cfg, 'model_type', None)!r} (only 'bert' is supported)"
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return "a decoder configuration"
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {cfg.position_embedding_type!r}"
    if not hasattr(hf, "bert") or getattr(hf.bert, "pooler", None) is None:
        return "no pooler"
    if not hasattr(hf, "classifier") or type(hf.classifier).__name__ != "Linear":
        return "the classifier is not one linear layer"
    if getattr(cfg, "hidden_act", None) not in ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh"):
        return f"activation {getattr(cfg, 'hidden_act', None)!r}"
    return None


def build_cls_scorer(hf):
    """A torch module ``(input_ids, attention_mask, token_type_ids=None) -> logits (B, L)``.

    Shares ``hf``'s parameters (no copy). Raises ValueError when ``hf`` is not eligible.
    """
    import torch

    why = _eligible(hf)
    if why is not None:
        raise ValueError(f"CLS-only scorer: {why}")

    class ClsScorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = hf.bert.embeddings
            self.layers = hf.bert.encoder.layer
            self.pooler = hf.bert.pooler
            self.classifier = hf.classifier
            self.heads = int(hf.config.num_attention_heads)

        def _layer(self, layer, h, bias, cls_only: bool):
            att = layer.attention.self
            b, t, d = h.shape
            dh = d // self.heads
            q_in = h[:, :1] if cls_only else h
            q = att.query(q_in).view(b, q_in.shape[1], self.heads, dh).transpose(1, 2)
            k = att.key(h).view(b, t, self.heads, dh).transpose(1, 2)
            v = att.value(h).view(b, t, self.heads, dh).transpose(1, 2)
            w = torch.matmul(q, k.transpose(2, 3)) * (dh**-0.5) + bias
            ctx = torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).reshape(b, q_in.shape[1], d)
            a = layer.attention.output(ctx, q_in)  # dense + residual + LayerNorm
            return layer.output(layer.intermediate(a), a)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            h = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            keep = attention_mask[:, None, None, :].to(h.dtype)
            bias = (1.0 - keep) * torch.finfo(h.dtype).min
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                h = self._layer(layer, h, bias, cls_only=i == last)
            return self.classifier(self.pooler(h))  # pooler reads row 0: the [CLS] row

    return ClsScorer().eval()


def cls_scorer_or_none(hf, tokenizer, *, probe: list[tuple[str, str]] | None = None):
    """The CLS-only scorer for ``hf`` when it qualifies and matches the full model, else None.

    The check runs both on a few probe pairs of different lengths (so padding
    is exercised) and logs why the fast path was not taken.
    """
    import torch

    why = "PAIRSMITH_CROSS_LAST_LAYER=full" if last_layer_mode() == "full" else _eligible(hf)
    if why is not None:
        log.info("cross-encoder: full last layer (%s)", why)
        return None
    fast = build_cls_scorer(hf)
    pairs = probe or [
        ("A man is playing a guitar.", "Someone plays an instrument on a stage tonight."),
        ("Short.", "A much longer second sentence, so that the batch has padding in it."),
        ("The cat sat on the mat", "no"),
    ]
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    feats = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    was_training = hf.training
    hf.eval()
    try:
        with torch.inference_mode():
            want = hf(**feats).logits.float().numpy()
            got = fast(**feats).float().numpy()
    finally:
        hf.train(was_training)
    err = float(np.max(np.abs(want - got)))
    if not np.isfinite(err) or err > PARITY_ATOL:
        log.warning("cross-encoder: CLS-only last layer differs from the full model by %.2e; not used", err)
        return None
    return fast


def scores_module(st_cross_encoder):
    """What the torch backend calls: ``features -> {"scores": logits}``, CLS-only where possible.

    Falls back to the sentence-transformers CrossEncoder itself (full forward).
    """
    import torch

    hf = getattr(st_cross_encoder, "model", None)
    tok = getattr(st_cross_encoder, "tokenizer", None)
    if (
        hf is None
        or tok is None
        or not hasattr(hf, "config")
        or len(getattr(st_cross_encoder, "_modules", {})) != 1
    ):
        return st_cross_encoder  # unknown layout, or modules after the transformer: keep the full forward
    fast = cls_scorer_or_none(hf, tok)
    if fast is None:
        return st_cross_encoder

    class FastScores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fast = fast

        def forward(self, features: dict) -> dict:
            logits = self.fast(
                features["input_ids"], features["attention_mask"], features.get("token_type_ids")
            )
            return {"scores": logits}

    return FastScores()
