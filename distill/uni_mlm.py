"""The optional MLM auxiliary loss of ``pairsmith train uni-encoder --mlm-weight W`` (Uni-Encoder only).

Each step, a copy of the packed Uni-Encoder batch (same positions, token types and 4-D mask) has
:data:`MLM_PROB` of its context + candidate tokens picked (never special tokens or padding; the
count is exact per batch); of those, 80 % become the mask token, 10 % a random token, 10 % stay
(BERT's recipe). The backbone runs on the copy and an MLM head predicts the original tokens:
BERT's head shape (dense -> GELU -> LayerNorm -> the backbone's input embeddings, tied, + a
bias). The head's transform and bias are new (the sentence-transformers checkpoints this project
starts from ship no MLM head) and are trained with the model but not saved: they are not needed
to load or run the Uni-Encoder. The total loss is ``ranking loss + W * MLM loss``; ``W = 0`` builds
nothing and takes the plain path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pairsmith.errors import InvalidInput

MLM_PROB = 0.15  # share of context + candidate tokens picked per batch
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the picked tokens; the rest keep their id


def mlm_mask(
    ids: np.ndarray, eligible: np.ndarray, mask_id: int, vocab: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(masked copy of ``ids`` (B, T), picked (B, T) bool): exactly round(MLM_PROB x eligible) picks."""
    where = np.flatnonzero(eligible)  # (E,)
    k = max(1, round(MLM_PROB * len(where))) if len(where) else 0
    picked = np.zeros(ids.size, dtype=bool)
    picked[rng.choice(where, size=k, replace=False)] = True
    picked = picked.reshape(ids.shape)  # (B, T)
    roll = rng.random(ids.shape)  # (B, T)
    out = ids.copy()
    out[picked & (roll < MASK_SHARE)] = mask_id
    rand = picked & (roll >= MASK_SHARE) & (roll < MASK_SHARE + RANDOM_SHARE)  # (B, T)
    out[rand] = rng.integers(0, vocab, size=int(rand.sum()))
    return out, picked


def _head(backbone):
    import torch

    class MlmHead(torch.nn.Module):
        """dense -> GELU -> LayerNorm, then the (tied) input embeddings + bias -> vocabulary logits."""

        def __init__(self) -> None:
            super().__init__()
            cfg = backbone.config
            v, e = backbone.get_input_embeddings().weight.shape
            eps = float(getattr(cfg, "layer_norm_eps", 1e-12))
            self.transform = torch.nn.Sequential(
                torch.nn.Linear(int(cfg.hidden_size), e), torch.nn.GELU(), torch.nn.LayerNorm(e, eps=eps)
            )
            self.bias = torch.nn.Parameter(torch.zeros(v))

        def forward(self, h, embeddings):  # (M, H), (V, E) -> (M, V)
            return self.transform(h) @ embeddings.T + self.bias

    return MlmHead()


class MlmAux:
    """``loss(batch, rng)``: the MLM loss of a Uni-Encoder scorer on a masked copy of ``batch``."""

    def __init__(self, scorer, tokenizer_dir: Path, device: str) -> None:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        if hf.mask_token_id is None:
            raise InvalidInput(f"mlm_weight: the tokenizer in {tokenizer_dir} has no mask token")
        self.mask_id = int(hf.mask_token_id)
        self.special = np.array(sorted(set(hf.all_special_ids)), dtype=np.int64)
        self.scorer = scorer
        self.vocab = int(scorer.backbone.get_input_embeddings().weight.shape[0])
        self.head = _head(scorer.backbone).to(device)
        self.device = device

    def parameters(self) -> list:
        return list(self.head.parameters())

    def eligible(self, batch) -> np.ndarray:
        """(B, T) bool: context + candidate tokens, not special tokens ([CLS], [SEP], ...) or padding."""
        return (batch.attention_mask > 0) & ~np.isin(batch.input_ids, self.special)

    def loss(self, batch, rng: np.random.Generator):
        """``batch``: the step's padded Uni-Encoder :class:`TokenBatch` (left unchanged)."""
        import dataclasses

        import torch

        from pairsmith.encoders.runtime import to_features

        ids = batch.input_ids  # (B, T)
        masked, picked = mlm_mask(ids, self.eligible(batch), self.mask_id, self.vocab, rng)
        feats = to_features(dataclasses.replace(batch, input_ids=masked), self.device)
        h = self.scorer.hidden(feats)  # (B, T, H)
        sel = torch.as_tensor(picked, device=h.device)  # (B, T)
        emb = self.scorer.backbone.get_input_embeddings().weight  # (V, E)
        logits = self.head(h[sel], emb)  # (M, V)
        target = torch.as_tensor(ids[picked], device=h.device)  # (M,) the original tokens
        return torch.nn.functional.cross_entropy(logits, target)
