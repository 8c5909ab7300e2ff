"""Tiny randomly initialised models (seconds to build, milliseconds to run) for fast tests.

They reuse the default model's WordPiece vocabulary so real sentences tokenise
normally; the weights are random, so only mechanics (shapes, saving, loading,
parity between runtimes) are meaningful, never quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


# One tiny transformer shape for every test backbone (BERT and MPNet), on the WordPiece vocabulary.
_TINY_SHAPE = dict(
    vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


def _tiny_config(**extra):
    from transformers import BertConfig

    return BertConfig(**_TINY_SHAPE, max_position_embeddings=128, **extra)


def _copy_tokenizer(out: Path) -> None:
    from pairsmith.encoders.source import default_model_dir

    src = default_model_dir()
    for name in _TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)


def make_tiny_backbone(out: Path, seed: int = 0, pooler: bool = True, type_vocab_size: int = 2) -> Path:
    """A plain Hugging Face BERT directory (no sentence-transformers files).

    ``pooler=False`` saves no pooler weights, like many sentence-transformers checkpoints;
    ``type_vocab_size=1``: one token type only (like RoBERTa), so type id 1 is out of range.
    """
    import torch
    from transformers import BertModel

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertModel(_tiny_config(type_vocab_size=type_vocab_size), add_pooling_layer=pooler).save_pretrained(out)
    _copy_tokenizer(out)
    return out


def make_tiny_bi_encoder(out: Path, seed: int = 0) -> Path:
    """A sentence-transformers directory: tiny BERT + mean pooling, max_seq_length 64."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    backbone = make_tiny_backbone(out.parent / (out.name + "-backbone"), seed=seed)
    body = Transformer(str(backbone), max_seq_length=64)
    model = SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean")], device="cpu")
    model.save(str(out))
    return out


def make_tiny_cross_encoder(out: Path, seed: int = 0) -> Path:
    """A sentence-transformers CrossEncoder directory on a tiny BERT (one logit)."""
    from sentence_transformers import CrossEncoder

    backbone = make_tiny_backbone(out.parent / (out.name + "-backbone"), seed=seed)
    ce = CrossEncoder(str(backbone), num_labels=1, max_length=64, device="cpu")
    ce.save(str(out))
    return out


def make_tiny_mpnet_bi_encoder(out: Path, seed: int = 0) -> Path:
    """A sentence-transformers directory on a tiny MPNet (no token type embeddings at all, positions
    offset by pad + 1, like all-mpnet-base-v2), with the default model's WordPiece vocabulary."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import MPNetConfig, MPNetModel

    backbone = out.parent / (out.name + "-backbone")
    backbone.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = MPNetConfig(
        **_TINY_SHAPE,
        max_position_embeddings=130,  # MPNet's positions start after the pad id
        pad_token_id=0,  # the WordPiece vocabulary's [PAD]
    )
    MPNetModel(cfg, add_pooling_layer=False).save_pretrained(backbone)
    _copy_tokenizer(backbone)
    body = Transformer(str(backbone), max_seq_length=64)
    model = SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean")], device="cpu")
    model.save(str(out))
    return out
