"""The ONNX graph contract, the exporter registry, and the built-in graph builders.

A builder turns a model directory into a torch module with a fixed contract:
``forward(input_ids, attention_mask[, token_type_ids])`` returns a tuple in
``GraphSpec.output_names`` order, and ``primary_output`` names what the runtime
returns. Built in: ``bi`` (backbone + pooling + optional Normalize, output
``sentence_embedding`` (B, D) and ``last_hidden_state`` (B, T, H)) and
``cross`` (backbone + score head, output ``logits`` (B, L) and ``scores``).
A later encoder kind (Uni-Encoder, multi-layer pooling, Byte2Word) registers
its own builder with :func:`register_exporter`; export, checks, variants and
the manifest (``onnx_export.py``) are shared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pairsmith.encoders.cls_scorer import cls_scorer_or_none
from pairsmith.encoders.source import ModelSource, read_json
from pairsmith.encoders.tokenize import one_token_type
from pairsmith.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)


# -- the graph contract ---------------------------------------------------------------------------


@dataclass
class GraphSpec:
    """What a builder hands the exporter: a torch module and its I/O contract.

    ``module.forward(input_ids, attention_mask[, token_type_ids])`` returns a
    tuple in ``output_names`` order; ``primary_output`` is what the runtime
    returns (sentence embedding or logit).
    """

    kind: str
    module: object  # torch.nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    output_axes: dict[str, dict[int, str]]
    primary_output: str
    model_type: str  # Hugging Face config.model_type, for the transformer optimizer
    num_heads: int
    hidden_size: int
    max_length: int
    tokenizer: object  # a Hugging Face fast tokenizer (for the parity check)
    details: dict = field(default_factory=dict)  # recorded in the manifest (pooling, head, ...)
    save: Callable[[str], None] | None = None  # writes the model directory (used for hub models)
    # Inputs for tracing and the parity check, by input name; a kind whose inputs are not plain
    # tokenizer output (Uni-Encoder masks, packed bytes) provides them. None: built from the tokenizer.
    example_feeds: Callable[[], dict[str, np.ndarray]] | None = None
    input_axes: dict[str, dict[int, str]] | None = None  # None: (batch, sequence) on every input

    def feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Graph inputs for ``texts`` (pairs of ``texts`` and its reverse for a cross-encoder)."""
        if self.example_feeds is not None:
            return self.example_feeds()
        tok = self.tokenizer
        if hasattr(tok, "encode_pairs"):  # a pairsmith Tokenizer (protocol), not a transformers one
            enc = (
                tok.encode_pairs(list(zip(texts, texts[::-1], strict=True)))
                if self.kind == "cross"
                else tok.encode(texts)
            )
            have = tok.pad(enc.ids, enc.type_ids).feeds()
        elif self.kind == "cross":
            have = dict(tok(texts, texts[::-1], padding=True, truncation=True, max_length=self.max_length))
        else:
            have = dict(tok(texts, padding=True, truncation=True, max_length=self.max_length))
        return {n: np.asarray(have[n]) for n in self.input_names}


GraphBuilder = Callable[[ModelSource], GraphSpec]
_EXPORTERS: dict[str, GraphBuilder] = {}


def register_exporter(kind: str) -> Callable[[GraphBuilder], GraphBuilder]:
    """Register a graph builder for an encoder kind (``bi``, ``cross``, later ``uni`` ...)."""

    def deco(fn: GraphBuilder) -> GraphBuilder:
        _EXPORTERS[kind] = fn
        return fn

    return deco


def exporter_kinds() -> tuple[str, ...]:
    return tuple(_EXPORTERS)


def _eager(hf_model) -> None:
    """Eager attention traces to plain MatMul/Softmax, the pattern onnxruntime's optimizer fuses."""
    try:
        hf_model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        hf_model.config._attn_implementation = "eager"


def _heads(config) -> tuple[int, int]:
    return int(getattr(config, "num_attention_heads", 0) or 0), int(getattr(config, "hidden_size", 0) or 0)


def _input_names(tokenizer) -> tuple[str, ...]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return tuple(names)


@register_exporter("bi")
def _build_bi(source: ModelSource) -> GraphSpec:
    import torch
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    from pairsmith.encoders.bi_encoder import load_sentence_transformer, st_tokenizer

    st = load_sentence_transformer(source, pooling=None, device="cpu")
    modules = list(st._modules.values())
    body = modules[0]
    custom_tok = callable(getattr(body, "pairsmith_tokenizer", None))
    if not isinstance(body, Transformer) and not custom_tok:
        raise FailedPrecondition(
            f"export: {source.ref}: first module is {type(body).__name__}, neither a Transformer nor a "
            "module with its own pairsmith_tokenizer"
        )
    hf = getattr(body, "auto_model", None)
    if hf is not None:
        _eager(hf)
    tok = st_tokenizer(st, int(st.max_seq_length or 512)) if custom_tok else st.tokenizer
    names = tuple(getattr(body, "onnx_input_names", None) or _input_names(tok))

    class BiGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *inputs):
            out = self.st(dict(zip(names, inputs, strict=True)))
            return out["sentence_embedding"], out["token_embeddings"]  # (B, D), (B, T, H)

    pools = [m for m in modules if isinstance(m, STPooling)]
    details = {
        "pooling": pools[0].get_config_dict() if pools else None,
        "normalize": any(isinstance(m, Normalize) for m in modules),
        "modules": [type(m).__name__ for m in modules],
        "dim": int(st.get_embedding_dimension()),
    }
    heads, hidden = _heads(hf.config) if hf is not None else (0, 0)
    return GraphSpec(
        kind="bi",
        input_axes=getattr(body, "onnx_input_axes", None),
        module=BiGraph().eval(),
        input_names=names,
        output_names=("sentence_embedding", "last_hidden_state"),
        output_axes={"sentence_embedding": {0: "batch"}, "last_hidden_state": {0: "batch", 1: "sequence"}},
        primary_output="sentence_embedding",
        model_type=str(hf.config.model_type) if hf is not None else "custom",
        num_heads=heads,
        hidden_size=hidden,
        max_length=int(st.max_seq_length or 512),
        tokenizer=tok,
        details=details,
        save=st.save,
    )


@register_exporter("cross")
def _build_cross(source: ModelSource, *, last_layer: str = "cls") -> GraphSpec:
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from pairsmith.encoders.cross_encoder import is_bi_encoder_dir

    if is_bi_encoder_dir(source):
        raise InvalidInput(
            f"export: {source.ref} is a bi-encoder; use --kind bi (or train a cross-encoder first)"
        )
    local = {"local_files_only": True} if source.is_local else {}
    ce = STCrossEncoder(source.load_arg, device="cpu", **local)
    hf = ce[0].auto_model if hasattr(ce, "__getitem__") else ce.model
    _eager(hf)
    names = _input_names(ce.tokenizer)
    if one_token_type(hf.config):  # no type ids input
        names = tuple(n for n in names if n != "token_type_ids")  # (as CrossEncoder.from_st does)
    n_labels = int(getattr(hf.config, "num_labels", 1))
    # The last layer for [CLS] only where the model allows it (exact; encoders/cls_scorer.py).
    cls_only = cls_scorer_or_none(hf, ce.tokenizer, last_layer=last_layer)

    class CrossGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ce = ce
            self.cls_only = cls_only

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            if self.cls_only is not None:
                logits = self.cls_only(input_ids, attention_mask, token_type_ids)
            else:
                feats = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    feats["token_type_ids"] = token_type_ids
                logits = self.ce(feats)["scores"]  # (B, L)
            scores = torch.sigmoid(logits) if n_labels == 1 else torch.softmax(logits, dim=-1)
            return logits, scores

    heads, hidden = _heads(hf.config)
    return GraphSpec(
        kind="cross",
        module=CrossGraph().eval(),
        input_names=names,
        output_names=("logits", "scores"),
        output_axes={"logits": {0: "batch"}, "scores": {0: "batch"}},
        primary_output="logits",
        model_type=str(hf.config.model_type),
        num_heads=heads,
        hidden_size=hidden,
        max_length=int(getattr(ce, "max_length", None) or 512),
        tokenizer=ce.tokenizer,
        details={
            "num_labels": n_labels,
            "activation": "sigmoid" if n_labels == 1 else "softmax",
            "last_layer": "cls-only" if cls_only is not None else "full",
        },
        save=ce.save,
    )


def detect_kind(source: ModelSource) -> str:
    """``bi`` for a sentence-transformers pooling model or plain backbone, ``cross`` for a classifier."""
    from pairsmith.encoders.cross_encoder import is_bi_encoder_dir

    if source.path is None or is_bi_encoder_dir(source):
        return "bi"
    if (source.path / "uni_encoder.json").is_file():  # a Uni-Encoder (encoders/uni_encoder.py)
        return "uni"
    cfg = read_json(source.path / "config.json") if (source.path / "config.json").exists() else {}
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "cross"
    return "bi"
