"""CrossEncoder: pairs -> scores, wrapping sentence-transformers' CrossEncoder.

``CrossEncoder.load`` takes a trained cross-encoder directory or hub name.
``CrossEncoder.from_backbone`` starts a new one (fresh one-logit head) from
any transformer, including a sentence-transformers bi-encoder directory such
as the default model: only its transformer files are used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pairsmith.encoders.cls_scorer import parse_last_layer, scores_module
from pairsmith.encoders.pipeline import Pipeline, PipelineFacts
from pairsmith.encoders.postprocess import sigmoid
from pairsmith.encoders.runtime import Backend, TorchBackend, resolve_device
from pairsmith.encoders.source import ModelSource, fingerprint, read_json, resolve_model
from pairsmith.encoders.tokenize import TextTokenizer, one_token_type
from pairsmith.encoders.types import Activation, OutputKind, Scores
from pairsmith.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)

# sentence-transformers bi-encoder files that must not be seen by a cross-encoder loader.
_BI_ONLY = {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md"}


def is_bi_encoder_dir(source: ModelSource) -> bool:
    if not source.is_sentence_transformer:
        return False
    modules = read_json(source.path / "modules.json")  # type: ignore[operator]
    return any("Pooling" in m.get("type", "") for m in modules)


def backbone_view(source: ModelSource) -> tempfile.TemporaryDirectory | None:
    """A temp dir of symlinks to a bi-encoder's transformer files (no ST pipeline files)."""
    if not is_bi_encoder_dir(source):
        return None
    tmp = tempfile.TemporaryDirectory(prefix="pairsmith-backbone-")
    for p in source.path.iterdir():  # type: ignore[union-attr]
        if p.is_file() and p.name not in _BI_ONLY:
            os.symlink(p, Path(tmp.name) / p.name)
    return tmp


def checkpoint_keys(directory: Path) -> set[str] | None:
    """Parameter names stored in a transformer checkpoint directory (None: unknown format)."""
    files = sorted(directory.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        keys: set[str] = set()
        for f in files:
            with safe_open(str(f), "pt") as fh:
                keys.update(fh.keys())
        return keys
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        import torch

        return set(torch.load(binary, map_location="cpu", weights_only=True))
    return None


def init_missing_pooler(hf_model, directory: Path | None) -> bool:
    """Identity-initialise a BERT-style pooler the checkpoint does not carry.

    Sentence-transformers bi-encoders are often saved without the pooler
    (e.g. paraphrase-MiniLM-L3-v2); transformers then draws it at random and
    the classification head reads tanh(random projection of [CLS]), which a
    short fit cannot recover from. With W = I, b = 0 the head reads tanh([CLS]).
    Returns True when the pooler was re-initialised.
    """
    import torch

    pooler = getattr(getattr(hf_model, "base_model", hf_model), "pooler", None)
    dense = getattr(pooler, "dense", None)
    if directory is None or not isinstance(dense, torch.nn.Linear) or dense.in_features != dense.out_features:
        return False
    keys = checkpoint_keys(directory)
    if keys is None or any(".pooler." in f".{k}" for k in keys):
        return False
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.in_features, dtype=dense.weight.dtype))
        dense.bias.zero_()
    return True


class CrossEncoder(PipelineFacts):
    """Scores sentence pairs jointly (one forward pass per pair)."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        source: ModelSource,
        st_model=None,
        device: str = "cpu",
        backend: Backend = Backend.TORCH,
        keepalive: object | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.st_model = st_model  # None with backend=onnx
        self.source = source
        self.device = device
        self.backend = backend
        self._keepalive = keepalive  # temp backbone view, if any

    @classmethod
    def from_st(
        cls,
        st_model,
        *,
        source: ModelSource,
        device: str = "cpu",
        keepalive=None,
        last_layer: str = "cls",
    ) -> CrossEncoder:
        max_len = int(getattr(st_model, "max_length", None) or 512)
        tok = TextTokenizer(st_model.tokenizer, max_len)
        if tok.uses_type_ids and one_token_type(getattr(getattr(st_model, "model", None), "config", None)):
            # A one-type backbone (RoBERTa-like) under a tokenizer that emits type ids: the second text's
            # id 1 would index past the table; without them the model uses its only type, as trained.
            tok.uses_type_ids = False
        be = TorchBackend(scores_module(st_model, last_layer=last_layer), device, "scores", OutputKind.SCORES)
        return cls(Pipeline(tok, be), source=source, st_model=st_model, device=device, keepalive=keepalive)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str | None = "auto",
        max_length: int | None = None,
        backend: Backend | str = Backend.AUTO,
        onnx_variant: str | None = None,
        auto_export: bool = True,
        streams: int | None = None,
        last_layer: str | None = None,
    ) -> CrossEncoder:
        """Load a trained cross-encoder. A bi-encoder directory is refused: use from_backbone.

        ``backend`` (default ``auto``: the measured fastest engine for the machine), ``onnx_variant``
        (``onnx`` alone means fp32), ``auto_export`` and ``streams`` as in :meth:`BiEncoder.load`.

        ``last_layer``: ``"cls"`` computes the last transformer layer for the [CLS] row only where
        the model qualifies (plain BERT with a pooler; equal to the full forward to float rounding,
        checked at load, ~14% fewer FLOPs on a 6-layer MiniLM); ``"full"`` runs every position (for
        A/B comparisons). None (default): ``"cls"`` on torch and for an export made on first use;
        an existing ONNX export runs as it was made (``pairsmith export onnx --last-layer``), and one
        made with the other choice than a ``last_layer`` named here is refused.
        """
        source = resolve_model(model)
        if is_bi_encoder_dir(source):
            raise InvalidInput(
                f"cross-encoder: {source.ref} is a bi-encoder (sentence-transformers pooling model); "
                "train a cross-encoder from it first (pairsmith train cross-encoder) or use CrossEncoder.from_backbone"
            )
        dev = resolve_device(device)
        last_layer = parse_last_layer(last_layer) if last_layer is not None else None
        be = Backend.parse(backend)
        why = ""
        if be is Backend.AUTO:
            from pairsmith.encoders.engines import choose_auto

            auto = choose_auto(dev, onnx_variant)
            be, onnx_variant, why = auto.backend, auto.variant, auto.why
        if be in (Backend.ONNX, Backend.OPENVINO):
            from pairsmith.encoders.engines import load_export_backend

            onnx = load_export_backend(
                be,
                source,
                kind="cross",
                variant=onnx_variant,
                device=dev,
                auto_export=auto_export,
                streams=streams,
                last_layer=last_layer,
            )
            enc = cls(
                Pipeline(onnx.tokenizer(max_length), onnx.backend), source=source, device=dev, backend=be
            )
        else:
            from sentence_transformers import CrossEncoder as STCrossEncoder

            local = {"local_files_only": True} if source.is_local else {}
            st = STCrossEncoder(source.load_arg, device=dev, max_length=max_length, **local)
            enc = cls.from_st(st, source=source, device=dev, last_layer=last_layer or "cls")
        enc.engine_why = why
        return enc

    @classmethod
    def from_backbone(
        cls,
        model: str,
        *,
        device: str | None = "auto",
        max_length: int = 128,
        seed: int | None = None,
        last_layer: str = "cls",
    ) -> CrossEncoder:
        """A new cross-encoder (one logit, untrained head) on ``model``'s transformer weights (torch).

        ``last_layer`` as in :meth:`load`.
        """
        from sentence_transformers import CrossEncoder as STCrossEncoder

        source = resolve_model(model)
        view = backbone_view(source)
        arg = view.name if view is not None else source.load_arg
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        dev = resolve_device(device)
        local = {"local_files_only": True} if source.is_local else {}
        st = STCrossEncoder(arg, num_labels=1, device=dev, max_length=max_length, **local)
        keys = checkpoint_keys(Path(arg)) if view is None and Path(arg).is_dir() else None
        if keys is not None and any(k.startswith("classifier.") for k in keys):  # a trained cross-encoder
            log.info("cross-encoder on %s: starts from the checkpoint's classification head", source.ref)
        else:
            log.info("cross-encoder on %s: classification head is newly initialised", source.ref)
        if init_missing_pooler(st.model, Path(arg) if Path(arg).is_dir() else None):
            log.warning(
                "cross-encoder on %s: the checkpoint has no pooler weights; pooler initialised to identity "
                "(the head reads tanh([CLS]))",
                source.ref,
            )
        return cls.from_st(st, source=source, device=dev, keepalive=view, last_layer=last_layer)

    @property
    def fingerprint(self) -> str:
        if self.source.path is None:
            return f"hub:{self.source.hub_id}"
        base = fingerprint(self.source.path)
        variant = self.pipeline.backend.variant
        return base if variant == "fp32" else f"{base}+{variant}"

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        activation: Activation = Activation.SIGMOID,
        symmetric: bool = False,
        batch_size: int = 32,
        max_tokens: int | None = None,
        show_progress: bool = False,
    ) -> Scores:
        """One score per pair. ``symmetric`` averages the scores of (a, b) and (b, a)."""
        pairs = list(pairs)
        logits, counts, trunc = self._logits(pairs, batch_size, max_tokens, show_progress)
        vals = sigmoid(logits) if activation is Activation.SIGMOID else logits
        if symmetric:
            rl, rc, rt = self._logits([(b, a) for a, b in pairs], batch_size, max_tokens, show_progress)
            rvals = sigmoid(rl) if activation is Activation.SIGMOID else rl
            vals = (vals + rvals) / 2.0
            counts = counts + rc
            trunc = trunc | rt
        return Scores(values=np.asarray(vals, dtype=np.float32), token_counts=counts, truncated=trunc)

    def _logits(self, pairs, batch_size, max_tokens, show_progress):
        if batch_size < 1:
            raise InvalidInput(f"batch_size: must be >= 1, got {batch_size}")
        enc = self.tokenizer.encode_pairs(pairs)
        with tqdm(total=len(enc), desc="score", unit="pair", disable=not show_progress) as bar:
            out = self.pipeline.forward(enc, max_rows=batch_size, max_tokens=max_tokens, progress=bar.update)
        return out.values.astype(np.float32), enc.token_counts, enc.truncated

    def save(self, path: str | Path) -> None:
        if self.st_model is None:
            raise FailedPrecondition(
                "save: this cross-encoder runs an ONNX export; save the source directory"
            )
        self.st_model.save(str(path))
