"""One open index: the writer side of :class:`~pairsmith.service.store.index_store.IndexStore`.

A :class:`LiveIndex` owns an index's SQLite store, its writer lock, the
:class:`~pairsmith.service.store.faiss_index.Snapshot` readers search, and the
writer's bookkeeping. It loads (snapshot + replay of newer SQLite rows),
applies committed upserts and deletes to a new snapshot, compacts (clone the
base, remove deletes where FAISS can, add the delta, swap), rebuilds from
SQLite (training on a sample; HNSW after many deletes), and checkpoints
(snapshot file + manifest, temp + fsync + rename, then prunes ``dead``).
Validation and naming live in :mod:`pairsmith.service.store.index_store`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from pairsmith.atomic import atomic_write_json, fsync_dir
from pairsmith.errors import FailedPrecondition, NotFound, ResourceExhausted
from pairsmith.service.store.db import IndexDb, resource_error
from pairsmith.service.store.faiss_index import (
    FactoryLimits,
    IndexMetric,
    Snapshot,
    apply_search_params,
    ivf_of,
    new_index,
    sha256_file,
    write_index_atomic,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
STALE_MARK = "manifest.stale"  # present: store.sqlite has writes newer than manifest.json


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
    factory_limits: FactoryLimits = FactoryLimits()  # what a new index's factory may allocate
    # Indexes kept open at once (FAISS in memory, SQLite connections, a lock file); beyond it the
    # least recently used idle one is closed and reopened on demand. 0: from RLIMIT_NOFILE.
    max_open_indexes: int = 0


class _State:
    """Writer-side bookkeeping for a loaded index (guarded by its write lock)."""

    def __init__(self, count: int, base_max: int, generation: int) -> None:
        self.count = count
        self.base_max = base_max  # highest iid inside the base FAISS index
        self.generation = generation  # snapshot file generation
        self.last_checkpoint = time.monotonic()
        self.dirty = False


class LiveIndex:
    """One open index: its SQLite store, writer lock, published snapshot and writer state.

    Every method except :meth:`check_open` and the ``snapshot`` read runs under ``write_lock``.
    """

    def __init__(self, name: str, path: Path, db: IndexDb, lock_fd: int | None, config: StoreConfig) -> None:
        self.config = config
        self.name = name
        self.path = path
        self.db = db
        self.lock_fd = lock_fd
        meta = db.all_meta()
        self.dim = int(meta["dim"])
        self.factory = meta["factory"]
        self.metric = IndexMetric.parse(meta["metric"])
        self.removable = meta["needs_rebuild_on_delete"] == "0"
        self.min_train = int(meta["min_train"])
        self.train_size = int(meta["train_size"])
        self.params: dict[str, int] = json.loads(meta["search_params"])
        self.build_params: dict[str, int] = json.loads(meta.get("build_params", "{}"))
        self.write_lock = threading.RLock()
        self.state: _State | None = None
        self.snapshot: Snapshot | None = None
        self.deferred = False  # bulk mode: SQLite only
        self.closed = False
        # Users (store calls in progress) hold a reference; drop() marks the handle dropped and
        # the last user releases it, so a drop never closes a database a reader is using.
        self.refs = 0
        self.dropped = False
        self.released = False
        # manifest.json is current (its count and updated_at equal store.sqlite's): no STALE_MARK.
        self.manifest_clean = (path / "manifest.json").is_file() and not (path / STALE_MARK).exists()

    def will_write(self) -> None:
        """Before a write commits: mark manifest.json stale (an empty ``manifest.stale`` file, made
        durable), so readers of manifests (ListIndexes) read store.sqlite until the next checkpoint."""
        if not self.manifest_clean:
            return
        try:
            with open(self.path / STALE_MARK, "wb"):
                pass
            fsync_dir(self.path)
        except OSError as exc:
            raise resource_error(exc, f"index {self.name!r}") or FailedPrecondition(
                f"index {self.name!r}: cannot write in its folder ({exc.strerror or exc}); nothing was stored"
            ) from None
        self.manifest_clean = False

    def check_open(self) -> None:
        if self.closed:
            raise NotFound(f"index {self.name!r} was dropped or its store closed")

    def release(self) -> None:
        self.closed = True
        self.db.close()
        self.snapshot = None
        self.state = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def ensure_loaded(self) -> None:
        self.check_open()
        if self.state is not None or self.deferred:
            return
        manifest = read_manifest(self.path)
        snap_info = manifest.get("snapshot") if manifest else None
        base = None
        if snap_info:
            base = self.load_snapshot(snap_info)
        if base is None:
            self.rebuild()  # no usable snapshot: rebuild from SQLite (exact delta if untrained)
            return
        base_max = int(snap_info["max_iid"])
        dead = self.db.dead_iids()
        delta_ids, delta_vecs = self.db.vectors_after(base_max)
        self.state = _State(self.db.count(), base_max, int(snap_info["generation"]))
        self.publish(base=base, dead=dead[dead <= base_max], delta_ids=delta_ids, delta_vecs=delta_vecs)
        if len(delta_ids) or len(dead):
            log.info(
                "index %s: replayed %d vectors and %d deletes after snapshot",
                self.name,
                len(delta_ids),
                len(dead),
            )
            self.state.dirty = True
        self.maybe_compact()

    def load_snapshot(self, info: Mapping) -> faiss.Index | None:
        path = self.path / str(info.get("file", ""))
        try:
            if sha256_file(path) != info.get("sha256"):
                raise ValueError("checksum mismatch")
            base = faiss.read_index(str(path))
            if base.d != self.dim:
                raise ValueError(f"dimension {base.d} != {self.dim}")
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning(
                "index %s: snapshot %s unusable (%s); rebuilding from SQLite", self.name, path.name, exc
            )
            return None
        ivf = ivf_of(base)
        if ivf is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        apply_search_params(base, self.params)
        return base

    def trained(self) -> bool:
        snap = self.snapshot
        return self.min_train == 0 or (snap is not None and snap.base is not None)

    def publish(self, **changes) -> None:
        old = self.snapshot
        fields = {
            "dim": self.dim,
            "metric": self.metric,
            "base": old.base if old else None,
            "dead": old.dead if old else np.zeros(0, np.int64),
            "delta_ids": old.delta_ids if old else np.zeros(0, np.int64),
            "delta_vecs": old.delta_vecs if old else np.zeros((0, self.dim), np.float32),
            "params": self.params,
        }
        fields.update(changes)
        self.snapshot = Snapshot(**fields)  # one assignment: readers see the old or the new, never a mix

    def apply_upsert(self, new_iids: np.ndarray, vecs: np.ndarray, replaced: np.ndarray) -> None:
        snap, st = self.snapshot, self.state
        assert snap is not None and st is not None
        keep = ~np.isin(snap.delta_ids, replaced)
        in_base = replaced[replaced <= st.base_max] if snap.base is not None else replaced[:0]
        self.publish(
            dead=np.union1d(snap.dead, in_base) if len(in_base) else snap.dead,
            delta_ids=np.concatenate([snap.delta_ids[keep], new_iids]),
            delta_vecs=np.concatenate([snap.delta_vecs[keep], vecs]),
        )
        st.count += len(new_iids) - len(replaced)
        st.dirty = True
        self.maybe_compact()

    def apply_delete(self, removed: np.ndarray) -> None:
        snap, st = self.snapshot, self.state
        assert snap is not None and st is not None
        in_delta = np.isin(snap.delta_ids, removed)
        gone_from_base = removed[removed <= st.base_max]
        self.publish(
            dead=np.union1d(snap.dead, gone_from_base) if snap.base is not None else snap.dead,
            delta_ids=snap.delta_ids[~in_delta],
            delta_vecs=snap.delta_vecs[~in_delta],
        )
        st.count -= len(removed)
        st.dirty = True
        self.maybe_compact()

    def maybe_compact(self) -> None:
        snap, st, cfg = self.snapshot, self.state, self.config
        assert snap is not None and st is not None
        if snap.base is None:
            if self.min_train and st.count >= self.train_size:
                log.info(
                    "index %s: %d vectors reached train_size %d; training",
                    self.name,
                    st.count,
                    self.train_size,
                )
                self.rebuild()
            return
        base_n = snap.base_count
        if not self.removable and len(snap.dead) >= max(
            cfg.rebuild_min_dead, cfg.rebuild_dead_fraction * base_n
        ):
            self.rebuild()
            return
        limit = max(cfg.compact_min_delta, cfg.compact_delta_fraction * base_n)
        if len(snap.delta_ids) >= limit or (self.removable and len(snap.dead) >= limit):
            self.compact()

    def compact(self, *, force_checkpoint: bool = False) -> None:
        """Clone the base, apply deletes (where FAISS can) and the delta, publish, maybe snapshot."""
        snap, st = self.snapshot, self.state
        assert snap is not None and st is not None
        if snap.base is None:
            self.checkpoint()  # untrained: nothing for FAISS yet, refresh the manifest
            return
        base, dead = snap.base, snap.dead
        if len(snap.delta_ids) or (self.removable and len(dead)):
            base = faiss.clone_index(snap.base)
            if self.removable and len(dead):
                _remove(base, dead)
                dead = dead[:0]
            if len(snap.delta_ids):
                base.add_with_ids(snap.delta_vecs, snap.delta_ids)
                st.base_max = max(st.base_max, int(snap.delta_ids.max()))
            apply_search_params(base, self.params)
            self.publish(base=base, dead=dead, delta_ids=snap.delta_ids[:0], delta_vecs=snap.delta_vecs[:0])
        if force_checkpoint or time.monotonic() - st.last_checkpoint >= self.config.checkpoint_interval_s:
            self.checkpoint()

    def rebuild(self, *, force_train: bool = False) -> None:
        """A fresh FAISS index from every vector in SQLite (bounded memory: streamed in chunks)."""
        count = self.db.count()
        if self.state is None:
            self.state = _State(count, 0, 0)
        st = self.state
        st.count = count
        index = new_index(self.factory, self.dim, self.metric, self.build_params)
        if self.min_train:
            if force_train and count < self.min_train:
                raise FailedPrecondition(
                    f"index {self.name!r}: factory {self.factory!r} needs at least {self.min_train} vectors to train "
                    f"(recommended {39 * self.min_train}); it has {count}. Add vectors or use a smaller "
                    "nlist / fewer PQ bits, or a Flat or HNSW index"
                )
            if count < self.min_train or (count < self.train_size and not force_train):
                ids, vecs = self.db.vectors_after(0)  # bounded by train_size: held exactly until training
                st.base_max = 0
                self.publish(base=None, dead=np.zeros(0, np.int64), delta_ids=ids, delta_vecs=vecs)
                self.checkpoint()
                return
            n = min(count, max(self.config.train_sample_max, self.min_train))
            if count < 39 * self.min_train:
                log.warning(
                    "index %s: training %s on %d vectors; FAISS recommends >= %d",
                    self.name,
                    self.factory,
                    n,
                    39 * self.min_train,
                )
            t0 = time.perf_counter()
            index.train(self.db.sample_vectors(n))
            log.info(
                "index %s: trained %s on %d vectors in %.1fs",
                self.name,
                self.factory,
                n,
                time.perf_counter() - t0,
            )
        base_max = 0
        for ids, vecs in self.db.iter_vectors():
            index.add_with_ids(vecs, ids)
            base_max = int(ids[-1])
        apply_search_params(index, self.params)
        st.base_max = base_max
        self.publish(
            base=index,
            dead=np.zeros(0, np.int64),
            delta_ids=np.zeros(0, np.int64),
            delta_vecs=np.zeros((0, self.dim), np.float32),
        )
        self.checkpoint()

    def adopt(self, base: faiss.Index) -> None:
        """Publish and snapshot ``base``, built elsewhere from exactly the vectors in SQLite (ids = iids)."""
        count, max_iid = self.db.count(), self.db.max_iid()
        if base.d != self.dim or base.ntotal != count:
            raise FailedPrecondition(
                f"index {self.name!r}: a prebuilt FAISS index has {base.ntotal} vectors of dim {base.d}; "
                f"the store holds {count} of dim {self.dim}"
            )
        ivf = ivf_of(base)
        if ivf is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        apply_search_params(base, self.params)
        self.state = _State(count, max_iid, self.state.generation if self.state else 0)
        self.publish(
            base=base,
            dead=np.zeros(0, np.int64),
            delta_ids=np.zeros(0, np.int64),
            delta_vecs=np.zeros((0, self.dim), np.float32),
        )
        self.checkpoint()

    def checkpoint(self) -> None:
        """Snapshot file + manifest (both temp + fsync + rename), then prune ``dead``.

        A failure (full disk, I/O error) is logged, not raised: every write is already
        committed to ``store.sqlite``, the previous snapshot and manifest are untouched, and
        the next open replays what the snapshot lacks. The writer that triggered the
        checkpoint still succeeds, and the index stays dirty so the next one retries.
        """
        try:
            self._checkpoint()
        except (OSError, RuntimeError, ResourceExhausted) as exc:  # RuntimeError: FAISS's write errors
            log.error(
                "index %s: snapshot not written (%s); store.sqlite holds every write and replays at the "
                "next open",
                self.name,
                exc,
            )

    def _checkpoint(self) -> None:
        snap, st = self.snapshot, self.state
        assert snap is not None and st is not None
        old_files = set(self.path.glob("snapshot-*.faiss"))
        info = None
        if snap.base is not None:
            st.generation += 1
            fname = f"snapshot-{st.generation:06d}.faiss"
            digest = write_index_atomic(snap.base, self.path / fname)
            info = {
                "file": fname,
                "sha256": digest,
                "bytes": (self.path / fname).stat().st_size,
                "max_iid": st.base_max,
                "ntotal": snap.base_count,
                "generation": st.generation,
                "written_at": now_iso(),
            }
        write_manifest(self.path, self.db.all_meta(), count=st.count, snapshot=info)
        (self.path / STALE_MARK).unlink(missing_ok=True)  # lost in a crash: merely stale, safe
        self.manifest_clean = True
        self.db.set_dead(snap.dead)  # the on-disk base now holds exactly these deleted iids
        for f in old_files:
            if info is None or f.name != info["file"]:
                f.unlink(missing_ok=True)
        st.last_checkpoint = time.monotonic()
        st.dirty = False  # anything still in the delta is replayable from SQLite


def _remove(index: faiss.Index, iids: np.ndarray) -> None:
    try:
        index.remove_ids(faiss.IDSelectorBatch(iids))
    except RuntimeError:  # IVF with a hashtable direct map accepts only an id array
        index.remove_ids(faiss.IDSelectorArray(iids))


def write_manifest(path: Path, meta: Mapping[str, str], *, count: int, snapshot: dict | None) -> None:
    """``manifest.json``: everything ListIndexes shows, written with the exact ``count``.

    The first write after it creates ``manifest.stale`` beside it (:meth:`LiveIndex.will_write`).
    """
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
        "min_train": int(meta["min_train"]),
        "search_params": json.loads(meta["search_params"]),
        "build_params": json.loads(meta.get("build_params", "{}")),
        "faiss_version": faiss.__version__,
        "store": "store.sqlite",
        "snapshot": snapshot,
    }
    atomic_write_json(path / "manifest.json", doc)


def read_manifest(index_dir: Path) -> dict | None:
    """``index_dir/manifest.json`` as a dict, or None when it is missing or unusable.

    A manifest that exists but is truncated or corrupt is logged (naming the file); the
    index then rebuilds its FAISS part from the write-ahead record (``store.sqlite``).
    """
    path = index_dir / "manifest.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning(
            "index %s: %s is unreadable (%s); rebuilding from store.sqlite", index_dir.name, path.name, exc
        )
        return None
    if not isinstance(doc, dict):
        log.warning(
            "index %s: %s is not a JSON object; rebuilding from store.sqlite", index_dir.name, path.name
        )
        return None
    return doc


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
