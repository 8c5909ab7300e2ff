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

from pairsmith.encoders.runtime import Backend, Runner, TorchRunner, resolve_device
from pairsmith.encoders.source import ModelSource, fingerprint, resolve_model
from pairsmith.encoders.tokenize import TextTokenizer
from pairsmith.encoders.types import Embeddings, Pooling
from pairsmith.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)


def load_sentence_transformer(source: ModelSource, *, pooling: Pooling | None, device: str):
    """A SentenceTransformer for ``source``; ``pooling`` overrides the saved head."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    local = {"local_files_only": True} if source.is_local else {}
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
    model.eval()
    return model


class BiEncoder:
    """Sentence embeddings from a sentence-transformers model.

    Example::

        enc = BiEncoder.load("default")
        emb = enc.encode(["a cat sits", "a dog runs"])   # Embeddings, (2, 384)
    """

    def __init__(
        self,
        st_model,
        *,
        source: ModelSource,
        device: str = "cpu",
        runner: Runner | None = None,
        backend: Backend = Backend.TORCH,
    ) -> None:
        self.st_model = st_model
        self.source = source
        self.device = device
        self.backend = backend
        max_len = int(st_model.max_seq_length or 512)
        self.tokenizer = TextTokenizer(st_model.tokenizer, max_len)
        self.runner: Runner = runner or TorchRunner(st_model, device, "sentence_embedding")

    @classmethod
    def load(
        cls,
        model: str = "default",
        *,
        pooling: Pooling | str | None = None,
        device: str | None = "auto",
        max_length: int | None = None,
        backend: Backend | str = Backend.TORCH,
        onnx_variant: str | None = None,
    ) -> BiEncoder:
        source = resolve_model(model)
        dev = resolve_device(device)
        pool = Pooling.parse(pooling) if pooling is not None else None
        st = load_sentence_transformer(source, pooling=pool, device=dev)
        if max_length is not None:
            if max_length < 2:
                raise InvalidInput(f"max_length: must be >= 2, got {max_length}")
            st.max_seq_length = int(max_length)
        be = Backend.parse(backend)
        runner = None
        if be is Backend.ONNX:
            if pool is not None:
                raise InvalidInput(
                    "pooling: cannot override pooling with backend=onnx; export the model with it"
                )
            from pairsmith.encoders.onnx_runtime import load_onnx_runner

            runner = load_onnx_runner(source, kind="bi", variant=onnx_variant, device=dev)
        return cls(st, source=source, device=dev, runner=runner, backend=be)

    # -- facts -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.st_model.get_embedding_dimension())

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def model_id(self) -> str:
        return self.source.display_id

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors this encoder produces (an index refuses any other).

        torch and ONNX fp32 give the same vectors (parity-tested) and share it;
        a lossy ONNX variant (int8, fp16) gets its own suffix, because its
        vectors differ slightly and would mix badly with full-precision ones.
        """
        base = f"hub:{self.source.hub_id}" if self.source.path is None else fingerprint(self.source.path)
        variant = getattr(self.runner, "variant", None)
        return base if variant in (None, "fp32") else f"{base}+{variant}"

    # -- work --------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        max_tokens: int | None = None,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> Embeddings:
        """Embed ``texts`` (input order kept). ``normalize`` L2-normalises rows."""
        enc = self.tokenizer.encode(texts)
        out = np.zeros((len(enc), self.dim), dtype=np.float32)
        bar = tqdm(total=len(enc), desc="encode", unit="text", disable=not show_progress)
        for idx, batch in self.tokenizer.batches(enc, batch_size=batch_size, max_tokens=max_tokens):
            out[idx] = self.runner.run(batch)
            bar.update(len(idx))
        bar.close()
        if normalize and len(out):
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return Embeddings(vectors=out, token_counts=enc.token_counts, truncated=enc.truncated)

    def similarity(self, a: Sequence[str], b: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Cosine similarity of each pair ``(a[i], b[i])``."""
        if len(a) != len(b):
            raise InvalidInput(f"similarity: {len(a)} left texts vs {len(b)} right texts")
        uniq = list(dict.fromkeys([*a, *b]))
        vecs = self.encode(uniq, batch_size=batch_size, normalize=True).vectors
        pos = {t: i for i, t in enumerate(uniq)}
        ia = np.fromiter((pos[t] for t in a), dtype=np.int64, count=len(a))
        ib = np.fromiter((pos[t] for t in b), dtype=np.int64, count=len(b))
        return np.einsum("nd,nd->n", vecs[ia], vecs[ib]).astype(np.float32)

    def save(self, path: str | Path) -> None:
        self.st_model.save(str(path))
