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

The first L-1 layers run through Hugging Face's own code (a shallow copy of the
BertModel without its last layer and pooler); the last layer is computed from its
submodules (``query``/``key``/``value`` Linears, ``attention.output``,
``intermediate``, ``output``).
"""

from __future__ import annotations

import logging

import numpy as np

from pairsmith.encoders.tokenize import one_token_type
from pairsmith.errors import InvalidInput

log = logging.getLogger(__name__)

# The largest |logit - full model's logit| accepted by the build-time check (fp32).
PARITY_ATOL = 1e-4


LAST_LAYER_CHOICES = ("cls", "full")


def parse_last_layer(value: str) -> str:
    """``"cls"`` (the [CLS]-only last layer where the model qualifies; exact) or ``"full"``.

    ``"cls-only"`` (the ONNX manifest's word) is read as ``"cls"``.
    """
    v = str(value).strip().lower()
    v = "cls" if v == "cls-only" else v
    if v not in LAST_LAYER_CHOICES:
        raise InvalidInput(f"last_layer: expected 'cls' or 'full', got {value!r}")
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


def _shallow(module, **replace):
    """A copy of ``module`` that shares its parameters and submodules, with ``replace`` swapped in."""
    import copy

    c = copy.copy(module)
    c._modules = {**module._modules, **replace}
    return c


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
            # The first L-1 layers run through Hugging Face's own BertModel code (a shallow copy that
            # shares every parameter, with the last layer and the pooler left out), so the exported
            # graph keeps the pattern onnxruntime's transformer optimizer fuses (Attention,
            # EmbedLayerNormalization) and torch keeps its SDPA attention.
            self.trunk = _shallow(
                hf.bert, encoder=_shallow(hf.bert.encoder, layer=hf.bert.encoder.layer[:-1])
            )
            self.trunk._modules["pooler"] = None
            self.last = hf.bert.encoder.layer[-1]
            self.pooler = hf.bert.pooler
            self.classifier = hf.classifier
            self.heads = int(hf.config.num_attention_heads)

        def _cls_layer(self, h, attention_mask):
            """The last layer: keys/values of every token, everything else for the [CLS] row only."""
            att = self.last.attention.self
            b, t, d = h.shape
            dh = d // self.heads
            cls = h[:, :1]  # (B, 1, d)
            q = att.query(cls).view(b, 1, self.heads, dh).transpose(1, 2)  # (B, H, 1, dh)
            k = att.key(h).view(b, t, self.heads, dh).transpose(1, 2)  # (B, H, T, dh)
            v = att.value(h).view(b, t, self.heads, dh).transpose(1, 2)
            keep = attention_mask[:, None, None, :].to(h.dtype)  # (B, 1, 1, T)
            w = torch.matmul(q, k.transpose(2, 3)) * (dh**-0.5) + (1.0 - keep) * torch.finfo(h.dtype).min
            ctx = torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).reshape(b, 1, d)
            a = self.last.attention.output(ctx, cls)  # dense + residual + LayerNorm
            return self.last.output(self.last.intermediate(a), a)  # (B, 1, d)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            h = self.trunk(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state  # (B, T, d) after L-1 layers
            return self.classifier(self.pooler(self._cls_layer(h, attention_mask)))  # pooler reads row 0

    return ClsScorer().eval()


def cls_scorer_or_none(hf, tokenizer, *, probe: list[tuple[str, str]] | None = None, last_layer: str = "cls"):
    """The CLS-only scorer for ``hf`` when it qualifies and matches the full model, else None.

    Both forwards run on a few probe pairs of different lengths (so padding is
    exercised), on the model's device; a reason is logged when the fast path is not taken.
    ``last_layer="full"`` asks for the full last layer (None at once).
    """
    import torch

    why = "last_layer='full' asked for" if parse_last_layer(last_layer) == "full" else _eligible(hf)
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
    device = next(hf.parameters()).device  # the probe runs where the model lives (a GPU too)
    feats = {
        k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    if "token_type_ids" in feats and one_token_type(hf.config):
        feats["token_type_ids"] = torch.zeros_like(feats["token_type_ids"])  # one type only (RoBERTa-like)
    was_training = hf.training
    hf.eval()
    try:
        with torch.inference_mode():
            want = hf(**feats).logits.float().cpu().numpy()
            got = fast(**feats).float().cpu().numpy()
    except Exception as e:  # noqa: BLE001 - the probe must never stop a model from loading
        log.warning("cross-encoder: CLS-only probe failed (%s: %s); full last layer", type(e).__name__, e)
        return None
    finally:
        hf.train(was_training)
    err = float(np.max(np.abs(want - got)))
    if not np.isfinite(err) or err > PARITY_ATOL:
        log.warning("cross-encoder: CLS-only last layer differs from the full model by %.2e; not used", err)
        return None
    return fast


def scores_module(st_cross_encoder, *, last_layer: str = "cls"):
    """What the torch backend calls: ``features -> {"scores": logits}``, CLS-only where possible.

    Falls back to the sentence-transformers CrossEncoder itself (full forward), always with
    ``last_layer="full"``.
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
    fast = cls_scorer_or_none(hf, tok, last_layer=last_layer)
    if fast is None:
        return st_cross_encoder

    class FastScores(torch.nn.Module):
        cls_only = True  # read by last_layer()

        def __init__(self) -> None:
            super().__init__()
            self.fast = fast

        def forward(self, features: dict) -> dict:
            logits = self.fast(
                features["input_ids"], features["attention_mask"], features.get("token_type_ids")
            )
            return {"scores": logits}

    return FastScores()


def last_layer(module) -> str:  # noqa: ANN001
    """How ``module`` (what :func:`scores_module` returned) computes the last layer: ``"cls-only"`` or
    ``"full"`` (the ONNX manifest's ``last_layer`` uses the same words)."""
    return "cls-only" if getattr(module, "cls_only", False) is True else "full"
