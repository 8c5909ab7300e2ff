"""BiEncoder: texts -> embeddings, wrapping a sentence-transformers model.

Loading accepts ``default`` (the packaged all-MiniLM-L6-v2), a local model
directory (sentence-transformers layout, or plain Hugging Face files, which
get a pooling head) or a hub name. Encoding tokenises once, batches by
length, reports truncation, and returns :class:`Embeddings` in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pairsmith.encoders.pipeline import Pipeline, PipelineFacts
from pairsmith.encoders.postprocess import finalize_vectors, pair_cosine
from pairsmith.encoders.runtime import Backend, TorchBackend, resolve_device
from pairsmith.encoders.source import ModelSource, fingerprint, resolve_model
from pairsmith.encoders.tokenize import TextTokenizer, Tokenizer
from pairsmith.encoders.types import Embeddings, OutputKind, Pooling
from pairsmith.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)


# Module classes outside sentence-transformers that pairsmith imports without asking: its own
# (installed, never downloaded). Tests add their example package.
TRUSTED_MODULE_PREFIXES: list[str] = ["pairsmith."]


def trusted_custom_modules(path: Path) -> bool:
    """True when ``modules.json`` names custom classes and all of them are trusted (pairsmith's own).

    A module class from elsewhere is refused with a clear error instead of being imported.
    """
    from pairsmith.encoders.source import read_json

    types = [str(m.get("type", "")) for m in read_json(path / "modules.json")]
    custom = [t for t in types if not t.startswith("sentence_transformers.")]
    untrusted = [t for t in custom if not any(t.startswith(p) for p in TRUSTED_MODULE_PREFIXES)]
    if untrusted:
        raise FailedPrecondition(
            f"model {path}: modules.json names classes outside sentence-transformers and pairsmith "
            f"({', '.join(untrusted)}); pairsmith does not import third-party code from a model directory"
        )
    return bool(custom)


def load_sentence_transformer(source: ModelSource, *, pooling: Pooling | None, device: str):
    """A SentenceTransformer for ``source``; ``pooling`` overrides the saved head."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    from pairsmith.encoders.modules import enable_all_layers

    local = {"local_files_only": True} if source.is_local else {}
    if source.is_sentence_transformer:
        local["trust_remote_code"] = trusted_custom_modules(source.path)
    if source.is_sentence_transformer or not source.is_local:
        model = SentenceTransformer(source.load_arg, device=device, **local)
    else:
        body = Transformer(source.load_arg, model_kwargs=local or None)
        head = STPooling(body.get_embedding_dimension(), pooling_mode=(pooling or Pooling.MEAN).st_mode)
        model = SentenceTransformer(modules=[body, head], device=device)
        pooling = None
    if pooling is not None:
        modules = list(model._modules.values())
        idx = [i for i, m in enumerate(modules) if isinstance(m, STPooling)]
        if not idx:
            raise FailedPrecondition(f"model {source.ref}: has no pooling module to set to {pooling.value}")
        old = modules[idx[0]]
        modules[idx[0]] = STPooling(old.get_embedding_dimension(), pooling_mode=pooling.st_mode)
        keep_norm = any(isinstance(m, Normalize) for m in modules)
        modules = [m for m in modules if not isinstance(m, Normalize)] + ([Normalize()] if keep_norm else [])
        model = SentenceTransformer(modules=modules, device=device)
    enable_all_layers(model)  # a pooler reading every hidden layer gets them
    model.eval()
    return model


def st_tokenizer(st_model, max_length: int) -> Tokenizer:
    """The pairsmith tokenizer of a sentence-transformers pipeline's first module.

    A Hugging Face fast tokenizer becomes a :class:`TextTokenizer`; a custom first module (a
    byte-level word embedder, say) hands its own :class:`Tokenizer` through ``pairsmith_tokenizer``.
    """
    first = next(iter(st_model._modules.values()))
    own = getattr(first, "pairsmith_tokenizer", None)
    if callable(own):
        return own(max_length)
    return TextTokenizer(st_model.tokenizer, max_length)


def st_normalizes(st_model) -> bool:
    from sentence_transformers.sentence_transformer.modules import Normalize

    return any(isinstance(m, Normalize) for m in st_model._modules.values())


class BiEncoder(PipelineFacts):
    """Sentence embeddings from a sentence-transformers model (torch) or its ONNX export.

    Example::

        enc = BiEncoder.load("default")
        emb = enc.encode(["a cat sits", "a dog runs"])   # Embeddings, (2, 384)
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        source: ModelSource,
        dim: int,
        st_model=None,
        device: str = "cpu",
        backend: Backend = Backend.TORCH,
    ) -> None:
        self.pipeline = pipeline
        self.st_model = st_model  # the torch model (None with backend=onnx: weights are not loaded twice)
        self.source = source
        self.device = device
        self.backend = backend
        self._dim = int(dim)

    @classmethod
    def from_sentence_transformer(cls, st_model, *, source: ModelSource, device: str = "cpu") -> BiEncoder:
        max_len = int(st_model.max_seq_length or 512)
        tok = st_tokenizer(st_model, max_len)
        be = TorchBackend(
            st_model, device, "sentence_embedding", OutputKind.EMBEDDINGS, normalizes=st_normalizes(st_model)
        )
        return cls(
            Pipeline(tok, be),
            source=source,
            dim=int(st_model.get_embedding_dimension()),
            st_model=st_model,
            device=device,
        )

    @classmethod
    def load(
        cls,
        model: str = "default",
        *,
        pooling: Pooling | str | None = None,
        device: str | None = "auto",
        max_length: int | None = None,
        backend: Backend | str = Backend.AUTO,
        onnx_variant: str | None = None,
        auto_export: bool = True,
        streams: int | None = None,
    ) -> BiEncoder:
        """Load ``default``, a model directory or a hub name.

        ``backend``:

        - ``"auto"`` (default): the measured fastest batch-invariant engine for the machine: torch
          on a CUDA device; on a CPU the engine table's row for its feature set (static int8 on
          onnxruntime on x86). Overriding ``pooling`` runs torch (an export carries its pooling).
          ``engine`` says what was picked and why.
        - ``"torch"``: the sentence-transformers model itself.
        - ``"onnx"``: the model's fp32 ONNX export, unless ``onnx_variant`` names another
          (``int8``, ``int8-static``, ``int8-dynamic``, ``fp16``, or ``auto``: this CPU's int8
          when the export has one).
        - ``"openvino"``: the ONNX export on OpenVINO's CPU plugin (optional package).

        An export the model lacks is made on first use into the model's ``onnx/`` folder or the
        cache, with a progress line (``auto_export=False`` refuses instead). ``streams`` (onnx on
        the CPU): batches run at once on one session, the cores split between them; None = 2
        where there are 2+ cores (measured fastest on 2 cores), 1 = one batch at a time.

        Vectors from torch and fp32 ONNX share a fingerprint (an index built with one is searched
        with the other); a lossy variant (int8, fp16) has its own.
        """
        source = resolve_model(model)
        dev = resolve_device(device)
        pool = Pooling.parse(pooling) if pooling is not None else None
        if max_length is not None and max_length < 2:
            raise InvalidInput(f"max_length: must be >= 2, got {max_length}")
        be = Backend.parse(backend)
        why = ""
        if be is Backend.AUTO and pool is not None:
            be, why = Backend.TORCH, "auto: torch, because pooling is overridden"
        elif be is Backend.AUTO:
            from pairsmith.encoders.engines import choose_auto

            auto = choose_auto(dev, onnx_variant)
            be, onnx_variant, why = auto.backend, auto.variant, auto.why
        if be in (Backend.ONNX, Backend.OPENVINO):
            if pool is not None:
                raise InvalidInput(
                    f"pooling: cannot override pooling with backend={be.value}; export the model with it"
                )
            from pairsmith.encoders.engines import load_export_backend

            onnx = load_export_backend(
                be,
                source,
                kind="bi",
                variant=onnx_variant,
                device=dev,
                auto_export=auto_export,
                streams=streams,
            )
            tok = onnx.tokenizer(max_length)
            enc = cls(Pipeline(tok, onnx.backend), source=source, dim=onnx.dim, device=dev, backend=be)
        else:
            st = load_sentence_transformer(source, pooling=pool, device=dev)
            if max_length is not None:
                st.max_seq_length = int(max_length)
            enc = cls.from_sentence_transformer(st, source=source, device=dev)
        enc.engine_why = why
        return enc

    # -- facts -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors this encoder produces (an index refuses any other).

        torch and ONNX fp32 give the same vectors (parity-tested) and share it;
        a lossy ONNX variant (int8, fp16) gets its own suffix, because its
        vectors differ slightly and would mix badly with full-precision ones.
        """
        base = f"hub:{self.source.hub_id}" if self.source.path is None else fingerprint(self.source.path)
        variant = self.pipeline.backend.variant
        return base if variant == "fp32" else f"{base}+{variant}"

    # -- work --------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        max_tokens: int | None = None,
        normalize: bool = True,
        dimensions: int | None = None,
        show_progress: bool = False,
    ) -> Embeddings:
        """Embed ``texts`` (input order kept).

        ``normalize`` L2-normalises rows; ``dimensions`` keeps the first D components (then
        normalises, when ``normalize``); ``max_tokens`` caps padded tokens per forward.
        """
        if batch_size < 1:
            raise InvalidInput(f"batch_size: must be >= 1, got {batch_size}")
        enc = self.tokenizer.encode(texts)
        with tqdm(total=len(enc), desc="encode", unit="text", disable=not show_progress) as bar:
            out = self.pipeline.forward(enc, max_rows=batch_size, max_tokens=max_tokens, progress=bar.update)
        vecs = out.values if len(enc) else np.zeros((0, self.dim), dtype=np.float32)
        vecs = finalize_vectors(
            vecs,
            dimensions=dimensions,
            normalize=normalize,
            already_normalized=self.pipeline.backend.normalizes,
        )
        return Embeddings(vectors=vecs, token_counts=enc.token_counts, truncated=enc.truncated)

    def similarity(self, a: Sequence[str], b: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Cosine similarity of each pair ``(a[i], b[i])``."""
        if len(a) != len(b):
            raise InvalidInput(f"similarity: {len(a)} left texts vs {len(b)} right texts")
        uniq = list(dict.fromkeys([*a, *b]))
        vecs = self.encode(uniq, batch_size=batch_size, normalize=False).vectors
        pos = {t: i for i, t in enumerate(uniq)}
        ia = np.fromiter((pos[t] for t in a), dtype=np.int64, count=len(a))
        ib = np.fromiter((pos[t] for t in b), dtype=np.int64, count=len(b))
        return pair_cosine(vecs[ia], vecs[ib])

    def save(self, path: str | Path) -> None:
        if self.st_model is None:
            raise FailedPrecondition(
                "save: this encoder runs an ONNX export; save the source model directory instead"
            )
        self.st_model.save(str(path))
