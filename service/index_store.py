"""Named vector indexes on disk: FAISS for search, SQLite for ids, payloads and durability.

Interface (shared with the gRPC server; keep it stable)::

    store = IndexStore(root)                       # root: PAIRSMITH_HOME or the user data dir
    store.create(name, dim=384, factory="IDMap2,Flat", metric=Metric.COSINE,
                 encoder_fingerprint=enc.fingerprint, encoder_id=enc.model_id) -> IndexInfo
    store.get(name) / store.list() / store.drop(name)
    store.upsert(name, [UpsertItem(id, vector, payload)]) -> int   # durable when it returns
    store.delete(name, ids) -> int                                  # number actually deleted
    store.search(name, queries (Q, dim) float32, k) -> list[list[Hit]]
    store.check_encoder(name, fingerprint)                          # FailedPrecondition on mismatch
    store.close()

All methods block (call them from a thread pool under asyncio). ``upsert``
holds the index's writer lock while it iterates ``items``: pass a
materialised batch, not a generator that waits on a network stream.

Extensions: ``create(..., search_params={"nprobe": 64}, train_size=N)``, ``load``
(open and replay now, for start-up),
``upsert(..., meta={...})`` (caller metadata committed with the vectors),
``read_meta``, ``compact`` (merge, remove, train, snapshot now),
``begin_bulk``/``end_bulk`` (batch builds: vectors go to SQLite only, FAISS
is built once at the end, trained on a sample of everything).

Layout: ``root/indexes/<name>/`` holds ``store.sqlite`` (+ WAL), ``manifest.json``
(factory, dim, metric, count, encoder fingerprint/id, search params, the
snapshot file with its sha256 and highest iid), ``snapshot-NNNNNN.faiss`` and
``LOCK``. A snapshot whose checksum fails is ignored and rebuilt from SQLite.

Semantics:

- Errors only from :mod:`pairsmith.errors`: NotFound (unknown index),
  AlreadyExists, InvalidInput (naming the field and the limit),
  FailedPrecondition (encoder mismatch, untrainable, index locked by another process).
- Scores: higher is better for every metric. COSINE and INNER_PRODUCT give the
  inner product (COSINE on L2-normalised vectors and queries); L2 gives the
  *negative* squared Euclidean distance.
- Durability: ``upsert``/``delete`` commit to SQLite (WAL, fsync) before
  returning and before touching FAISS; on open, vectors above the snapshot's
  highest iid are replayed and deleted iids filtered, so an acknowledged write
  survives ``kill -9``. FAISS snapshots and the manifest are written temp +
  fsync + rename on close, after training/rebuilds, and after a compaction
  when the last snapshot is older than ``checkpoint_interval_s``.
- Concurrency: one writer per index (a lock); readers search an immutable
  :class:`Snapshot` (base FAISS index + deleted ids + exact delta of recent
  vectors) that the writer replaces by one attribute assignment. Compaction
  clones the base, applies the delta and deletes, and swaps. One process per
  index (an flock on ``LOCK``); ``get``/``list`` read SQLite and need no lock.
- Training (IVF, PQ, SQ): vectors wait in SQLite and the exact delta (searched
  brute force, so results stay exact) until ``train_size`` vectors exist
  (default 39 x the FAISS minimum), then the index trains on a uniform sample
  of at most ``train_sample_max`` stored vectors.
- Deletes work on every index type. Flat, IVF, PQ and SQ remove physically at
  compaction; HNSW (and Refine) cannot ``remove_ids``, so deleted ids are
  filtered at search and the index is rebuilt from SQLite vectors once they
  exceed ``rebuild_dead_fraction`` of it (``IndexInfo.needs_rebuild_on_delete``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from pairsmith.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound
from pairsmith.service.index_db import IndexDb
from pairsmith.service.index_faiss import (
    Metric,
    Snapshot,
    apply_search_params,
    can_remove,
    default_search_params,
    fsync_dir,
    ivf_of,
    new_index,
    sha256_file,
    train_requirement,
    write_bytes_atomic,
    write_index_atomic,
)

try:  # POSIX advisory lock: one process per index
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["Hit", "IndexInfo", "IndexStore", "Metric", "StoreConfig", "UpsertItem", "default_root"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_DIM = 65_536
MAX_K = 10_000
MAX_QUERIES = 10_000
MAX_ID_CHARS = 512
MAX_PAYLOAD_BYTES = 65_536
MAX_FACTORY_CHARS = 200
FORMAT_VERSION = "1"
_SEARCH_PARAM_KEYS = ("nprobe", "efSearch")


def default_root() -> Path:
    """``$PAIRSMITH_HOME``, else the platform's user data directory + ``pairsmith``."""
    env = os.environ.get("PAIRSMITH_HOME")
    if env:
        return Path(env).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "pairsmith"


@dataclass(frozen=True)
class IndexInfo:
    name: str
    dim: int
    factory: str
    metric: Metric
    count: int  # live vectors (committed)
    encoder_fingerprint: str
    encoder_id: str
    size_bytes: int  # everything in the index directory
    created_at: str  # ISO 8601 UTC
    updated_at: str  # ISO 8601 UTC, last committed write
    needs_rebuild_on_delete: bool  # True: deletes are filtered until a rebuild (HNSW)
    trained: bool = True  # False: waiting for train_size vectors, searched exactly meanwhile
    search_params: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # higher is better (L2: negative squared distance)
    payload: dict | None


@dataclass(frozen=True)
class UpsertItem:
    id: str
    vector: np.ndarray  # (dim,) float32
    payload: dict | None = None


@dataclass(frozen=True)
class StoreConfig:
    """Tuning knobs; the defaults suit indexes from 1k to a few million vectors."""

    upsert_chunk: int = 4096  # items per SQLite transaction
    compact_min_delta: int = 8192  # merge the exact delta into FAISS beyond max(this, fraction x base)
    compact_delta_fraction: float = 0.05
    rebuild_min_dead: int = 1024  # HNSW: rebuild beyond max(this, fraction x base) filtered deletes
    rebuild_dead_fraction: float = 0.2
    checkpoint_interval_s: float = 300.0
    train_sample_max: int = 100_000


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            f"name: index name {name!r} is invalid; use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


class _State:
    """Writer-side bookkeeping for a loaded index (guarded by the handle's write lock)."""

    def __init__(self, count: int, base_max: int, generation: int) -> None:
        self.count = count
        self.base_max = base_max  # highest iid inside the base FAISS index
        self.generation = generation  # snapshot file generation
        self.last_checkpoint = time.monotonic()
        self.dirty = False


class _Handle:
    def __init__(self, name: str, path: Path, db: IndexDb, lock_fd: int | None) -> None:
        self.name = name
        self.path = path
        self.db = db
        self.lock_fd = lock_fd
        meta = db.all_meta()
        self.dim = int(meta["dim"])
        self.factory = meta["factory"]
        self.metric = Metric.parse(meta["metric"])
        self.removable = meta["needs_rebuild_on_delete"] == "0"
        self.min_train = int(meta["min_train"])
        self.train_size = int(meta["train_size"])
        self.params: dict[str, int] = json.loads(meta["search_params"])
        self.write_lock = threading.RLock()
        self.state: _State | None = None
        self.snapshot: Snapshot | None = None
        self.deferred = False  # bulk mode: SQLite only
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise NotFound(f"index {self.name!r} was dropped or its store closed")


class IndexStore:
    """All named indexes under ``root/indexes``. Thread-safe; see the module docstring."""

    def __init__(self, root: Path | str | None = None, *, config: StoreConfig | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.dir = self.root / "indexes"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config or StoreConfig()
        self._lock = threading.Lock()
        self._handles: dict[str, _Handle] = {}
        self._closed = False

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle -------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        dim: int,
        factory: str = "IDMap2,Flat",
        metric: Metric | str = Metric.COSINE,
        encoder_fingerprint: str,
        encoder_id: str,
        search_params: Mapping[str, int] | None = None,
        train_size: int | None = None,
    ) -> IndexInfo:
        validate_name(name)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= int(dim) <= MAX_DIM:
            raise InvalidInput(f"dim: must be an integer in [1, {MAX_DIM}], got {dim!r}")
        if not isinstance(factory, str) or not factory.strip() or len(factory) > MAX_FACTORY_CHARS:
            raise InvalidInput(f"factory: must be a FAISS factory string of 1-{MAX_FACTORY_CHARS} characters")
        if not isinstance(encoder_fingerprint, str) or not encoder_fingerprint:
            raise InvalidInput(
                "encoder_fingerprint: required (the fingerprint of the encoder that fills the index)"
            )
        metric = Metric.parse(metric)
        factory = factory.strip()
        probe = new_index(factory, int(dim), metric)
        min_train = train_requirement(probe)
        params = default_search_params(probe)
        for key, value in (search_params or {}).items():
            if (
                key not in _SEARCH_PARAM_KEYS
                or isinstance(value, bool)
                or not isinstance(value, int)
                or value < 1
            ):
                raise InvalidInput(
                    f"search_params: {key}={value!r}; allowed keys {_SEARCH_PARAM_KEYS}, integers >= 1"
                )
            params[key] = value
        apply_search_params(probe, params)
        if train_size is not None and (
            isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1
        ):
            raise InvalidInput(f"train_size: must be a positive integer, got {train_size!r}")
        if not min_train:
            size = 0
        elif train_size:
            size = max(int(train_size), min_train)
        else:
            size = max(39 * min_train, 1000)
        now = _now()
        meta = {
            "format": FORMAT_VERSION,
            "name": name,
            "dim": str(int(dim)),
            "factory": factory,
            "metric": metric.value,
            "encoder_fingerprint": encoder_fingerprint,
            "encoder_id": str(encoder_id),
            "created_at": now,
            "updated_at": now,
            "needs_rebuild_on_delete": "0" if can_remove(probe) else "1",
            "min_train": str(min_train),
            "train_size": str(size),
            "search_params": json.dumps(params),
        }
        with self._lock:
            final = self.dir / name
            if final.exists():
                raise AlreadyExists(f"index {name!r} already exists; drop it first or pick another name")
            tmp = self.dir / f".creating-{name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                IndexDb.create(tmp / "store.sqlite", meta)
                self._write_manifest(tmp, meta, count=0, snapshot=None)
                fsync_dir(tmp)
                os.rename(tmp, final)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if final.exists():
                    raise AlreadyExists(f"index {name!r} already exists") from None
                raise FailedPrecondition(f"index {name!r}: cannot create under {self.dir} ({exc})") from None
            fsync_dir(self.dir)
        log.info("created index %s (%s, dim %d, %s)", name, factory, dim, metric.value)
        return self.get(name)

    def get(self, name: str) -> IndexInfo:
        validate_name(name)
        with self._lock:
            h = self._handles.get(name)
        if h is not None:
            return self._info(
                h.path, h.db, count=h.state.count if h.state else None, trained=self._trained(h)
            )
        path = self._path(name)
        db = IndexDb(path / "store.sqlite", readonly=True)
        try:
            return self._info(path, db)
        finally:
            db.close()

    def list(self) -> list[IndexInfo]:
        out = []
        for p in sorted(self.dir.iterdir()):
            if p.is_dir() and NAME_RE.match(p.name):
                try:
                    out.append(self.get(p.name))
                except (NotFound, FailedPrecondition) as exc:
                    log.warning("skipping index directory %s: %s", p, exc)
        return out

    def drop(self, name: str) -> None:
        validate_name(name)
        with self._lock:
            h = self._handles.pop(name, None)
            path = self._path(name)
            if h is not None:
                with h.write_lock:
                    self._release(h)
            else:
                fd = self._take_lock(name, path)
                if fd is not None:
                    os.close(fd)
            trash = self.dir / f".dropped-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(path, trash)
            fsync_dir(self.dir)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("dropped index %s", name)

    def close(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
            self._closed = True
        for h in handles:
            with h.write_lock:
                try:
                    if h.state is not None and h.state.dirty and not h.deferred:
                        self._compact(h, force_checkpoint=True)
                finally:
                    self._release(h)

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, name: str, items: Iterable[UpsertItem], *, meta: Mapping[str, str] | None = None) -> int:
        """Insert or replace items; returns the number written (durable on return).

        Items are committed in transactions of ``config.upsert_chunk``; ``meta``
        (``read_meta`` keys) is committed with the last one.
        """
        h = self._open(name)
        total = 0
        with h.write_lock:
            self._ensure_loaded(h)
            chunks = _chunks(iter(items), self.config.upsert_chunk)
            chunk = next(chunks, None)
            if chunk is None and meta:
                h.db.set_meta(_user_meta(meta))
            while chunk is not None:
                following = next(chunks, None)
                rows = self._rows(h, chunk)
                extra = {"updated_at": _now()}
                if following is None and meta:
                    extra.update(_user_meta(meta))
                new_iids, replaced = h.db.write_chunk([(r[0], r[1].tobytes(), r[2]) for r in rows], extra)
                if not h.deferred:
                    self._apply_upsert(h, new_iids, np.stack([r[1] for r in rows]), replaced)
                total += len(rows)
                chunk = following
        return total

    def delete(self, name: str, ids: Sequence[str]) -> int:
        h = self._open(name)
        if isinstance(ids, str):
            raise InvalidInput("ids: expected a list of ids, got one string")
        ids = list(dict.fromkeys(_check_id(i, "ids") for i in ids))
        if not ids:
            return 0
        with h.write_lock:
            self._ensure_loaded(h)
            removed = h.db.delete(ids, {"updated_at": _now()})
            if not h.deferred and len(removed):
                snap, st = h.snapshot, h.state
                assert snap is not None and st is not None
                in_delta = np.isin(snap.delta_ids, removed)
                gone_from_base = removed[removed <= st.base_max]
                self._publish(
                    h,
                    dead=np.union1d(snap.dead, gone_from_base) if snap.base is not None else snap.dead,
                    delta_ids=snap.delta_ids[~in_delta],
                    delta_vecs=snap.delta_vecs[~in_delta],
                )
                st.count -= len(removed)
                st.dirty = True
                self._maybe_compact(h)
        return len(removed)

    def compact(self, name: str) -> IndexInfo:
        """Merge recent vectors, remove deleted ones (rebuilding HNSW), train if possible, snapshot."""
        h = self._open(name)
        with h.write_lock:
            self._ensure_loaded(h)
            if h.deferred:
                raise FailedPrecondition(f"index {name!r}: a bulk build is in progress")
            snap = h.snapshot
            assert snap is not None
            if snap.base is None:
                if h.db.count() >= h.min_train:
                    self._rebuild(h, force_train=True)
            elif len(snap.dead) and not h.removable:
                self._rebuild(h)
            else:
                self._compact(h, force_checkpoint=True)
        return self.get(name)

    def begin_bulk(self, name: str) -> None:
        """Batch-build mode: upserts go to SQLite only; searches are refused until :meth:`end_bulk`."""
        h = self._open(name)
        with h.write_lock:
            h.deferred = True
            h.state = None
            h.snapshot = None

    def end_bulk(self, name: str) -> IndexInfo:
        """Build FAISS from every stored vector (training on a sample), snapshot, leave bulk mode."""
        h = self._open(name)
        with h.write_lock:
            h.deferred = False
            self._rebuild(h, force_train=True)
        return self.get(name)

    def load(self, name: str) -> IndexInfo:
        """Open ``name`` now (lock, FAISS snapshot, replay) instead of on first use: for server start-up."""
        h = self._open(name)
        with h.write_lock:
            self._ensure_loaded(h)
        return self.get(name)

    def read_meta(self, name: str, key: str) -> str | None:
        """Caller metadata written with ``upsert(..., meta=...)``."""
        h = self._handles.get(validate_name(name))
        if h is not None:
            return h.db.meta(f"user:{key}")
        db = IndexDb(self._path(name) / "store.sqlite", readonly=True)
        try:
            return db.meta(f"user:{key}")
        finally:
            db.close()

    # -- reads ----------------------------------------------------------------------------
    def search(self, name: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
            raise InvalidInput(f"k: must be an integer in [1, {MAX_K}], got {k!r}")
        h = self._open(name)
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != h.dim:
            raise InvalidInput(f"queries: expected shape (Q, {h.dim}) for index {name!r}, got {q.shape}")
        if not 1 <= q.shape[0] <= MAX_QUERIES:
            raise InvalidInput(f"queries: between 1 and {MAX_QUERIES} per call, got {q.shape[0]}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(q).all():
            raise InvalidInput("queries: contain NaN or infinity")
        if h.metric is Metric.COSINE:
            norms = np.linalg.norm(q, axis=1, keepdims=True)
            if (norms == 0).any():
                raise InvalidInput("queries: a zero vector has no cosine similarity")
            q = q / norms
        if h.snapshot is None:
            with h.write_lock:
                self._ensure_loaded(h)
        snap = h.snapshot
        if snap is None:
            h.check_open()
            raise FailedPrecondition(f"index {name!r}: a bulk build is in progress; search after it finishes")
        scores, iids = snap.search(q, int(k))
        try:
            found = h.db.resolve(sorted({int(i) for i in iids.ravel() if i >= 0}))
        except sqlite3.ProgrammingError:  # closed under us by drop()
            raise NotFound(f"index {name!r} was dropped") from None
        out: list[list[Hit]] = []
        for srow, irow in zip(scores, iids, strict=True):
            hits = []
            for s, i in zip(srow, irow, strict=True):
                rec = found.get(int(i)) if i >= 0 else None
                if rec is not None:
                    hits.append(Hit(id=rec[0], score=float(s), payload=rec[1]))
            out.append(hits)
        return out

    def check_encoder(self, name: str, fingerprint: str) -> None:
        info = self.get(name)
        if info.encoder_fingerprint != fingerprint:
            raise FailedPrecondition(
                f"index {name!r} was built with encoder {info.encoder_id!r} (fingerprint "
                f"{info.encoder_fingerprint}), but the loaded encoder's fingerprint is {fingerprint}; "
                "serve the same model or rebuild the index with this one"
            )

    # -- internals: opening ---------------------------------------------------------------
    def _path(self, name: str) -> Path:
        path = self.dir / validate_name(name)
        if not (path / "store.sqlite").is_file():
            known = sorted(p.name for p in self.dir.iterdir() if p.is_dir() and NAME_RE.match(p.name))
            raise NotFound(f"index {name!r} not found under {self.dir} (existing: {known or 'none'})")
        return path

    def _take_lock(self, name: str, path: Path) -> int | None:
        if fcntl is None:  # pragma: no cover
            return None
        fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FailedPrecondition(
                f"index {name!r} is open in another process (pid {holder}); stop it or go through its server"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _open(self, name: str) -> _Handle:
        validate_name(name)
        with self._lock:
            if self._closed:
                raise FailedPrecondition("index store is closed")
            h = self._handles.get(name)
            if h is None:
                path = self._path(name)
                fd = self._take_lock(name, path)
                try:
                    for junk in path.glob(".*.tmp-*"):  # left by a crash mid-snapshot; we hold the lock
                        junk.unlink(missing_ok=True)
                    h = _Handle(name, path, IndexDb(path / "store.sqlite"), fd)
                except BaseException:
                    if fd is not None:
                        os.close(fd)
                    raise
                self._handles[name] = h
            return h

    def _release(self, h: _Handle) -> None:
        h.closed = True
        h.db.close()
        h.snapshot = None
        h.state = None
        if h.lock_fd is not None:
            os.close(h.lock_fd)
            h.lock_fd = None

    def _ensure_loaded(self, h: _Handle) -> None:
        h.check_open()
        if h.state is not None or h.deferred:
            return
        manifest = _read_json(h.path / "manifest.json")
        snap_info = manifest.get("snapshot") if manifest else None
        base = None
        if snap_info:
            base = self._load_snapshot(h, snap_info)
        if base is None:
            self._rebuild(h)  # no usable snapshot: rebuild from SQLite (exact delta if untrained)
            return
        base_max = int(snap_info["max_iid"])
        dead = h.db.dead_iids()
        delta_ids, delta_vecs = h.db.vectors_after(base_max)
        h.state = _State(h.db.count(), base_max, int(snap_info["generation"]))
        self._publish(h, base=base, dead=dead[dead <= base_max], delta_ids=delta_ids, delta_vecs=delta_vecs)
        if len(delta_ids) or len(dead):
            log.info(
                "index %s: replayed %d vectors and %d deletes after snapshot",
                h.name,
                len(delta_ids),
                len(dead),
            )
            h.state.dirty = True
        self._maybe_compact(h)

    def _load_snapshot(self, h: _Handle, info: Mapping) -> faiss.Index | None:
        path = h.path / str(info.get("file", ""))
        try:
            if sha256_file(path) != info.get("sha256"):
                raise ValueError("checksum mismatch")
            base = faiss.read_index(str(path))
            if base.d != h.dim:
                raise ValueError(f"dimension {base.d} != {h.dim}")
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("index %s: snapshot %s unusable (%s); rebuilding from SQLite", h.name, path.name, exc)
            return None
        ivf = ivf_of(base)
        if ivf is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        apply_search_params(base, h.params)
        return base

    def _trained(self, h: _Handle) -> bool:
        snap = h.snapshot
        return h.min_train == 0 or (snap is not None and snap.base is not None)

    # -- internals: writing ---------------------------------------------------------------
    def _rows(self, h: _Handle, chunk: list[UpsertItem]) -> list[tuple[str, np.ndarray, str | None]]:
        rows: dict[str, tuple[str, np.ndarray, str | None]] = {}
        for n, item in enumerate(chunk):
            if not isinstance(item, UpsertItem):
                raise InvalidInput(f"items[{n}]: expected UpsertItem, got {type(item).__name__}")
            ident = _check_id(item.id, f"items[{n}].id")
            vec = np.asarray(item.vector, dtype=np.float32).reshape(-1)
            if vec.shape[0] != h.dim:
                raise InvalidInput(
                    f"items[{n}].vector: item {ident!r} has dimension {vec.shape[0]}, index {h.name!r} expects {h.dim}"
                )
            if not np.isfinite(vec).all():
                raise InvalidInput(f"items[{n}].vector: item {ident!r} contains NaN or infinity")
            if h.metric is Metric.COSINE:
                norm = float(np.linalg.norm(vec))
                if norm == 0.0:
                    raise InvalidInput(f"items[{n}].vector: item {ident!r} is a zero vector (no cosine)")
                vec = vec / norm
            rows.pop(ident, None)  # same id twice in one call: the last one wins
            rows[ident] = (ident, np.ascontiguousarray(vec, dtype="<f4"), _payload_json(item.payload, n))
        return list(rows.values())

    def _publish(self, h: _Handle, **changes) -> None:
        old = h.snapshot
        fields = {
            "dim": h.dim,
            "metric": h.metric,
            "base": old.base if old else None,
            "dead": old.dead if old else np.zeros(0, np.int64),
            "delta_ids": old.delta_ids if old else np.zeros(0, np.int64),
            "delta_vecs": old.delta_vecs if old else np.zeros((0, h.dim), np.float32),
            "params": h.params,
        }
        fields.update(changes)
        h.snapshot = Snapshot(**fields)  # one assignment: readers see the old or the new, never a mix

    def _apply_upsert(self, h: _Handle, new_iids: np.ndarray, vecs: np.ndarray, replaced: np.ndarray) -> None:
        snap, st = h.snapshot, h.state
        assert snap is not None and st is not None
        keep = ~np.isin(snap.delta_ids, replaced)
        in_base = replaced[replaced <= st.base_max] if snap.base is not None else replaced[:0]
        self._publish(
            h,
            dead=np.union1d(snap.dead, in_base) if len(in_base) else snap.dead,
            delta_ids=np.concatenate([snap.delta_ids[keep], new_iids]),
            delta_vecs=np.concatenate([snap.delta_vecs[keep], vecs]),
        )
        st.count += len(new_iids) - len(replaced)
        st.dirty = True
        self._maybe_compact(h)

    def _maybe_compact(self, h: _Handle) -> None:
        snap, st, cfg = h.snapshot, h.state, self.config
        assert snap is not None and st is not None
        if snap.base is None:
            if h.min_train and st.count >= h.train_size:
                log.info(
                    "index %s: %d vectors reached train_size %d; training", h.name, st.count, h.train_size
                )
                self._rebuild(h)
            return
        base_n = snap.base_count
        if not h.removable and len(snap.dead) >= max(
            cfg.rebuild_min_dead, cfg.rebuild_dead_fraction * base_n
        ):
            self._rebuild(h)
            return
        limit = max(cfg.compact_min_delta, cfg.compact_delta_fraction * base_n)
        if len(snap.delta_ids) >= limit or (h.removable and len(snap.dead) >= limit):
            self._compact(h)

    def _compact(self, h: _Handle, *, force_checkpoint: bool = False) -> None:
        """Clone the base, apply deletes (where FAISS can) and the delta, publish, maybe snapshot."""
        snap, st = h.snapshot, h.state
        assert snap is not None and st is not None
        if snap.base is None:
            self._checkpoint(h)  # untrained: nothing for FAISS yet, refresh the manifest
            return
        base, dead = snap.base, snap.dead
        if len(snap.delta_ids) or (h.removable and len(dead)):
            base = faiss.clone_index(snap.base)
            if h.removable and len(dead):
                _remove(base, dead)
                dead = dead[:0]
            if len(snap.delta_ids):
                base.add_with_ids(snap.delta_vecs, snap.delta_ids)
                st.base_max = max(st.base_max, int(snap.delta_ids.max()))
            apply_search_params(base, h.params)
            self._publish(
                h, base=base, dead=dead, delta_ids=snap.delta_ids[:0], delta_vecs=snap.delta_vecs[:0]
            )
        if force_checkpoint or time.monotonic() - st.last_checkpoint >= self.config.checkpoint_interval_s:
            self._checkpoint(h)

    def _rebuild(self, h: _Handle, *, force_train: bool = False) -> None:
        """A fresh FAISS index from every vector in SQLite (bounded memory: streamed in chunks)."""
        count = h.db.count()
        if h.state is None:
            h.state = _State(count, 0, 0)
        st = h.state
        st.count = count
        index = new_index(h.factory, h.dim, h.metric)
        if h.min_train:
            if force_train and count < h.min_train:
                raise FailedPrecondition(
                    f"index {h.name!r}: factory {h.factory!r} needs at least {h.min_train} vectors to train "
                    f"(recommended {39 * h.min_train}); it has {count}. Add vectors or use a smaller "
                    "nlist / fewer PQ bits, or a Flat or HNSW index"
                )
            if count < h.min_train or (count < h.train_size and not force_train):
                ids, vecs = h.db.vectors_after(0)  # bounded by train_size: held exactly until training
                st.base_max = 0
                self._publish(h, base=None, dead=np.zeros(0, np.int64), delta_ids=ids, delta_vecs=vecs)
                self._checkpoint(h)
                return
            n = min(count, max(self.config.train_sample_max, h.min_train))
            if count < 39 * h.min_train:
                log.warning(
                    "index %s: training %s on %d vectors; FAISS recommends >= %d",
                    h.name,
                    h.factory,
                    n,
                    39 * h.min_train,
                )
            t0 = time.perf_counter()
            index.train(h.db.sample_vectors(n))
            log.info(
                "index %s: trained %s on %d vectors in %.1fs", h.name, h.factory, n, time.perf_counter() - t0
            )
        base_max = 0
        for ids, vecs in h.db.iter_vectors():
            index.add_with_ids(vecs, ids)
            base_max = int(ids[-1])
        apply_search_params(index, h.params)
        st.base_max = base_max
        self._publish(
            h,
            base=index,
            dead=np.zeros(0, np.int64),
            delta_ids=np.zeros(0, np.int64),
            delta_vecs=np.zeros((0, h.dim), np.float32),
        )
        self._checkpoint(h)

    def _checkpoint(self, h: _Handle) -> None:
        """Snapshot file + manifest (both temp + fsync + rename), then prune ``dead``."""
        snap, st = h.snapshot, h.state
        assert snap is not None and st is not None
        old_files = set(h.path.glob("snapshot-*.faiss"))
        info = None
        if snap.base is not None:
            st.generation += 1
            fname = f"snapshot-{st.generation:06d}.faiss"
            digest = write_index_atomic(snap.base, h.path / fname)
            info = {
                "file": fname,
                "sha256": digest,
                "bytes": (h.path / fname).stat().st_size,
                "max_iid": st.base_max,
                "ntotal": snap.base_count,
                "generation": st.generation,
                "written_at": _now(),
            }
        self._write_manifest(h.path, h.db.all_meta(), count=st.count, snapshot=info)
        h.db.set_dead(snap.dead)  # the on-disk base now holds exactly these deleted iids
        for f in old_files:
            if info is None or f.name != info["file"]:
                f.unlink(missing_ok=True)
        st.last_checkpoint = time.monotonic()
        st.dirty = False  # anything still in the delta is replayable from SQLite

    @staticmethod
    def _write_manifest(path: Path, meta: Mapping[str, str], *, count: int, snapshot: dict | None) -> None:
        doc = {
            "format": int(meta.get("format", FORMAT_VERSION)),
            "name": meta["name"],
            "dim": int(meta["dim"]),
            "factory": meta["factory"],
            "metric": meta["metric"],
            "count": count,
            "encoder_fingerprint": meta["encoder_fingerprint"],
            "encoder_id": meta["encoder_id"],
            "created_at": meta["created_at"],
            "updated_at": meta["updated_at"],
            "needs_rebuild_on_delete": meta["needs_rebuild_on_delete"] == "1",
            "train_size": int(meta["train_size"]),
            "search_params": json.loads(meta["search_params"]),
            "faiss_version": faiss.__version__,
            "store": "store.sqlite",
            "snapshot": snapshot,
        }
        write_bytes_atomic(path / "manifest.json", (json.dumps(doc, indent=2) + "\n").encode())

    def _info(
        self, path: Path, db: IndexDb, *, count: int | None = None, trained: bool | None = None
    ) -> IndexInfo:
        meta = db.all_meta()
        if trained is None:
            manifest = _read_json(path / "manifest.json") or {}
            trained = meta.get("min_train") == "0" or bool(manifest.get("snapshot"))
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return IndexInfo(
            name=meta["name"],
            dim=int(meta["dim"]),
            factory=meta["factory"],
            metric=Metric.parse(meta["metric"]),
            count=db.count() if count is None else count,
            encoder_fingerprint=meta["encoder_fingerprint"],
            encoder_id=meta["encoder_id"],
            size_bytes=size,
            created_at=meta["created_at"],
            updated_at=meta["updated_at"],
            needs_rebuild_on_delete=meta["needs_rebuild_on_delete"] == "1",
            trained=trained,
            search_params=json.loads(meta["search_params"]),
        )


def _remove(index: faiss.Index, iids: np.ndarray) -> None:
    try:
        index.remove_ids(faiss.IDSelectorBatch(iids))
    except RuntimeError:  # IVF with a hashtable direct map accepts only an id array
        index.remove_ids(faiss.IDSelectorArray(iids))


def _chunks(it: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = []
        for item in it:
            chunk.append(item)
            if len(chunk) >= size:
                break
        if not chunk:
            return
        yield chunk


def _check_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{where}: must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{where}: id is {len(value)} characters; the limit is {MAX_ID_CHARS}")
    return value


def _payload_json(payload: object, n: int) -> str | None:
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise InvalidInput(
            f"items[{n}].payload: must be a JSON object (dict) or None, got {type(payload).__name__}"
        )
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"items[{n}].payload: not JSON-serialisable ({exc})") from None
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(
            f"items[{n}].payload: {len(text.encode())} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES}"
        )
    return text


def _user_meta(meta: Mapping[str, str]) -> dict[str, str]:
    return {f"user:{k}": str(v) for k, v in meta.items()}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
