"""The warm-start Uni-Encoder head: a bi-encoder's own cosine, cross-segment attention gated shut.

``UniEncoder.from_bi_encoder`` packs a context and its candidates as usual, but lays every
segment out the way the bi-encoder sees it alone (candidates restart at position 0, token type
0) and scores a candidate by the bi-encoder's pooling over the context span and over the
candidate span, then cosine. Every attention edge *across* segments (candidate -> context;
under ``arrow`` also context -> candidates) gets an additive bias, learned per layer and head::

    logits[l, h, q, k] += gate_c2x[l, h]   (q in a candidate, k in the context)
    logits[l, h, q, k] += gate_x2c[l, h]   (q in the context, k in a candidate)

The gates start at ``gate_init`` (-30): a gated key's weight is then about exp(-30) ~ 1e-13 of
an in-segment key's with the same logit, and measured on DailyDialog++ and MuTual contexts the
scores equal the bi-encoder's cosines to fp32 rounding (max |diff| ~ 3e-7 at -30 and at -50;
2e-6 at -15; 3e-4 at -10). Nothing underflows to exactly 0 (exp(-30 - 40) ~ 4e-31 is above
the fp32 normal minimum 1.2e-38), so the gates get gradients; the trainer rescales them (they
are ~1e-13) and gives the gates their own learning rate (``distill/uni_train.py``).

Candidate -> other-candidate edges stay blocked (the tokenizer's additive mask); the gates only
add to edges that mask leaves open, plus context -> candidates under ``context-blind``, where
the mask's -1e4 already blocks them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pairsmith.errors import FailedPrecondition, InvalidInput

ST_MODULES = {"Transformer", "Pooling", "Normalize"}  # what a bi-encoder may hold to be warm-started


def bi_encoder_facts(path: Path) -> dict:
    """Pooling and max length of a sentence-transformers directory (Transformer, Pooling[, Normalize])."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        raise InvalidInput(
            f"init-from-bi: {path} is not a sentence-transformers bi-encoder (no modules.json); "
            "use --head linear (UniEncoder.from_backbone) for a plain transformer"
        )
    modules = json.loads(modules_file.read_text())
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    extra = sorted(set(kinds) - ST_MODULES)
    if extra or "Pooling" not in kinds:
        raise InvalidInput(
            f"init-from-bi: {path}: modules {kinds}; a warm start needs Transformer + Pooling "
            f"(+ Normalize) — {extra or ['no Pooling']} cannot be placed inside the packed row"
        )
    pool_dir = path / modules[kinds.index("Pooling")].get("path", "1_Pooling")
    pcfg = json.loads((pool_dir / "config.json").read_text())
    mode = pcfg.get("pooling_mode")  # sentence-transformers >= 6: one string
    if isinstance(mode, str):
        modes = [mode]
    else:  # older: one boolean per mode
        flags = {
            k.removeprefix("pooling_mode_"): bool(v) for k, v in pcfg.items() if k.startswith("pooling_mode_")
        }
        modes = [k for k, v in flags.items() if v]
        modes = [{"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}.get(m, m) for m in modes]
    if len(modes) != 1 or modes[0] not in ("cls", "mean", "max"):
        raise InvalidInput(
            f"init-from-bi: {pool_dir}/config.json: pooling {modes or pcfg}; supported: exactly one of cls, mean, max"
        )
    st_cfg = path / "sentence_bert_config.json"
    msl = json.loads(st_cfg.read_text()).get("max_seq_length") if st_cfg.is_file() else None
    return {"pooling": modes[0], "max_seq_length": int(msl) if msl else None}


def encoder_layers(backbone):
    """The transformer blocks the gate hooks into (BERT/RoBERTa/MPNet: ``encoder.layer``)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None:
        raise FailedPrecondition(
            f"init-from-bi: {type(backbone).__name__} has no encoder.layer blocks to gate; use --head linear"
        )
    return layers


def _gated_class():
    import torch

    from pairsmith.encoders.uni_block import block_hidden, block_support, dense_bias

    class GatedCosineScorer(torch.nn.Module):
        """Backbone + per-layer/head cross-segment gates + span pooling + cosine.

        ``forward(features) -> {"scores": (B, max_groups)}``: cosine per candidate column
        (0 in columns past a row's last candidate).
        """

        def __init__(self, backbone, max_groups: int, pooling: str, gate_init: float) -> None:
            super().__init__()
            self.backbone = backbone
            self.max_groups = int(max_groups)
            self.pooling = pooling
            layers = encoder_layers(backbone)
            heads = int(backbone.config.num_attention_heads)
            self.gate_c2x = torch.nn.Parameter(torch.full((len(layers), heads), float(gate_init)))
            self.gate_x2c = torch.nn.Parameter(torch.full((len(layers), heads), float(gate_init)))
            self._cross: tuple | None = None  # (c2x, x2c) (B, 1, T, T) during a forward
            for i, layer in enumerate(layers):
                layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)
            self.block_unsupported = block_support(backbone)  # None: block attention is exact here

        def _hook(self, i: int):
            def add_gate(module, args, kwargs):
                if self._cross is None:
                    return None
                c2x, x2c = self._cross
                bias = (
                    self.gate_c2x[i][None, :, None, None] * c2x + self.gate_x2c[i][None, :, None, None] * x2c
                )
                if len(args) >= 2 and args[1] is not None:  # (B, heads, T, T)
                    return (args[0], args[1] + bias, *args[2:]), kwargs
                if kwargs.get("attention_mask") is not None:
                    return args, {**kwargs, "attention_mask": kwargs["attention_mask"] + bias}
                raise FailedPrecondition("uni-encoder gate: the layer got no attention mask to add to")

            return add_gate

        def forward(self, features: dict) -> dict:
            ids = features["input_ids"]  # (B, T)
            spans = features["spans"]  # (B, T): -1 context and padding, k for candidate k
            valid = features["attention_mask"].bool()  # (B, T)
            ctx = (spans < 0) & valid  # (B, T)
            cand = spans >= 0  # (B, T)
            h = self._hidden(features, valid, ctx, cand)  # (B, T, H)
            groups = torch.arange(self.max_groups, device=ids.device)  # (G,)
            member = spans[..., None] == groups  # (B, T, G)
            u = self._pool(h, ctx[..., None])[:, 0]  # (B, H)
            v = self._pool(h, member)  # (B, G, H)
            u = torch.nn.functional.normalize(u, dim=-1)
            v = torch.nn.functional.normalize(v, dim=-1)
            return {"scores": torch.einsum("bh,bgh->bg", u, v)}  # (B, G)

        def _hidden(self, features: dict, valid, ctx, cand):
            """The last layer (B, T, H): block by block where the batch names its mask
            (``uni_arrow``) and the backbone allows it, else dense with the gate hooks."""
            dtype = self.gate_c2x.dtype
            bias = features.get("attention_bias")  # (B, 1, T, T) additive, or None (block layout)
            if bias is None:
                arrow = bool(features["uni_arrow"].reshape(-1)[0])
                if self.block_unsupported is None:
                    gates = (self.gate_c2x, self.gate_x2c)
                    return block_hidden(self.backbone, features, arrow=arrow, gates=gates)
                bias = dense_bias(features["spans"], valid, arrow, dtype)
            c2x = (cand[:, None, :, None] & ctx[:, None, None, :]).to(dtype)  # (B, 1, T, T)
            x2c = (ctx[:, None, :, None] & cand[:, None, None, :]).to(dtype)  # (B, 1, T, T)
            kwargs = {"input_ids": features["input_ids"], "attention_mask": bias.to(dtype)}
            for name in ("token_type_ids", "position_ids"):
                if features.get(name) is not None:
                    kwargs[name] = features[name]
            self._cross = (c2x, x2c)
            try:
                return self.backbone(**kwargs).last_hidden_state  # (B, T, H)
            finally:
                self._cross = None

        def _pool(self, h, member):
            """(B, T, H), (B, T, S) bool -> (B, S, H): each segment's pooled vector."""
            m = member.to(h.dtype)  # (B, T, S)
            if self.pooling == "mean":
                return torch.einsum("bts,bth->bsh", m, h) / m.sum(1)[..., None].clamp(min=1.0)
            if self.pooling == "cls":  # the segment's first token ([CLS])
                first = (m.cumsum(1) == 1) & member  # (B, T, S)
                return torch.einsum("bts,bth->bsh", first.to(h.dtype), h)
            neg = torch.finfo(h.dtype).min
            x = torch.where(member[..., None], h[:, :, None, :], neg)  # (B, T, S, H)
            return x.amax(1).clamp(min=neg / 2)  # empty segment: a finite vector

    return GatedCosineScorer


def build_gated(backbone, max_groups: int, pooling: str, gate_init: float):
    return _gated_class()(backbone, max_groups, pooling, gate_init)
