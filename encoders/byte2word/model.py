"""Byte2Word: bytes -> word vectors (learned queries through ``kernels``) -> a transformer over words.

:class:`WordEncoder` is a self-saving first module (sentence-transformers compatible) with two
input units, so the sub-word baseline shares every layer above the input:

- ``unit="bytes"`` (Byte2Word): :class:`BytePooler` embeds each byte (260 ids) plus its position
  inside the word, optionally runs ``byte_layers`` small transformer layers over the bytes of each
  word (self-attention never crosses a word boundary), and ``n_queries`` learned queries per head
  pool each word's bytes through
  :func:`pairsmith.kernels.cross_attention_pool_projected` (packed, ``cu_seqlens``, no padding
  to the longest word); the pooled queries are concatenated and projected to ``d_model``.
- ``unit="wordpiece"`` (the baseline): an ``nn.Embedding`` over the WordPiece vocabulary.

Then word/token positions + segment embeddings -> pre-LN transformer -> ``token_embeddings``
(B, W, d_model). A feature ``mlm_mask`` (B, W) bool replaces the masked units' input vectors with
one learned mask vector (whole-word masking happens on units, before the encoder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pairsmith.encoders.byte2word.tokenizer import BYTE_VOCAB, ByteWordTokenizer
from pairsmith.encoders.modules import PairsmithModule
from pairsmith.errors import FailedPrecondition, InvalidInput
from pairsmith.kernels import cross_attention_pool_projected

UNITS = ("bytes", "wordpiece")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class BytePooler(nn.Module):
    """Packed bytes of N units -> N word vectors (N, d_model), one per unit, through the kernel.

    A unit's vector depends on its own bytes only (the pooling never looks past ``cu_seqlens``).
    """

    def __init__(
        self,
        d_byte: int,
        d_model: int,
        n_queries: int,
        heads: int,
        max_word_bytes: int,
        norm_out: bool = True,
        byte_layers: int = 0,
        dropout: float = 0.0,
        query_std: float = 0.02,
    ) -> None:
        super().__init__()
        if byte_layers < 0:
            raise InvalidInput(f"byte_layers: must be >= 0, got {byte_layers}")
        if not query_std > 0:
            raise InvalidInput(f"query_std: must be > 0, got {query_std}")
        if d_byte % heads:
            raise InvalidInput(f"d_byte: {d_byte} is not divisible by pool heads {heads}")
        self.heads, self.head_dim, self.n_queries = heads, d_byte // heads, n_queries
        self.max_pos = max_word_bytes + 2  # BOW + bytes + EOW
        self.byte_emb = nn.Embedding(BYTE_VOCAB, d_byte)
        self.pos_emb = nn.Embedding(self.max_pos, d_byte)
        self.norm = nn.LayerNorm(d_byte)
        # Initial spread of the learned queries: at 0.02 a query attends almost uniformly over a
        # word's bytes for hundreds of steps; 1.0 starts it selective (docs/results.md, Byte2Word).
        self.queries = nn.Parameter(torch.randn(n_queries, heads, self.head_dim) * query_std)
        self.k = nn.Linear(d_byte, d_byte)
        self.v = nn.Linear(d_byte, d_byte)
        self.out = nn.Linear(n_queries * d_byte, d_model)
        # Word vectors at unit scale, like an embedding row: without it they enter the encoder ~7x
        # smaller than the position signal and nearly alike (docs/results.md, Byte2Word session 4).
        self.out_norm: nn.Module = nn.LayerNorm(d_model) if norm_out else nn.Identity()
        # Byte self-attention inside each word: without it a word vector is a pooled sum of
        # (byte, position) features; with it, bytes see each other first (conjunctions such as
        # "o before d"), which a linear map of a sum cannot express.
        self.byte_blocks = nn.ModuleList(
            Block(d_byte, heads, 4 * d_byte, dropout) for _ in range(byte_layers)
        )

    def forward(
        self, byte_ids: torch.Tensor, byte_pos: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        x = self.norm(self.byte_emb(byte_ids) + self.pos_emb(byte_pos.clamp(max=self.max_pos - 1)))  # (T, C)
        if len(self.byte_blocks):
            x = self._contextualise(x, byte_pos, cu_seqlens)  # (T, C)
        if torch.onnx.is_in_onnx_export():
            pooled = self._pool_padded(x, byte_pos, cu_seqlens)  # (N, Nq, H, Dh)
        else:
            pooled, _ = cross_attention_pool_projected(
                self.queries,
                x,
                self.k.weight,
                self.v.weight,
                cu_seqlens,
                b_k=self.k.bias,
                b_v=self.v.bias,
                impl="auto",  # packed on the CPU, Triton on CUDA when it imports
            )  # (N, Nq, H, Dh)
        return self.out_norm(self.out(pooled.flatten(1)))  # (N, d_model)

    @staticmethod
    def _slots(byte_pos: torch.Tensor, cu_seqlens: torch.Tensor, max_pos: int):
        """(unit of each byte (T,), its clamped position (T,), unit count): every unit starts at 0."""
        widx = torch.cumsum((byte_pos == 0).to(torch.int64), 0) - 1  # (T,)
        return widx, byte_pos.clamp(max=max_pos - 1), cu_seqlens.shape[0] - 1

    def _contextualise(
        self, x: torch.Tensor, byte_pos: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        """Self-attention over the bytes of each word: pad units to the fixed cap (max_pos, at most 22
        bytes, so the waste is bounded and the shapes export), run the blocks, return the packed rows."""
        widx, pos, n_units = self._slots(byte_pos, cu_seqlens, self.max_pos)
        xp = x.new_zeros((n_units, self.max_pos, x.shape[-1])).index_put((widx, pos), x)  # (N, L, C)
        keep = torch.zeros((n_units, self.max_pos), dtype=torch.bool, device=x.device).index_put(
            (widx, pos), torch.ones_like(pos, dtype=torch.bool)
        )  # (N, L)
        for blk in self.byte_blocks:
            xp = blk(xp, keep)
        return xp[widx, pos]  # (T, C)

    def _pool_padded(self, x: torch.Tensor, byte_pos: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """The same attention on units padded to the fixed cap (exportable: no data-dependent shapes).

        The unit of byte t is (number of unit starts up to t) - 1: every unit starts at position 0.
        """
        widx, pos, n_units = self._slots(byte_pos, cu_seqlens, self.max_pos)
        h, dh = self.heads, self.head_dim
        k = self.k(x).view(-1, h, dh)  # (T, H, Dh)
        v = self.v(x).view(-1, h, dh)  # (T, H, Dh)
        kp = x.new_zeros((n_units, self.max_pos, h, dh)).index_put((widx, pos), k)  # (N, L, H, Dh)
        vp = x.new_zeros((n_units, self.max_pos, h, dh)).index_put((widx, pos), v)  # (N, L, H, Dh)
        valid = torch.zeros((n_units, self.max_pos), dtype=torch.bool, device=x.device).index_put(
            (widx, pos), torch.ones_like(pos, dtype=torch.bool)
        )  # (N, L)
        s = torch.einsum("ihd,njhd->nhij", self.queries, kp) / dh**0.5  # (N, H, Nq, L)
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1)  # (N, H, Nq, L)
        return torch.einsum("nhij,njhd->nihd", p, vp)  # (N, Nq, H, Dh)


class Block(nn.Module):
    """Pre-LN transformer layer: self-attention with a key-padding mask, then a GELU MLP."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)  # (B, T, H, Dh)
        bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, -1e9)  # (B, T)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias[:, None, None, :]
        )  # (B, H, T, Dh)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))  # (B, T, d)
        return x + self.drop(self.ff(self.ln2(x)))  # (B, T, d)


class WordEncoder(PairsmithModule):
    """First module: units (bytes per word, or WordPiece ids) -> contextual states (B, W, d_model)."""

    config_keys = [
        "unit", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_length", "max_word_bytes",
        "d_byte", "n_queries", "pool_heads", "vocab_size", "dropout", "pool_norm", "byte_layers",
    ]  # fmt: skip

    def __init__(
        self,
        unit: str = "bytes",
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int = 512,
        max_seq_length: int = 64,
        max_word_bytes: int = 20,
        d_byte: int = 64,
        n_queries: int = 2,
        pool_heads: int = 4,
        vocab_size: int = 30522,
        dropout: float = 0.1,
        pool_norm: bool = True,
        byte_layers: int = 0,
        query_std: float = 0.02,  # initialisation only (not saved: the trained queries are)
        tokenizer_dir: str | None = None,
    ) -> None:
        super().__init__()
        if unit not in UNITS:
            raise InvalidInput(f"unit: expected one of {UNITS}, got {unit!r}")
        self.unit, self.d_model, self.n_layers, self.n_heads = unit, int(d_model), int(n_layers), int(n_heads)
        self.d_ff, self.max_seq_length, self.max_word_bytes = (
            int(d_ff),
            int(max_seq_length),
            int(max_word_bytes),
        )
        self.d_byte, self.n_queries, self.pool_heads = int(d_byte), int(n_queries), int(pool_heads)
        self.vocab_size, self.dropout, self.pool_norm = int(vocab_size), float(dropout), bool(pool_norm)
        self.byte_layers = int(byte_layers)
        self.tokenizer_dir = tokenizer_dir  # wordpiece only: where tokenizer.json lives (not a config key)
        if unit == "bytes":
            self.pooler = BytePooler(
                self.d_byte,
                self.d_model,
                self.n_queries,
                self.pool_heads,
                self.max_word_bytes,
                self.pool_norm,
                self.byte_layers,
                self.dropout,
                float(query_std),
            )
        else:
            self.tok_emb = nn.Embedding(self.vocab_size, self.d_model)
        self.pos_emb = nn.Embedding(self.max_seq_length, self.d_model)
        self.type_emb = nn.Embedding(2, self.d_model)
        self.mask_vec = nn.Parameter(torch.randn(self.d_model) * 0.02)
        self.emb_norm = nn.LayerNorm(self.d_model)
        self.drop = nn.Dropout(self.dropout)
        self.blocks = nn.ModuleList(
            Block(self.d_model, self.n_heads, self.d_ff, self.dropout) for _ in range(self.n_layers)
        )
        self.final_norm = nn.LayerNorm(self.d_model)
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        """Every embedding table ~ N(0, 0.02) (BERT's initializer range), not torch's N(0, 1).

        Adam moves a weight by about lr per step whatever its scale, and each table is followed by
        a LayerNorm: rows of scale 1 barely change relative to themselves in a few hundred steps at
        lr 5e-4, so a from-scratch model stayed near chance on SST-2 (docs/results.md, session 4).
        """
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    # -- tokenizer contract ------------------------------------------------------------------
    @property
    def onnx_input_names(self) -> tuple[str, ...]:
        if self.unit == "bytes":
            return (
                "input_ids",
                "attention_mask",
                "token_type_ids",
                "byte_ids",
                "byte_pos",
                "cu_seqlens",
                "word_slot",
            )
        return ("input_ids", "attention_mask", "token_type_ids")

    @property
    def onnx_input_axes(self) -> dict[str, dict[int, str]]:
        axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids")}
        if self.unit == "bytes":
            axes |= {"byte_ids": {0: "bytes"}, "byte_pos": {0: "bytes"}, "cu_seqlens": {0: "units_plus_one"}}
            axes["word_slot"] = {0: "units"}
        return axes

    def pairsmith_tokenizer(self, max_length: int):
        length = min(int(max_length), self.max_seq_length)
        if self.unit == "bytes":
            return ByteWordTokenizer(length, self.max_word_bytes)
        return _wordpiece_tokenizer(self.tokenizer_dir, length)

    @classmethod
    def load_tokenizer(cls, module_dir: Path, max_length: int):
        cfg = json.loads((Path(module_dir) / "config.json").read_text())
        length = min(int(max_length), int(cfg["max_seq_length"]))
        if cfg["unit"] == "bytes":
            return ByteWordTokenizer(length, int(cfg["max_word_bytes"]))
        return _wordpiece_tokenizer(str(module_dir), length)

    @property
    def tokenizer(self):
        return self.pairsmith_tokenizer(self.max_seq_length)

    def tokenize(self, texts, **kwargs: Any) -> dict:  # sentence-transformers' encode() calls this
        tok = self.tokenizer
        if texts and not isinstance(texts[0], str):
            enc = tok.encode_pairs([tuple(t) for t in texts])
        else:
            enc = tok.encode(list(texts))
        return {k: torch.from_numpy(v) for k, v in tok.pad(enc.ids, enc.type_ids).feeds().items()}

    # -- forward -------------------------------------------------------------------------------
    def unit_vectors(self, features: dict) -> torch.Tensor:
        """Input vectors of every unit slot (B, W, d_model), before positions and the encoder."""
        ids = features["input_ids"]  # (B, W)
        if self.unit == "wordpiece":
            return self.tok_emb(ids)  # (B, W, d)
        missing = [n for n in ("byte_ids", "byte_pos", "cu_seqlens", "word_slot") if n not in features]
        if missing:
            raise FailedPrecondition(
                f"Byte2Word: the batch lacks {missing}; tokenize with the model's own tokenizer "
                "(ByteWordTokenizer.pad puts packed bytes into TokenBatch.extras)"
            )
        words = self.pooler(features["byte_ids"], features["byte_pos"], features["cu_seqlens"])  # (N, d)
        b, w = ids.shape
        flat = words.new_zeros((b * w, self.d_model)).index_put((features["word_slot"],), words)  # (B*W, d)
        return flat.view(b, w, self.d_model)  # (B, W, d)

    def forward(self, features: dict) -> dict:
        x = self.unit_vectors(features)  # (B, W, d)
        b, w, _ = x.shape
        if "mlm_mask" in features:
            x = torch.where(features["mlm_mask"][..., None], self.mask_vec.to(x.dtype), x)  # (B, W, d)
        pos = torch.arange(w, device=x.device)[None, :]  # (1, W)
        types = features.get("token_type_ids")
        x = x + self.pos_emb(pos) + (self.type_emb(types) if types is not None else 0)  # (B, W, d)
        x = self.drop(self.emb_norm(x))
        keep = features["attention_mask"] > 0  # (B, W)
        for blk in self.blocks:
            x = blk(x, keep)
        features["token_embeddings"] = self.final_norm(x)  # (B, W, d)
        return features

    def get_embedding_dimension(self) -> int:
        return self.d_model

    def input_embedding_params(self) -> int:
        """Parameters that turn units into input vectors (byte pooler, or the WordPiece table)."""
        part = self.pooler if self.unit == "bytes" else self.tok_emb
        return sum(p.numel() for p in part.parameters())

    # -- save / load ---------------------------------------------------------------------------
    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        super().save(output_path, *args, safe_serialization=safe_serialization, **kwargs)
        if self.unit == "wordpiece":
            src = Path(self.tokenizer_dir or _default_dir())
            for name in _TOKENIZER_FILES:
                if (src / name).is_file() and src.resolve() != Path(output_path).resolve():
                    shutil.copyfile(src / name, Path(output_path) / name)

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> dict:
        config = super().load_config(*args, **kwargs)
        config.setdefault("pool_norm", False)  # saved before the pooler had its LayerNorm
        return config

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any):
        model = super().load(model_name_or_path, subfolder=subfolder, **kwargs)
        folder = Path(model_name_or_path) / subfolder
        if (folder / "tokenizer.json").is_file():
            model.tokenizer_dir = str(folder)
        return model


def _default_dir() -> str:
    from pairsmith.encoders.source import default_model_dir

    return str(default_model_dir())


def _wordpiece_tokenizer(directory: str | None, max_length: int):
    from pairsmith.encoders.tokenize import TextTokenizer

    return TextTokenizer.from_dir(directory or _default_dir(), max_length, uses_type_ids=True)


__all__ = ["BytePooler", "WordEncoder"]
