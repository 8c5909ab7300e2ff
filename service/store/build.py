"""Batch index building on one machine: corpus -> BiEncoder -> IndexStore, resumable.

The build streams the corpus in chunks (``chunk_docs`` records; memory is one
chunk of texts and vectors plus, at the end, the FAISS index itself), encodes
each chunk with a token budget per batch, and upserts it with the build's
progress (records consumed) in the same SQLite transaction. The index is in
*bulk* mode meanwhile: vectors go to SQLite only, and FAISS is built once at
the end, trained (IVF/PQ/SQ) on a uniform sample of all stored vectors.

Resuming: rerun the same command. The progress record says how many corpus
records are already stored, so those are skipped without re-encoding; ids
are primary keys, so nothing is duplicated. A resume is refused when the
corpus file (path, size, mtime), the encoder fingerprint or the factory
changed. An interrupted build is servable (partial) by the same format the
server reads; rerunning finishes it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pairsmith.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound
from pairsmith.service.store.corpus import Corpus
from pairsmith.service.store.faiss_index import IndexMetric, new_index, train_requirement
from pairsmith.service.store.index_store import IndexInfo, IndexStore, UpsertItem, validate_name

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "IDMap2,Flat"
BUILD_META_KEY = "build"
MODEL_META_KEY = "model_ref"


@dataclass(frozen=True)
class BuildConfig:
    corpus: Path
    name: str
    factory: str | None = None  # None: "IDMap2,Flat" for a new index, the stored one when resuming
    metric: IndexMetric = IndexMetric.COSINE
    batch_tokens: int = 16_384  # padded tokens per encoder batch
    batch_size: int = 256  # rows per encoder batch (the token budget usually binds first)
    chunk_docs: int = 2048  # records per read/encode/commit step
    model_ref: str = "default"  # what to load the encoder from again (CLI search)
    build_params: dict | None = None  # e.g. {"efConstruction": 80} for HNSW
    store_text: bool = True  # keep each doc's text as payload["text"] (Search's rerank stage reads it)

    def __post_init__(self) -> None:
        validate_name(self.name)
        for field in ("batch_tokens", "batch_size", "chunk_docs"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{field.replace('_', '-')}: must be a positive integer, got {value!r}")
        if self.batch_tokens < 16:
            raise InvalidInput(f"batch-tokens: must be >= 16, got {self.batch_tokens}")


@dataclass(frozen=True)
class BuildReport:
    name: str
    docs_total: int  # records in the corpus
    docs_encoded: int  # encoded by this run
    docs_resumed: int  # already stored by an earlier, interrupted run
    docs_truncated: int  # longer than the encoder's max length (this run)
    encode_seconds: float
    total_seconds: float
    info: IndexInfo

    @property
    def docs_per_s(self) -> float:
        return self.docs_encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["info"]["metric"] = self.info.metric.value
        d["docs_per_s"] = round(self.docs_per_s, 1)
        return d


def build_index(
    store: IndexStore,
    encoder,
    cfg: BuildConfig,
    *,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> BuildReport:
    """Build (or resume building) index ``cfg.name`` from ``cfg.corpus`` with ``encoder``.

    ``encoder`` is a :class:`~pairsmith.encoders.BiEncoder` (``encode``, ``dim``,
    ``fingerprint``, ``model_id``). ``on_chunk(records_done)`` runs after each
    durable chunk (tests use it to interrupt a build).
    """
    t_start = time.perf_counter()
    corpus = Corpus(cfg.corpus)
    stamp = corpus.stamp()
    total = corpus.count()
    state, done = open_build(store, encoder, cfg, stamp, total, corpus.path.name, t_start)
    if done is not None:
        return done
    resumed = int(state["rows_done"])
    if resumed:
        log.info("index %s: resuming after %d of %d records", cfg.name, resumed, total)

    store.begin_bulk(cfg.name)
    encoded = truncated = 0
    encode_s = 0.0
    bar = tqdm(
        total=total,
        initial=resumed,
        unit="doc",
        desc=f"index {cfg.name}",
        disable=not progress,
        smoothing=0.1,
    )
    try:
        for docs in corpus.chunks(cfg.chunk_docs, skip=resumed):
            t0 = time.perf_counter()
            emb = encoder.encode(
                [d.text for d in docs], batch_size=cfg.batch_size, max_tokens=cfg.batch_tokens, normalize=True
            )
            encode_s += time.perf_counter() - t0
            items = [
                UpsertItem(d.id, emb.vectors[i], _payload(d, cfg.store_text)) for i, d in enumerate(docs)
            ]
            state = {**state, "rows_done": docs[-1].row}
            store.upsert(cfg.name, items, meta={BUILD_META_KEY: json.dumps(state)})
            encoded += len(docs)
            truncated += int(emb.truncated.sum())
            bar.update(len(docs))
            if on_chunk is not None:
                on_chunk(int(state["rows_done"]))
    finally:
        bar.close()
    bar_msg = f"index {cfg.name}: building FAISS {state['factory']}"
    if progress:
        print(bar_msg + " ...", flush=True)
    t_faiss = time.perf_counter()
    store.end_bulk(cfg.name)
    log.info("index %s: FAISS build took %.1fs", cfg.name, time.perf_counter() - t_faiss)
    return finish_build(store, cfg, state, total, encoded, resumed, truncated, encode_s, t_start)


def open_build(
    store: IndexStore, encoder, cfg: BuildConfig, stamp: dict, total: int, source: str, t_start: float
) -> tuple[dict, BuildReport | None]:
    """The build's progress state (resumed or new) and, when it is already done, its report.

    The head shared by the local and the Ray engine (same checks, same progress record).
    """
    state = _resume_state(store, encoder, cfg, stamp)
    if state is None:
        state = start_build(store, encoder, cfg, stamp, total, source)
    if not state["done"]:
        return state, None
    log.info("index %s: already built from %s; nothing to do", cfg.name, source)
    resumed = int(state["rows_done"])
    info = store.get(cfg.name)
    return state, BuildReport(cfg.name, total, 0, resumed, 0, 0.0, time.perf_counter() - t_start, info)


def finish_build(
    store: IndexStore,
    cfg: BuildConfig,
    state: dict,
    total: int,
    encoded: int,
    resumed: int,
    truncated: int,
    encode_s: float,
    t_start: float,
) -> BuildReport:
    """Record the build as done (after ``end_bulk``), warn about truncated texts, and report.

    The tail shared by the local and the Ray engine.
    """
    store.upsert(cfg.name, [], meta={BUILD_META_KEY: json.dumps({**state, "done": True})})
    if truncated:
        log.warning(
            "index %s: %d texts were longer than the encoder's max length and were truncated",
            cfg.name,
            truncated,
        )
    info = store.get(cfg.name)
    return BuildReport(
        cfg.name, total, encoded, resumed, truncated, encode_s, time.perf_counter() - t_start, info
    )


def start_build(store: IndexStore, encoder, cfg: BuildConfig, stamp: dict, total: int, source: str) -> dict:
    """Create index ``cfg.name`` for a new build of ``total`` records; returns the build's progress state.

    Shared by the local and the Ray engine (same checks, same progress record).
    """
    factory = cfg.factory or DEFAULT_FACTORY
    probe = new_index(factory, encoder.dim, cfg.metric, cfg.build_params)  # validates the factory string
    need = train_requirement(probe)
    if need and total < need:
        raise InvalidInput(
            f"factory: {factory!r} needs at least {need} vectors to train (recommended {39 * need}); "
            f"the corpus {source} has {total}. Use a smaller nlist / fewer PQ bits, or IDMap2,Flat"
        )
    if need and total < 39 * need:
        log.warning("%s: %d vectors is below FAISS's recommended %d for training", factory, total, 39 * need)
    store.create(
        cfg.name,
        dim=encoder.dim,
        factory=factory,
        metric=cfg.metric,
        encoder_fingerprint=encoder.fingerprint,
        encoder_id=encoder.model_id,
        build_params=cfg.build_params,
    )
    state = {"corpus": stamp, "factory": factory, "rows_done": 0, "done": False}
    store.upsert(cfg.name, [], meta={BUILD_META_KEY: json.dumps(state), MODEL_META_KEY: cfg.model_ref})
    return state


def _resume_state(store: IndexStore, encoder, cfg: BuildConfig, stamp: dict) -> dict | None:
    """The stored progress of an earlier build of ``cfg.name``, or None for a new index."""
    try:
        store.get(cfg.name)
    except NotFound:
        return None
    store.check_encoder(cfg.name, encoder.fingerprint)
    raw = store.read_meta(cfg.name, BUILD_META_KEY)
    if raw is None and store.get(cfg.name).count == 0:
        return {"corpus": stamp, "factory": store.get(cfg.name).factory, "rows_done": 0, "done": False}
    if raw is None:
        raise AlreadyExists(
            f"index {cfg.name!r} exists and was not made by `pairsmith index build`; drop it or pick another name"
        )
    state = json.loads(raw)
    if state["corpus"] != stamp:
        raise FailedPrecondition(
            f"index {cfg.name!r} was built from {state['corpus']['path']} (size {state['corpus']['size']}); "
            f"the corpus now is {stamp['path']} (size {stamp['size']}) or it changed since. Drop the index "
            f"(pairsmith index drop {cfg.name}) to rebuild, or build under another name"
        )
    if cfg.factory is not None and state["factory"] != cfg.factory:
        raise FailedPrecondition(
            f"index {cfg.name!r} is being built with factory {state['factory']!r}, not {cfg.factory!r}; "
            "resume with the same --factory or drop the index"
        )
    return state


def _payload(doc, store_text: bool) -> dict | None:
    """The doc's payload, with its text under "text" (as gRPC Upsert does) unless told not to."""
    if not store_text:
        return doc.payload
    payload = dict(doc.payload or {})
    payload.setdefault("text", doc.text)
    return payload
