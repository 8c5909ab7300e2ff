"""Named vector indexes on disk: FAISS for search, SQLite for ids, payloads and durability.

Interface (shared with the gRPC server; keep it stable)::

    store = IndexStore(root)                       # root: PAIRSMITH_HOME or the user data dir
    store.create(name, dim=384, factory="IDMap2,Flat", metric=IndexMetric.COSINE,
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

Extensions: ``create(..., search_params={"nprobe": 64}, train_size=N,
build_params={"efConstruction": 80})``, ``load``
(open and replay now, for start-up),
``upsert(..., meta={...})`` (caller metadata committed with the vectors),
``read_meta``, ``compact`` (merge, remove, train, snapshot now),
``begin_bulk``/``end_bulk`` (batch builds: vectors go to SQLite only, FAISS
is built once at the end, trained on a sample of everything).

Layout: ``root/indexes/<name>/`` holds ``store.sqlite`` (+ WAL), ``manifest.json``
(factory, dim, metric, count, encoder fingerprint/id, search params, the
snapshot file with its sha256 and highest iid), ``snapshot-NNNNNN.faiss``, ``LOCK``, and
``manifest.stale`` from the first write after a snapshot until the next one (``get``/``list`` read
the manifest alone when that mark is absent, else SQLite). A snapshot whose checksum fails is
ignored and rebuilt from SQLite.

Open indexes: at most ``config.max_open_indexes`` (0: derived from RLIMIT_NOFILE) stay open; the
least recently used idle one is closed (snapshot first) and reopened on demand. Out of file
descriptors, every idle index is closed and the open retried once, then ResourceExhausted.

Semantics:

- Errors only from :mod:`pairsmith.errors`: NotFound (unknown index),
  AlreadyExists, InvalidInput (naming the field and the limit; vectors with an L2 norm over
  ``MAX_VECTOR_NORM`` on ip/l2 indexes), FailedPrecondition (encoder mismatch, untrainable, index
  locked by another process), ResourceExhausted (disk full, no file descriptors left).
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

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pairsmith.atomic import fsync_dir
from pairsmith.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound, ResourceExhausted
from pairsmith.service.store.db import IndexDb, OutOfDescriptors, resource_error
from pairsmith.service.store.faiss_index import (
    IndexMetric,
    apply_search_params,
    can_remove,
    check_norms,
    default_search_params,
    new_index,
    train_requirement,
)
from pairsmith.service.store.live import (
    FORMAT_VERSION,
    STALE_MARK,
    LiveIndex,
    StoreConfig,
    now_iso,
    read_manifest,
    write_manifest,
)
from pairsmith.vectors import normalize_rows

try:  # POSIX advisory lock: one process per index
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["Hit", "IndexInfo", "IndexStore", "IndexMetric", "StoreConfig", "UpsertItem", "default_root"]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # fullmatch only: "$" would allow "abc\n"
MAX_DIM = 65_536
MAX_K = 10_000
MAX_QUERIES = 10_000
MAX_ID_CHARS = 512
MAX_PAYLOAD_BYTES = 65_536
MAX_FACTORY_CHARS = 200
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
    metric: IndexMetric
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


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80]) + "..."
        raise InvalidInput(
            f"name: index name {shown} is invalid; use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


class IndexStore:
    """All named indexes under ``root/indexes``. Thread-safe; see the module docstring."""

    def __init__(self, root: Path | str | None = None, *, config: StoreConfig | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.dir = self.root / "indexes"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config or StoreConfig()
        self.max_open = self.config.max_open_indexes or auto_max_open()
        self._lock = threading.Lock()
        # Open indexes, least recently used first; beyond max_open idle ones are closed.
        self._handles: OrderedDict[str, LiveIndex] = OrderedDict()
        self._closing: dict[str, threading.Event] = {}  # indexes being closed right now
        self.evictions = 0
        self._closed = False
        self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Remove ``.dropped-*`` (a drop interrupted after its rename) and ``.creating-*`` folders
        no live process owns (a create interrupted before its rename: never visible as an index).

        A create holds an exclusive flock on ``.creating-<name>-<id>.lock`` from before it makes its
        folder until after the folder is renamed into place; whatever lock can be taken here
        belongs to a process that is gone, whatever the folder's age.
        """
        for p in sorted(self.dir.glob(".dropped-*")):
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed leftover %s from an interrupted drop", p.name)
        self._remove_unowned_creates("*")
        for lock in sorted(self.dir.glob(".creating-*.lock")):
            if lock.with_name(lock.name[: -len(".lock")]).exists():
                continue
            fd = _try_lock(lock)
            if fd not in (False, None):
                lock.unlink(missing_ok=True)
                os.close(fd)

    def _remove_unowned_creates(self, name: str) -> None:
        """Remove ``.creating-<name>-*`` folders whose lock no live process holds."""
        for p in sorted(self.dir.glob(f".creating-{name}-*")):
            if p.name.endswith(".lock"):
                continue
            lock = p.with_name(p.name + ".lock")
            fd = _try_lock(lock)
            if fd is False:
                continue  # a create in progress in another process
            try:
                shutil.rmtree(p, ignore_errors=True)
                lock.unlink(missing_ok=True)
            finally:
                if fd is not None:
                    os.close(fd)
            log.info("removed leftover %s from an interrupted create", p.name)

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
        metric: IndexMetric | str = IndexMetric.COSINE,
        encoder_fingerprint: str,
        encoder_id: str,
        search_params: Mapping[str, int] | None = None,
        train_size: int | None = None,
        build_params: Mapping[str, int] | None = None,
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
        metric = IndexMetric.parse(metric)
        factory = factory.strip()
        probe = new_index(factory, int(dim), metric, build_params, limits=self.config.factory_limits)
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
        now = now_iso()
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
            "build_params": json.dumps(dict(build_params or {})),
        }
        for attempt in (0, 1):
            try:
                self._create_dir(name, meta)
                break
            except OutOfDescriptors:
                if attempt:
                    raise
                with self._lock:
                    victims = self._pick_victims(keep=0)
                self._close_handles(victims)  # free descriptors, then retry once
                self._remove_unowned_creates(name)  # what the failed try could not remove
        log.info("created index %s (%s, dim %d, %s)", name, factory, dim, metric.value)
        return self.get(name)

    def _create_dir(self, name: str, meta: Mapping[str, str]) -> None:
        """Build the index folder under a temporary name and rename it into place (under the lock)."""
        with self._lock:
            final = self.dir / name
            if final.exists():
                raise AlreadyExists(f"index {name!r} already exists; drop it first or pick another name")
            tmp = self.dir / f".creating-{name}-{uuid.uuid4().hex[:8]}"
            lock_fd = None
            try:
                lock_fd = _own_lock(tmp.with_name(tmp.name + ".lock"))
                tmp.mkdir()
                IndexDb.create(tmp / "store.sqlite", meta)
                write_manifest(tmp, meta, count=0, snapshot=None)
                fsync_dir(tmp)
                # A plain rename, not pairsmith.atomic.replace_dir: a create must never replace an
                # index that another process created meanwhile (the rename fails on a non-empty
                # target, which is the AlreadyExists below).
                os.rename(tmp, final)
                fsync_dir(self.dir)
            except (OSError, sqlite3.Error, ResourceExhausted) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if (
                    isinstance(exc, OSError)
                    and exc.errno in (errno.ENOTEMPTY, errno.EEXIST)
                    and final.exists()
                ):
                    raise AlreadyExists(f"index {name!r} already exists") from None
                log.error("index %s: cannot create under %s: %s", name, self.dir, exc)
                if isinstance(exc, ResourceExhausted):
                    raise
                raise resource_error(exc, f"index {name!r}: cannot create it") or FailedPrecondition(
                    f"index {name!r}: cannot create it in the data directory ({_reason(exc)})"
                ) from None
            finally:
                if lock_fd is not None:
                    tmp.with_name(tmp.name + ".lock").unlink(missing_ok=True)
                    os.close(lock_fd)

    def get(self, name: str) -> IndexInfo:
        validate_name(name)
        with self._lock:
            h = self._handles.get(name)
            if h is not None:
                h.refs += 1
        if h is not None:
            try:
                h.check_open()
                return self._info(h.path, h.db, count=h.state.count if h.state else None, trained=h.trained())
            except (OSError, sqlite3.Error):
                # A drop renames the folder first and marks the handle just after: either sign will do.
                if h.closed or h.dropped or not (h.path / "store.sqlite").exists():
                    raise NotFound(f"index {name!r} not found (dropped)") from None
                raise
            finally:
                self._unref(h)
        path = self._path(name)
        fast = _info_from_manifest(path)
        if fast is not None:
            return fast
        return self._info_from_sqlite(name, path)

    def _info_from_sqlite(self, name: str, path: Path) -> IndexInfo:
        """The slow path: open ``store.sqlite`` read-only (a manifest not known to be current)."""
        try:
            db = IndexDb(path / "store.sqlite", readonly=True)
            try:
                return self._info(path, db)
            finally:
                db.close()
        except (OSError, sqlite3.Error, NotFound) as exc:
            if not (path / "store.sqlite").is_file():  # dropped while we read it
                raise NotFound(f"index {name!r} not found (dropped)") from None
            if isinstance(exc, NotFound):
                raise
            raise resource_error(exc, f"index {name!r}") or FailedPrecondition(
                f"index {name!r}: store.sqlite is unreadable ({exc})"
            ) from None

    def list(self) -> list[IndexInfo]:
        """Every index, from its manifest (no SQLite or FAISS opened) unless it is open here or its
        manifest is not current (a write since its last checkpoint, by a process that is gone)."""
        out = []
        with os.scandir(self.dir) as entries:
            names = sorted(e.name for e in entries if NAME_RE.fullmatch(e.name) and e.is_dir())
        for name in names:
            try:
                out.append(self.get(name))
            except (NotFound, FailedPrecondition) as exc:
                log.warning("skipping index directory %s: %s", name, exc)
        return out

    def drop(self, name: str) -> None:
        validate_name(name)
        release = None
        with self._settled(name):
            path = self._path(name)
            h = self._handles.pop(name, None)
            # Hold the index's lock across the rename so no other process opens it half-dropped.
            fd = self._take_lock(name, path) if h is None else None
            trash = self.dir / f".dropped-{name}-{uuid.uuid4().hex[:8]}"
            try:
                if h is not None:
                    with h.write_lock:  # writers in progress finish first
                        os.rename(path, trash)
                        h.dropped = True
                        h.closed = True  # new calls on this handle: NotFound
                        if h.refs == 0 and not h.released:
                            h.released = True
                            release = h
                else:
                    os.rename(path, trash)
                fsync_dir(self.dir)
            finally:
                if fd is not None:
                    os.close(fd)
        if release is not None:
            release.release()
        # Readers still holding the handle keep their open files (POSIX); the last one releases it.
        shutil.rmtree(trash, ignore_errors=True)
        log.info("dropped index %s", name)

    @contextlib.contextmanager
    def _use(self, name: str) -> Iterator[LiveIndex]:
        """The open handle for ``name``, referenced for the duration of the block."""
        h = self._open(name)
        try:
            yield h
        finally:
            self._unref(h)

    def _unref(self, h: LiveIndex) -> None:
        victims: list[LiveIndex] = []
        with self._lock:
            h.refs -= 1
            last = h.dropped and h.refs == 0 and not h.released
            if last:
                h.released = True
            elif len(self._handles) > self.max_open:  # over the bound while every index was busy
                victims = self._pick_victims(keep=self.max_open)
        if last:
            with h.write_lock:
                h.release()
        self._close_handles(victims)

    def close(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
            self._closed = True
            closing = list(self._closing.values())
        for ev in closing:  # indexes being closed for the open-index bound finish first
            ev.wait()
        first_error: BaseException | None = None
        for h in handles:
            with h.write_lock:
                try:
                    _final_checkpoint(h)
                except Exception as exc:  # noqa: BLE001 - SQLite still has every write; keep closing
                    log.error("index %s: final snapshot failed (%s); it will replay from SQLite", h.name, exc)
                    first_error = first_error or exc
                finally:
                    h.release()
        if first_error is not None:
            raise first_error

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, name: str, items: Iterable[UpsertItem], *, meta: Mapping[str, str] | None = None) -> int:
        """Insert or replace items; returns the number written (durable on return).

        Items are committed in transactions of ``config.upsert_chunk``; ``meta``
        (``read_meta`` keys) is committed with the last one.
        """
        with self._use(name) as h:
            total = 0
            with h.write_lock:
                h.ensure_loaded()
                chunks = _chunks(iter(items), self.config.upsert_chunk)
                chunk = next(chunks, None)
                if chunk is None and meta:
                    h.db.set_meta(_user_meta(meta))
                while chunk is not None:
                    following = next(chunks, None)
                    rows = self._rows(h, chunk)
                    extra = {"updated_at": now_iso()}
                    if following is None and meta:
                        extra.update(_user_meta(meta))
                    h.will_write()  # a checkpoint after the previous chunk may have marked it clean
                    new_iids, replaced = h.db.write_chunk([(r[0], r[1].tobytes(), r[2]) for r in rows], extra)
                    if not h.deferred:
                        h.apply_upsert(new_iids, np.stack([r[1] for r in rows]), replaced)
                    total += len(rows)
                    chunk = following
            return total

    def delete(self, name: str, ids: Sequence[str]) -> int:
        with self._use(name) as h:
            if isinstance(ids, str):
                raise InvalidInput("ids: expected a list of ids, got one string")
            ids = list(dict.fromkeys(_check_id(i, "ids") for i in ids))
            if not ids:
                return 0
            with h.write_lock:
                h.ensure_loaded()
                h.will_write()
                removed = h.db.delete(ids, {"updated_at": now_iso()})
                if not h.deferred and len(removed):
                    h.apply_delete(removed)
            return len(removed)

    def compact(self, name: str) -> IndexInfo:
        """Merge recent vectors, remove deleted ones (rebuilding HNSW), train if possible, snapshot."""
        with self._use(name) as h:
            with h.write_lock:
                h.ensure_loaded()
                if h.deferred:
                    raise FailedPrecondition(f"index {name!r}: a bulk build is in progress")
                snap = h.snapshot
                assert snap is not None
                if snap.base is None:
                    if h.db.count() >= h.min_train:
                        h.rebuild(force_train=True)
                elif len(snap.dead) and not h.removable:
                    h.rebuild()
                else:
                    h.compact(force_checkpoint=True)
            return self.get(name)

    def begin_bulk(self, name: str) -> None:
        """Batch-build mode: upserts go to SQLite only; searches are refused until :meth:`end_bulk`."""
        with self._use(name) as h:
            with h.write_lock:
                h.deferred = True
                h.state = None
                h.snapshot = None

    def end_bulk(self, name: str, *, base=None) -> IndexInfo:
        """Build FAISS from every stored vector (training on a sample), snapshot, leave bulk mode.

        ``base``: a FAISS index built elsewhere (e.g. in parallel by the Ray engine) from exactly the
        stored vectors under their iids; it is checked, adopted and snapshotted instead of a rebuild.
        """
        with self._use(name) as h:
            with h.write_lock:
                if base is None:
                    h.deferred = False
                    h.rebuild(force_train=True)
                else:
                    h.adopt(base)
                    h.deferred = False
            return self.get(name)

    def bulk_vectors(self, name: str):
        """A read-only view of ``name``'s SQLite record (``iter_vectors``, ``sample_vectors``, ``count``).

        For bulk builds that assemble FAISS elsewhere; the caller closes it.
        """
        return IndexDb(self._path(name) / "store.sqlite", readonly=True)

    def load(self, name: str) -> IndexInfo:
        """Open ``name`` now (lock, FAISS snapshot, replay) instead of on first use: for server start-up."""
        with self._use(name) as h:
            with h.write_lock:
                h.ensure_loaded()
            return self.get(name)

    def read_meta(self, name: str, key: str) -> str | None:
        """Caller metadata written with ``upsert(..., meta=...)``."""
        with self._lock:
            h = self._handles.get(validate_name(name))
            if h is not None:
                h.refs += 1
        if h is not None:
            try:
                h.check_open()
                return h.db.meta(f"user:{key}")
            finally:
                self._unref(h)
        db = IndexDb(self._path(name) / "store.sqlite", readonly=True)
        try:
            return db.meta(f"user:{key}")
        finally:
            db.close()

    # -- reads ----------------------------------------------------------------------------
    def search(self, name: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
            raise InvalidInput(f"k: must be an integer in [1, {MAX_K}], got {k!r}")
        with self._use(name) as h:
            q = np.asarray(queries)
            if q.ndim != 2 or q.shape[1] != h.dim:
                raise InvalidInput(f"queries: expected shape (Q, {h.dim}) for index {name!r}, got {q.shape}")
            if not 1 <= q.shape[0] <= MAX_QUERIES:
                raise InvalidInput(f"queries: between 1 and {MAX_QUERIES} per call, got {q.shape[0]}")
            q = np.ascontiguousarray(q, dtype=np.float32)
            if not np.isfinite(q).all():
                raise InvalidInput("queries: contain NaN or infinity")
            check_norms(q, h.metric, "queries[{i}]")
            if h.metric is IndexMetric.COSINE:
                q = normalize_rows(q, field="queries")
            if h.snapshot is None:
                with h.write_lock:
                    h.ensure_loaded()
            snap = h.snapshot
            if snap is None:
                h.check_open()
                raise FailedPrecondition(
                    f"index {name!r}: a bulk build is in progress; search after it finishes"
                )
            scores, iids = snap.search(q, int(k))
            # Vectors stored before the norm bound existed can still overflow: never answer inf/NaN.
            big = float(np.finfo(np.float32).max)
            scores = np.nan_to_num(scores, nan=-big, posinf=big, neginf=-big)
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
                + _rebuild_hint(name, info.encoder_fingerprint, fingerprint)
            )

    # -- internals: opening ---------------------------------------------------------------
    def _path(self, name: str) -> Path:
        path = self.dir / validate_name(name)
        if not (path / "store.sqlite").is_file():
            # Neither the data directory nor the other indexes' names: ListIndexes is the way to see them.
            raise NotFound(f"index {name!r} not found")
        return path

    def _take_lock(self, name: str, path: Path) -> int | None:
        if fcntl is None:  # pragma: no cover
            return None
        try:
            fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise resource_error(exc, f"index {name!r}: cannot open it") or exc from None
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

    def _open(self, name: str) -> LiveIndex:
        """The open handle for ``name`` (opened now if needed), referenced; callers use :meth:`_use`.

        Opening beyond ``max_open`` closes the least recently used idle indexes afterwards; when
        the process is out of file descriptors, every idle index is closed and the open retried once.
        """
        validate_name(name)
        for attempt in (0, 1):
            victims: list[LiveIndex] = []
            try:
                with self._settled(name):
                    if self._closed:
                        raise FailedPrecondition("index store is closed")
                    h = self._handles.get(name)
                    if h is None:
                        try:
                            h = self._new_handle(name)
                        except OutOfDescriptors:
                            if attempt:
                                raise
                            victims = self._pick_victims(keep=0)
                            continue
                        self._handles[name] = h
                    else:
                        self._handles.move_to_end(name)
                    h.refs += 1  # released by _unref
                    victims = self._pick_victims(keep=self.max_open)
                    return h
            finally:
                self._close_handles(victims)
        raise AssertionError("unreachable")  # pragma: no cover

    def _new_handle(self, name: str) -> LiveIndex:
        path = self._path(name)
        fd = self._take_lock(name, path)
        try:
            for junk in [
                *path.glob(".*.tmp-*"),
                *path.glob(".*.tmp"),
            ]:  # a crash mid-snapshot; we hold the lock
                junk.unlink(missing_ok=True)
            try:
                db = IndexDb(path / "store.sqlite")
                return LiveIndex(name, path, db, fd, self.config)
            except (sqlite3.Error, OSError) as exc:
                err = resource_error(exc, f"index {name!r}: cannot open it")
                if err is not None:
                    raise err from None
                if not isinstance(exc, sqlite3.DatabaseError):
                    raise
                log.error("index %s: %s is corrupt: %s", name, path / "store.sqlite", exc)
                raise FailedPrecondition(
                    f"index {name!r}: store.sqlite is corrupt or not a database ({exc}); it is the "
                    "write-ahead record, so restore it from a backup or drop and rebuild the index"
                ) from None
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    # -- internals: the open-index bound ------------------------------------------------------
    @contextlib.contextmanager
    def _settled(self, name: str) -> Iterator[None]:
        """Hold the store lock with no close of ``name`` in progress (its flock is still held then)."""
        while True:
            with self._lock:
                ev = self._closing.get(name)
                if ev is None:
                    yield
                    return
            ev.wait()

    def _pick_victims(self, *, keep: int) -> list[LiveIndex]:
        """Under the store lock: take idle handles, least recently used first, until at most
        ``keep`` stay open; they are closed by :meth:`_close_handles` outside the lock."""
        victims = []
        excess = len(self._handles) - keep
        for name, h in list(self._handles.items()):
            if excess <= 0:
                break
            if h.refs or h.deferred:  # in use, or a bulk build that lives in memory
                continue
            del self._handles[name]
            self._closing[name] = threading.Event()
            victims.append(h)
            excess -= 1
        return victims

    def _close_handles(self, victims: list[LiveIndex]) -> None:
        for h in victims:
            try:
                with h.write_lock:
                    try:
                        _final_checkpoint(h)
                    except Exception as exc:  # noqa: BLE001 - SQLite has every write; it replays on reopen
                        log.error(
                            "index %s: snapshot on close failed (%s); it will replay from SQLite", h.name, exc
                        )
                    finally:
                        h.release()
            finally:
                with self._lock:
                    self.evictions += 1
                    self._closing.pop(h.name).set()
            log.debug("closed idle index %s (open-index bound %d)", h.name, self.max_open)

    @property
    def open_count(self) -> int:
        return len(self._handles)

    # -- internals: writing ---------------------------------------------------------------
    def _rows(self, h: LiveIndex, chunk: list[UpsertItem]) -> list[tuple[str, np.ndarray, str | None]]:
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
            check_norms(vec, h.metric, f"items[{n}].vector (item {ident!r})")
            if h.metric is IndexMetric.COSINE:
                vec = normalize_rows(vec[None, :], field=f"items[{n}].vector (item {ident!r})")[0]
            rows.pop(ident, None)  # same id twice in one call: the last one wins
            rows[ident] = (ident, np.ascontiguousarray(vec, dtype="<f4"), _payload_json(item.payload, n))
        return list(rows.values())

    def _info(
        self, path: Path, db: IndexDb, *, count: int | None = None, trained: bool | None = None
    ) -> IndexInfo:
        meta = db.all_meta()
        if trained is None:
            manifest = read_manifest(path) or {}
            trained = meta.get("min_train") == "0" or bool(manifest.get("snapshot"))
        size = _dir_size(path)
        return IndexInfo(
            name=meta["name"],
            dim=int(meta["dim"]),
            factory=meta["factory"],
            metric=IndexMetric.parse(meta["metric"]),
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


def _dir_size(path: Path) -> int:
    """Bytes of the files in ``path``; a file replaced meanwhile (a new snapshot) is skipped."""
    total = 0
    with os.scandir(path) as entries:  # one stat per file (ListIndexes calls this per index)
        for e in entries:
            try:
                if not e.is_dir(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


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


def _rebuild_hint(name: str, built: str, loaded: str) -> str:
    """How to reconcile an index and an encoder whose fingerprints differ.

    A fingerprint is the model's hash plus ``+VARIANT`` for lossy engines (int8, fp16): the same
    model on another engine makes vectors that must not be mixed, and the fix is an engine flag.
    """
    b_model, _, b_var = built.partition("+")
    l_model, _, l_var = loaded.partition("+")
    if b_model != l_model:
        return "serve the same model or rebuild the index with this one"

    def backend(variant: str) -> str:
        return "--backend torch" if not variant else "--backend auto"

    return (
        f"the index holds {b_var or 'fp32'} vectors of the same model and this encoder makes "
        f"{l_var or 'fp32'} ones: rebuild it with this engine (pairsmith index build --name {name} "
        f"--corpus FILE --model MODEL {backend(l_var)}) or serve it with the engine it was built "
        f"with ({backend(b_var)})"
    )


def _final_checkpoint(h: LiveIndex) -> None:
    """Before a handle is released: snapshot what only memory holds (SQLite already has it all)."""
    if (
        h.state is not None
        and h.snapshot is not None
        and not h.deferred
        and (h.state.dirty or not h.manifest_clean)
    ):
        h.compact(force_checkpoint=True)


def _info_from_manifest(path: Path) -> IndexInfo | None:
    """IndexInfo from ``manifest.json`` alone when it is current (``clean``), else None."""
    if (path / STALE_MARK).exists():
        return None
    doc = read_manifest(path)
    if not doc or "min_train" not in doc:  # manifests before format 1.1 lack it: read SQLite
        return None
    try:
        return IndexInfo(
            name=str(doc["name"]),
            dim=int(doc["dim"]),
            factory=str(doc["factory"]),
            metric=IndexMetric.parse(doc["metric"]),
            count=int(doc["count"]),
            encoder_fingerprint=str(doc["encoder_fingerprint"]),
            encoder_id=str(doc["encoder_id"]),
            size_bytes=_dir_size(path),
            created_at=str(doc["created_at"]),
            updated_at=str(doc["updated_at"]),
            needs_rebuild_on_delete=bool(doc["needs_rebuild_on_delete"]),
            trained=int(doc["min_train"]) == 0 or bool(doc.get("snapshot")),
            search_params=dict(doc["search_params"]),
        )
    except (KeyError, TypeError, ValueError, InvalidInput):
        return None


def auto_max_open(per_index: int = 8) -> int:
    """Open indexes the descriptor limit allows: each holds ~6 (a lock file, two SQLite connections
    with their WAL), counted as ``per_index``; a quarter of the limit (at least 64) stays for sockets,
    models and everything else. Between 4 and 256."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - non-POSIX
        return 64
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        soft = 1 << 20
    spare = soft - max(64, soft // 4)
    return max(4, min(256, spare // per_index))


def _reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()


def _own_lock(path: Path) -> int | None:
    """Create ``path`` and hold an exclusive flock on it (a create's ownership of its temp folder)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _try_lock(path: Path) -> int | None | bool:
    """An flock on ``path`` if nobody holds one: its fd (None: no such file or no flock here),
    False while a live process holds it."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    return fd
