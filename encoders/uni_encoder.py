"""Uni-Encoder (Song et al., Findings of ACL 2023): rank N candidates for one context in one pass.

The context and a chunk of candidates are packed into one row (``uni_tokenize.py``: shared
candidate positions, ``arrow``/``context-blind`` masks as a 4-D additive bias); the backbone
runs once; each candidate's score is the mean of the last layer over its span -> linear -> a
logit (the paper's head, ``head="linear"``, a fresh head: :meth:`UniEncoder.from_backbone`).
:meth:`UniEncoder.from_bi_encoder` starts where a bi-encoder is instead (``head="cosine"``,
``uni_warm.py``): its pooling and cosine, cross-segment attention behind learned gates that
start closed, so its first scores are the bi-encoder's cosines. Scores are raw (logits or
cosines); :func:`pairsmith.encoders.postprocess.softmax` with the config's ``score_scale``
turns a context's scores into probabilities.

Many candidates are split into rows under ``max_row_tokens`` / ``max_groups``. With ``arrow``
the context attends to the candidates of its row, so scores then depend on how the set was
chunked (and on which other candidates are in it); ``context-blind`` scores do not, which makes
it the recommended mode for large sets (and the default).

A saved Uni-Encoder directory holds the backbone (``config.json``, ``model.safetensors``,
tokenizer files), ``uni_head.safetensors`` (the score head, or the gates) and ``uni_encoder.json``
(:class:`UniConfig` + format). ONNX: ``register_exporter("uni")`` exports backbone + head with
the custom inputs (position ids, additive mask, spans), fp32 only; ``backend="onnx"`` or
``"openvino"`` runs it without torch, ``"auto"`` follows the engine table where it can.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pairsmith.atomic import replace_dir
from pairsmith.encoders.onnx_graphs import GraphSpec, register_exporter
from pairsmith.encoders.pipeline import Pipeline
from pairsmith.encoders.runtime import Backend, TorchBackend, resolve_device
from pairsmith.encoders.source import ModelSource, fingerprint, read_json, resolve_model
from pairsmith.encoders.types import OutputKind
from pairsmith.encoders.uni_tokenize import UniConfig, UniMask, UniTokenizer, gather_scores
from pairsmith.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)

UNI_FILE = "uni_encoder.json"
HEAD_FILE = "uni_head.safetensors"
FORMAT = 1
_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "mpnet"}  # positions start at pad_id + 1


def is_uni_dir(path: Path | None) -> bool:
    return path is not None and (path / UNI_FILE).is_file()


def config_for_backbone(hf_config, base: UniConfig | None) -> UniConfig:
    """Fill the backbone-dependent fields (positions, token types) from its Hugging Face config.

    Token types only where the backbone has a type embedding with >= 2 rows (BERT/MiniLM: 2;
    RoBERTa: 1; MPNet: no ``type_vocab_size`` at all).
    """
    d = (base or UniConfig()).to_dict()
    model_type = str(getattr(hf_config, "model_type", ""))
    d["position_offset"] = (int(hf_config.pad_token_id) + 1) if model_type in _OFFSET_MODELS else 0
    d["max_positions"] = int(getattr(hf_config, "max_position_embeddings", 512))
    d["uses_type_ids"] = int(getattr(hf_config, "type_vocab_size", 0) or 0) >= 2
    return UniConfig.from_dict(d)


def _scorer_class():
    import torch

    from pairsmith.encoders.uni_block import block_hidden, block_support, dense_bias

    class UniScorer(torch.nn.Module):
        """Backbone + span-mean + linear head; ``forward(features) -> {"scores": (B, max_groups)}``.

        Columns past a row's last candidate hold the head's bias (no tokens); the backend keeps
        only as many columns as the row has groups.
        """

        def __init__(self, backbone, max_groups: int) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = torch.nn.Linear(int(backbone.config.hidden_size), 1)
            self.max_groups = int(max_groups)
            self.block_unsupported = block_support(backbone)  # None: block attention is exact here

        def hidden(self, features: dict):
            """The backbone's last layer (B, T, H) under the row's positions and 4-D mask, or block
            by block (``uni_block.py``) where the batch names its mask instead (``uni_arrow``)."""
            ids = features["input_ids"]  # (B, T)
            bias = features.get("attention_bias")  # (B, 1, T, T) additive, or None
            if bias is None and features.get("uni_arrow") is not None:
                arrow = bool(features["uni_arrow"].reshape(-1)[0])
                if self.block_unsupported is None:
                    return block_hidden(self.backbone, features, arrow=arrow)  # (B, T, H)
                valid = features["attention_mask"].bool()
                bias = dense_bias(features["spans"], valid, arrow, self.head.weight.dtype)
            mask = bias.to(self.head.weight.dtype) if bias is not None else features["attention_mask"]
            kwargs = {"input_ids": ids, "attention_mask": mask}
            for name in ("token_type_ids", "position_ids"):
                if features.get(name) is not None:
                    kwargs[name] = features[name]
            return self.backbone(**kwargs).last_hidden_state  # (B, T, H)

        def forward(self, features: dict) -> dict:
            ids = features["input_ids"]  # (B, T)
            h = self.hidden(features)  # (B, T, H)
            groups = torch.arange(self.max_groups, device=ids.device)  # (G,)
            onehot = (features["spans"][..., None] == groups).to(h.dtype)  # (B, T, G)
            sums = torch.einsum("btg,bth->bgh", onehot, h)  # (B, G, H)
            means = sums / onehot.sum(1)[..., None].clamp(min=1.0)  # (B, G, H)
            return {"scores": self.head(means)[..., 0]}  # (B, G)

    return UniScorer


def build_scorer(backbone, cfg: UniConfig):
    """The torch module for ``cfg.head``: span mean -> Linear, or the gated cosine (uni_warm.py)."""
    if cfg.head == "cosine":
        from pairsmith.encoders.uni_warm import build_gated

        return build_gated(backbone, cfg.max_groups, cfg.pooling, cfg.gate_init)
    return _scorer_class()(backbone, cfg.max_groups)


def _head_state(scorer) -> dict:
    """The parameters outside the backbone (linear head, or gates), for ``uni_head.safetensors``."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in scorer.state_dict().items()
        if not k.startswith("backbone.")
    }


def _load_backbone(path: str, device: str):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    return model.to(device).eval()


EXPORT_VARIANTS = ("auto", "fp32")  # what onnx_variant may ask of a Uni-Encoder export


def _resolve_auto(device: str, variant: str | None) -> tuple[Backend, str | None]:
    """``backend='auto'``: the engine table's (backend, variant), or torch where the Uni-Encoder
    export cannot have that variant (the table's int8 on AVX2/AVX-512 CPUs)."""
    from pairsmith.encoders.engines import resolve_auto

    be, v = resolve_auto(device, variant)
    if be is Backend.TORCH or (v or "auto").strip().lower() in EXPORT_VARIANTS:
        return be, v
    log.info("backend auto: the engine table picks %s %s; the Uni-Encoder export is fp32 only: torch", be, v)
    return Backend.TORCH, None


def _check_variant(variant: str | None, be: Backend) -> None:
    if (variant or "auto").strip().lower() not in EXPORT_VARIANTS:
        from pairsmith.encoders.onnx_export import FP32_ONLY

        raise InvalidInput(
            f"onnx_variant: {variant!r} with backend {be.value}: {FP32_ONLY['uni']}; "
            "use fp32 (or auto), or backend torch"
        )


class UniEncoder:
    """One context + N candidates -> N scores, one forward pass per chunk of candidates."""

    def __init__(
        self,
        tokenizer: UniTokenizer,
        backend,
        *,
        source: ModelSource,
        model=None,
        device: str = "cpu",
        backend_kind: Backend = Backend.TORCH,
        keepalive: object | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.model = model  # the torch UniScorer (None with backend=onnx)
        self.source = source
        self.device = device
        self.backend_kind = backend_kind
        self._keepalive = keepalive
        # torch on a BERT/RoBERTa backbone: block attention, no (B, 1, T, T) mask (uni_block.py)
        block = model is not None and getattr(model, "block_unsupported", "") is None
        self._pipes = {m: Pipeline(tokenizer.with_mask(m, block=block), backend) for m in UniMask}

    @property
    def config(self) -> UniConfig:
        return self.tokenizer.config

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        model: str,
        *,
        config: UniConfig | None = None,
        device: str | None = "auto",
        seed: int | None = None,
    ) -> UniEncoder:
        """A new Uni-Encoder (fresh score head) on ``model``'s transformer (a bi-encoder dir works)."""
        import torch

        from pairsmith.encoders.cross_encoder import backbone_view

        source = resolve_model(model)
        if source.path is None:
            raise InvalidInput(f"uni-encoder: {source.ref} is not a local directory; download it first")
        view = backbone_view(source)
        arg = view.name if view is not None else str(source.path)
        dev = resolve_device(device)
        if seed is not None:
            torch.manual_seed(seed)
        backbone = _load_backbone(arg, dev)
        cfg = config_for_backbone(backbone.config, config)
        if cfg.head != "linear":
            raise InvalidInput("from_backbone: builds the linear head; use from_bi_encoder for head cosine")
        scorer = build_scorer(backbone, cfg).to(dev)
        log.info("uni-encoder on %s: score head is newly initialised", source.ref)
        tok = UniTokenizer.from_dir(source.path, cfg)
        be = TorchBackend(scorer, dev, "scores", OutputKind.GROUPED_SCORES)
        return cls(tok, be, source=source, model=scorer, device=dev, keepalive=view)

    @classmethod
    def from_bi_encoder(
        cls,
        model: str,
        *,
        mask: str | UniMask = UniMask.CONTEXT_BLIND,
        config: UniConfig | None = None,
        device: str | None = "auto",
        gate_init: float | None = None,
        score_scale: float = 20.0,
    ) -> UniEncoder:
        """A Uni-Encoder whose first scores are ``model``'s own cosines (a sentence-transformers
        bi-encoder: Transformer + Pooling [+ Normalize]).

        Candidates are laid out as the bi-encoder sees them alone (positions from 0, token type
        0), scored by its pooling over the context span and each candidate span, cosine; every
        cross-segment attention edge passes a learned gate initialised shut (``gate_init``,
        default the config's -30). ``config``: packing limits (its head/positions/types fields
        are set here); token limits default to the bi-encoder's ``max_seq_length`` (context,
        capped at 256) and 64 (candidate). Scores are cosines; ``score_scale`` (20) is the softmax
        temperature for probabilities (train with the same one).
        """
        from dataclasses import replace

        from pairsmith.encoders.cross_encoder import backbone_view
        from pairsmith.encoders.uni_warm import bi_encoder_facts

        source = resolve_model(model)
        if source.path is None:
            raise InvalidInput(f"uni-encoder: {source.ref} is not a local directory; download it first")
        facts = bi_encoder_facts(source.path)
        view = backbone_view(source)
        dev = resolve_device(device)
        backbone = _load_backbone(view.name if view is not None else str(source.path), dev)
        msl = facts["max_seq_length"] or int(getattr(backbone.config, "max_position_embeddings", 512))
        base = config or UniConfig(
            max_context_tokens=min(256, msl),
            max_candidate_tokens=min(64, msl),
            max_row_tokens=min(256, msl) + 64 * 16,
            max_groups=64,
        )
        base = replace(
            base,
            mask=UniMask.parse(mask).value,
            head="cosine",
            pooling=facts["pooling"],
            candidate_positions="from-start",
            candidate_type=0,
            score_scale=float(score_scale),
            gate_init=base.gate_init if gate_init is None else float(gate_init),
        )
        cfg = config_for_backbone(backbone.config, base)
        scorer = build_scorer(backbone, cfg).to(dev).eval()
        log.info(
            "uni-encoder from bi-encoder %s: %s pooling, cosine, gates at %g",
            source.ref,
            cfg.pooling,
            cfg.gate_init,
        )
        tok = UniTokenizer.from_dir(source.path, cfg)
        be = TorchBackend(scorer, dev, "scores", OutputKind.GROUPED_SCORES)
        return cls(tok, be, source=source, model=scorer, device=dev, keepalive=view)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        *,
        device: str | None = "auto",
        backend: Backend | str = Backend.AUTO,
        onnx_variant: str | None = None,
        auto_export: bool = True,
    ) -> UniEncoder:
        """A saved Uni-Encoder directory (``pairsmith train uni-encoder --out DIR``: DIR or DIR/model).

        ``backend``: ``torch``; ``onnx`` or ``openvino`` (the fp32 ONNX export, made on first use
        with ``auto_export``; the Uni-Encoder export has no int8/fp16 variants); ``auto`` (default) as for
        BiEncoder/CrossEncoder (the engine table's choice for this CPU, torch on a GPU), except that
        a choice of a variant the Uni-Encoder export cannot have (int8 on most CPUs) runs torch.
        """
        path = Path(model)
        if (path / "model" / UNI_FILE).is_file():
            path = path / "model"
        source = resolve_model(str(path))
        if not is_uni_dir(source.path):
            raise InvalidInput(
                f"uni-encoder: {source.ref} has no {UNI_FILE}; not a Uni-Encoder "
                "(train one: pairsmith train uni-encoder, or use UniEncoder.from_backbone)"
            )
        meta = read_json(source.path / UNI_FILE)  # type: ignore[operator]
        if meta.get("format") != FORMAT:
            raise FailedPrecondition(f"uni-encoder: {source.ref}: unknown format {meta.get('format')!r}")
        cfg = UniConfig.from_dict(meta["config"])
        tok = UniTokenizer.from_dir(source.path, cfg)  # type: ignore[arg-type]
        dev = resolve_device(device)
        be_kind = Backend.parse(backend)
        if be_kind is Backend.AUTO:
            be_kind, onnx_variant = _resolve_auto(dev, onnx_variant)
        if be_kind in (Backend.ONNX, Backend.OPENVINO):
            from pairsmith.encoders.engines import load_export_backend

            _check_variant(onnx_variant, be_kind)
            onnx = load_export_backend(
                be_kind, source, kind="uni", variant=onnx_variant, device=dev, auto_export=auto_export
            )
            return cls(tok, onnx.backend, source=source, device=dev, backend_kind=be_kind)
        from safetensors.torch import load_file

        scorer = build_scorer(_load_backbone(str(source.path), dev), cfg)
        state = load_file(str(source.path / HEAD_FILE))  # type: ignore[operator]
        missing, unexpected = scorer.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise FailedPrecondition(
                f"uni-encoder: {source.ref}/{HEAD_FILE}: missing {missing}, unexpected {unexpected} "
                f"for head {cfg.head!r}"
            )
        scorer = scorer.to(dev).eval()
        be = TorchBackend(scorer, dev, "scores", OutputKind.GROUPED_SCORES)
        return cls(tok, be, source=source, model=scorer, device=dev)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Backbone, tokenizer, head and config into ``path`` (written to a temp dir, then renamed)."""
        if self.model is None:
            raise FailedPrecondition("save: this Uni-Encoder runs an ONNX export; save the source directory")
        from safetensors.torch import save_file

        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            self.model.backbone.save_pretrained(str(tmp))
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
                src = self.source.path / name  # type: ignore[operator]
                if src.is_file():
                    shutil.copy(src, tmp / name)
            save_file(_head_state(self.model), str(tmp / HEAD_FILE))
            meta = {"format": FORMAT, "kind": "uni-encoder", "config": self.config.to_dict()}
            (tmp / UNI_FILE).write_text(json.dumps(meta, indent=2))
            replace_dir(tmp, dest)  # swaps with an existing dest: never a moment without a model
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- scoring ---------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.source.display_id

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.source.path) if self.source.path is not None else f"hub:{self.source.hub_id}"

    def rank(
        self,
        context: str | Sequence[str],
        candidates: Sequence[str],
        *,
        mask: str | UniMask | None = None,
        max_row_tokens: int | None = None,
        truncate: bool | None = None,
    ) -> np.ndarray:
        """One logit per candidate, in input order. ``context``: a string or a list of turns.

        ``truncate=False``: a context or candidate over its token limit raises InvalidInput.
        """
        return self.rank_many(
            [(context, candidates)], mask=mask, max_row_tokens=max_row_tokens, truncate=truncate
        )[0]

    def rank_many(
        self,
        items: Sequence[tuple[str | Sequence[str], Sequence[str]]],
        *,
        mask: str | UniMask | None = None,
        batch_size: int = 8,
        max_row_tokens: int | None = None,
        max_batch_tokens: int | None = 8192,
        show_progress: bool = False,
        truncate: bool | None = None,
    ) -> list[np.ndarray]:
        """Several (context, candidates) items; rows of different items are batched together."""
        if batch_size < 1:
            raise InvalidInput(f"batch_size: must be >= 1, got {batch_size}")
        if max_row_tokens is not None and max_row_tokens < 3:
            raise InvalidInput(f"max_row_tokens: must be >= 3, got {max_row_tokens}")
        m = UniMask.parse(mask if mask is not None else self.config.mask)
        enc, chunks, _ = self.tokenizer.encode_groups(
            list(items), max_row_tokens=max_row_tokens, truncate=truncate
        )
        pipe = self._pipes[m]
        # (B, T, T) masks grow with the square of the row length: cap a batch's padded tokens too.
        with tqdm(total=len(enc), desc="rank", unit="row", disable=not show_progress) as bar:
            out = pipe.forward(enc, max_rows=batch_size, max_tokens=max_batch_tokens, progress=bar.update)
        return gather_scores(chunks, out.groups(), [len(c) for _, c in items])

    def pipeline(self, mask: str | UniMask | None = None) -> Pipeline:
        """The tokenizer -> backend pipeline for ``mask`` (default: the config's), as the server's
        batcher runs it: ``tokenizer.encode_groups`` rows in, one score array per row out."""
        return self._pipes[UniMask.parse(mask if mask is not None else self.config.mask)]

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Softmax over one context's candidate scores at this model's ``score_scale``."""
        from pairsmith.encoders.postprocess import softmax

        return softmax(scores, self.config.score_scale)


# -- ONNX ----------------------------------------------------------------------------------------


@register_exporter("uni")
def _build_uni(source: ModelSource) -> GraphSpec:
    import torch

    from pairsmith.encoders.onnx_graphs import _eager, _heads

    uni = UniEncoder.load(str(source.path), device="cpu", backend="torch")
    scorer = uni.model
    _eager(scorer.backbone)
    cfg = uni.config
    names = ["input_ids", "attention_mask"]
    if cfg.uses_type_ids:
        names.append("token_type_ids")
    names += ["position_ids", "attention_bias", "spans"]

    class UniGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = scorer

        def forward(self, *inputs):
            return (self.m(dict(zip(names, inputs, strict=True)))["scores"],)  # (B, G)

    tok = uni.tokenizer.with_mask(UniMask.ARROW)

    def feeds() -> dict[str, np.ndarray]:
        items = [
            (
                ["Hello, how are you?", "Fine, thanks. And you?"],
                ["Great!", "I am a teapot.", "Not bad at all."],
            ),
            ("Any plans for the weekend?", ["Hiking.", "No"]),
        ]
        enc, _, _ = tok.encode_groups(items)
        return {n: v for n, v in tok.pad(enc.ids).feeds().items() if n in names}

    heads, hidden = _heads(scorer.backbone.config)
    return GraphSpec(
        kind="uni",
        module=UniGraph().eval(),
        input_names=tuple(names),
        output_names=("scores",),
        output_axes={"scores": {0: "batch"}},
        primary_output="scores",
        model_type="custom",  # the additive-mask input does not match the BERT fusion patterns
        num_heads=heads,
        hidden_size=hidden,
        max_length=cfg.max_row_tokens,
        tokenizer=tok,
        details={"max_groups": cfg.max_groups, "uni": cfg.to_dict()},
        example_feeds=feeds,
        input_axes={"attention_bias": {0: "batch", 2: "sequence", 3: "sequence"}},
    )
