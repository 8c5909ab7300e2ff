"""Heads over a :class:`~pairsmith.encoders.byte2word.model.WordEncoder`: sub-word MLM and classification.

- :class:`SubwordHead` predicts WordPiece ids from a unit's final state. Byte2Word uses ``slots=K``:
  slot k of a masked word predicts its k-th WordPiece (slot ``len`` predicts the end id ``[SEP]``,
  later slots are ignored). The baseline uses ``slots=1``: each masked token predicts its own id.
- :class:`Classifier`: masked mean of the states (the same pooling as the saved bi-encoder) -> linear.

Heads save beside the encoder in ``DIR/heads/`` (``config.json`` + ``<name>.safetensors``); the
sentence-transformers model in ``DIR`` holds only the encoder and its pooling.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pairsmith.atomic import atomic_write_json


class SubwordHead(nn.Module):
    """Word state (M, d) -> logits over the WordPiece vocabulary per slot (M, K, V)."""

    def __init__(self, d_model: int, vocab_size: int, slots: int) -> None:
        super().__init__()
        self.d_model, self.vocab_size, self.slots = int(d_model), int(vocab_size), int(slots)
        self.slot_emb = nn.Parameter(torch.zeros(self.slots, self.d_model))
        self.dense = nn.Linear(self.d_model, self.d_model)
        self.norm = nn.LayerNorm(self.d_model)
        self.decoder = nn.Linear(self.d_model, self.vocab_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h = self.dense(states)[:, None, :] + self.slot_emb[None]  # (M, K, d)
        return self.decoder(self.norm(F.gelu(h)))  # (M, K, V)

    def loss(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the slots with a target (targets (M, K), -100 = ignore)."""
        h = self.dense(states)[:, None, :] + self.slot_emb[None]  # (M, K, d)
        keep = targets.reshape(-1) != -100  # (M*K,): only slots with a target reach the decoder
        h = h.reshape(-1, self.d_model)[keep]  # (P, d)
        logits = self.decoder(self.norm(F.gelu(h)))  # (P, V)
        return F.cross_entropy(logits, targets.reshape(-1)[keep])


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over units, as sentence-transformers' Pooling(mean): (B, W, d), (B, W) -> (B, d)."""
    m = mask.to(states.dtype)[..., None]  # (B, W, 1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, d)


class Classifier(nn.Module):
    """Pooled sentence vector (B, d) -> logits (B, n_labels)."""

    def __init__(self, d_model: int, n_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model, self.n_labels = int(d_model), int(n_labels)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(self.d_model, self.n_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(pooled))  # (B, n_labels)


def save_heads(directory: Path, heads: dict[str, nn.Module]) -> None:
    """Write ``DIR/heads/config.json`` and one safetensors file per head."""
    from safetensors.torch import save_file

    out = Path(directory) / "heads"
    out.mkdir(parents=True, exist_ok=True)
    cfg = {}
    for name, head in heads.items():
        if isinstance(head, SubwordHead):
            cfg[name] = {
                "type": "subword",
                "d_model": head.d_model,
                "vocab_size": head.vocab_size,
                "slots": head.slots,
            }
        else:
            cfg[name] = {"type": "classifier", "d_model": head.d_model, "n_labels": head.n_labels}
        tmp = out / f".{name}.safetensors.tmp"
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(tmp))
        tmp.replace(out / f"{name}.safetensors")
    atomic_write_json(out / "config.json", cfg)


def load_heads(directory: Path) -> dict[str, nn.Module]:
    from safetensors.torch import load_file

    root = Path(directory) / "heads"
    cfg = json.loads((root / "config.json").read_text())
    heads: dict[str, nn.Module] = {}
    for name, c in cfg.items():
        if c["type"] == "subword":
            head: nn.Module = SubwordHead(c["d_model"], c["vocab_size"], c["slots"])
        else:
            head = Classifier(c["d_model"], c["n_labels"])
        head.load_state_dict(load_file(str(root / f"{name}.safetensors")))
        heads[name] = head.eval()
    return heads


__all__ = ["Classifier", "SubwordHead", "load_heads", "mean_pool", "save_heads"]
