"""Test-only examples of the three shapes the encoder core must admit without edits elsewhere.

- :class:`AllLayerPooler`: a self-saving pooler that reads every hidden layer (the shape of
  multi-layer trainable pooling).
- :class:`CharTokenizer` + :class:`CharEmbedder`: a non-WordPiece tokenizer and the first
  module that owns it (the shape of Byte2Word).
- :class:`GroupScorer` + :class:`GroupTokenizer`: a model returning one score per candidate
  span of a row (the shape of the Uni-Encoder), with its own ONNX graph builder.

They are deliberately tiny; what the tests check is that each runs through the one
:class:`~pairsmith.encoders.pipeline.Pipeline`, saves/loads, and exports to ONNX through the
exporter registry with parity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pairsmith.encoders.modules import PairsmithModule
from pairsmith.encoders.onnx_graphs import GraphSpec, register_exporter
from pairsmith.encoders.source import ModelSource
from pairsmith.encoders.tokenize import check_texts, pad_rows
from pairsmith.encoders.types import Encoded, TokenBatch


class AllLayerPooler(PairsmithModule):
    """Softmax-weighted mix of every layer's masked mean (embeddings layer included)."""

    config_keys = ["dim", "n_layers"]
    wants_all_layers = True

    def __init__(self, dim: int, n_layers: int) -> None:
        super().__init__()
        self.dim, self.n_layers = int(dim), int(n_layers)
        self.layer_logits = torch.nn.Parameter(torch.linspace(-1.0, 1.0, self.n_layers))

    def forward(self, features: dict) -> dict:
        layers = torch.stack(features["all_layer_embeddings"], dim=0)  # (L, B, T, H)
        mask = features["attention_mask"].to(layers.dtype)[None, :, :, None]  # (1, B, T, 1)
        means = (layers * mask).sum(2) / mask.sum(2).clamp(min=1.0)  # (L, B, H)
        w = torch.softmax(self.layer_logits, 0)[:, None, None]  # (L, 1, 1)
        features["sentence_embedding"] = (w * means).sum(0)  # (B, H)
        return features

    def get_embedding_dimension(self) -> int:
        return self.dim


class CharTokenizer:
    """One unit per Unicode code point (mod ``vocab``), id 0 = padding: not WordPiece."""

    def __init__(self, max_length: int, vocab: int = 512) -> None:
        self.max_length, self.vocab, self.pad_id = int(max_length), int(vocab), 0

    def _row(self, text: str) -> tuple[list[int], bool]:
        ids = [1 + ord(c) % (self.vocab - 1) for c in text] or [1]
        return ids[: self.max_length], len(ids) > self.max_length

    def encode(self, texts: Sequence[str]) -> Encoded:
        check_texts(texts, "texts")
        rows = [self._row(t) for t in texts]
        return Encoded(
            [r for r, _ in rows], [[0] * len(r) for r, _ in rows], np.array([t for _, t in rows], bool)
        )

    def encode_pairs(self, pairs):
        return self.encode([a + "\t" + b for a, b in pairs])

    def pad(self, ids, type_ids) -> TokenBatch:
        return pad_rows(ids, type_ids, self.pad_id, with_types=False)


class CharEmbedder(PairsmithModule):
    """First module with its own tokenizer: code-point embeddings -> token_embeddings."""

    config_keys = ["vocab", "dim", "max_seq_length"]
    onnx_input_names = ("input_ids", "attention_mask")

    def __init__(self, vocab: int = 512, dim: int = 16, max_seq_length: int = 64) -> None:
        super().__init__()
        self.vocab, self.dim, self.max_seq_length = int(vocab), int(dim), int(max_seq_length)
        self.emb = torch.nn.Embedding(self.vocab, self.dim)

    def pairsmith_tokenizer(self, max_length: int) -> CharTokenizer:
        return CharTokenizer(max_length, self.vocab)

    @classmethod
    def load_tokenizer(cls, module_dir: Path, max_length: int) -> CharTokenizer:
        """The tokenizer from the saved config alone (the ONNX backend loads no torch weights)."""
        return CharTokenizer(max_length, json.loads((module_dir / "config.json").read_text())["vocab"])

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(self.max_seq_length, self.vocab)

    def tokenize(self, texts, **kwargs) -> dict:  # sentence-transformers' encode() calls this
        enc = self.tokenizer.encode([t if isinstance(t, str) else "\t".join(t) for t in texts])
        return {k: torch.from_numpy(v) for k, v in self.tokenizer.pad(enc.ids, enc.type_ids).feeds().items()}

    def forward(self, features: dict) -> dict:
        features["token_embeddings"] = self.emb(features["input_ids"])  # (B, T, dim)
        return features

    def get_embedding_dimension(self) -> int:
        return self.dim


# -- grouped scores ------------------------------------------------------------------------------


class GroupTokenizer:
    """``encode_pairs`` of (context, "cand1|cand2|...") -> one row, candidates as spans 0..K-1.

    A unit is ``(char id, span id)``; ``pad`` puts span ids into ``TokenBatch.spans``.
    """

    max_length = 256
    pad_id = 0

    def encode(self, texts):
        raise NotImplementedError("GroupTokenizer scores (context, candidates) rows only")

    def encode_pairs(self, pairs) -> Encoded:
        rows = []
        for ctx, cands in pairs:
            row = [(1 + ord(c) % 63, -1) for c in ctx]
            for k, cand in enumerate(cands.split("|")):
                row += [(1 + ord(c) % 63, k) for c in cand or " "]
            rows.append(row)
        return Encoded(rows, [[0] * len(r) for r in rows], np.zeros(len(rows), bool))

    def pad(self, ids, type_ids) -> TokenBatch:
        plain = pad_rows([[u[0] for u in r] for r in ids], type_ids, 0, with_types=False)
        spans = np.full(plain.input_ids.shape, -1, dtype=np.int64)
        for i, r in enumerate(ids):
            spans[i, : len(r)] = [u[1] for u in r]
        return TokenBatch(plain.input_ids, plain.attention_mask, None, spans=spans)


class GroupScorer(torch.nn.Module):
    """Per span: mean of (embedding + context mean) over the span's tokens -> linear -> logit.

    Returns ``{"scores": (B, G)}`` with G = max groups in the batch (spans are 0..G-1).
    """

    def __init__(self, vocab: int = 64, dim: int = 8, max_groups: int = 16) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, 1)
        self.max_groups = max_groups

    def forward(self, features: dict) -> dict:
        x = self.emb(features["input_ids"])  # (B, T, dim)
        spans = features["spans"]  # (B, T)
        ctx = (spans == -1) & (features["attention_mask"] > 0)  # (B, T)
        ctx_mean = (x * ctx[..., None]).sum(1) / ctx.sum(1, keepdim=True).clamp(min=1)  # (B, dim)
        onehot = (spans[..., None] == torch.arange(self.max_groups)).to(x.dtype)  # (B, T, Gmax)
        sums = torch.einsum("btg,btd->bgd", onehot, x)  # (B, Gmax, dim)
        means = sums / onehot.sum(1)[..., None].clamp(min=1)  # (B, Gmax, dim)
        return {"scores": self.head(means + ctx_mean[:, None, :])[..., 0]}  # (B, Gmax)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), out / "scorer.pt")
        (out / "config.json").write_text(json.dumps({"kind": "test-grouped"}))

    @classmethod
    def load(cls, path: Path) -> GroupScorer:
        m = cls()
        m.load_state_dict(torch.load(path / "scorer.pt", weights_only=True))
        return m.eval()


@register_exporter("test-grouped")
def _build_grouped(source: ModelSource) -> GraphSpec:
    model = GroupScorer.load(source.path)  # type: ignore[arg-type]

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, spans):
            return (
                self.m({"input_ids": input_ids, "attention_mask": attention_mask, "spans": spans})["scores"],
            )

    tok = GroupTokenizer()

    def feeds() -> dict[str, np.ndarray]:
        enc = tok.encode_pairs([("hello there", "hi|yo|good day"), ("ok", "a|bb")])
        return tok.pad(enc.ids, enc.type_ids).feeds()

    return GraphSpec(
        kind="test-grouped",
        module=Graph().eval(),
        input_names=("input_ids", "attention_mask", "spans"),
        output_names=("scores",),
        output_axes={"scores": {0: "batch"}},
        primary_output="scores",
        model_type="custom",
        num_heads=0,
        hidden_size=0,
        max_length=256,
        tokenizer=tok,
        example_feeds=feeds,
    )
