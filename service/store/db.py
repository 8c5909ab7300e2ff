"""The SQLite half of an index: the write-ahead record every FAISS snapshot is rebuilt from.

One file per index (``store.sqlite``, WAL journal, ``synchronous=FULL`` so a
commit is on disk when it returns). Tables:

- ``meta(key, value)``: the index's configuration (dim, factory, metric,
  encoder fingerprint, ...) and caller metadata (``user:*`` keys, e.g. a
  resumable build's progress, committed in the same transaction as its vectors).
- ``items(iid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, vector BLOB, payload TEXT)``:
  ``iid`` is the int64 id inside FAISS. AUTOINCREMENT means an iid is never
  reused, so "every iid above the snapshot's highest" is exactly the set of
  vectors to replay after a crash. Replacing an id deletes its row and inserts
  a new one (new iid).
- ``dead(iid)``: iids removed from ``items`` that may still sit inside the
  on-disk FAISS snapshot; searches filter them until a compaction removes them.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from pairsmith.errors import FailedPrecondition, NotFound, ResourceExhausted

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  iid INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  vector BLOB NOT NULL,
  payload TEXT
);
CREATE TABLE IF NOT EXISTS dead (iid INTEGER PRIMARY KEY);
"""

_IN_CHUNK = 900  # stay well under SQLite's bound-parameter limit


class OutOfDescriptors(ResourceExhausted):
    """The process has no file descriptor left (EMFILE / ENFILE)."""


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and ("full" in str(exc) or "disk I/O" in str(exc))


def _fds_exhausted(margin: int = 16) -> bool:
    """Whether this process is (within ``margin`` of being) out of file descriptors: SQLite
    reports that only as "unable to open database file", after closing what it had opened."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and len(os.listdir("/proc/self/fd")) >= soft - margin:
            return True
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    except (ImportError, ValueError):  # pragma: no cover - no /proc or no resource module
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


def resource_error(exc: BaseException, what: str) -> ResourceExhausted | None:
    """RESOURCE_EXHAUSTED for a full disk or exhausted file descriptors behind ``exc``, else None.

    ``what`` starts the message (e.g. ``"index 'docs': cannot create it"``).
    """
    if _is_disk_full(exc):
        return ResourceExhausted(
            f"{what}: the disk is full or failing ({exc}); nothing was stored. Free space and retry"
        )
    if (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)) or (
        isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc) and _fds_exhausted()
    ):
        return OutOfDescriptors(
            f"{what}: the server is out of file descriptors; retry later. Operators: raise the limit "
            "(ulimit -n) or lower --max-open-indexes"
        )
    return None


def _writes(fn):
    """A write that fails for lack of space is RESOURCE_EXHAUSTED naming the index; the
    transaction was rolled back, so nothing of it is stored (reads keep working)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except (sqlite3.OperationalError, OSError) as exc:
            if not _is_disk_full(exc):
                raise
            raise ResourceExhausted(
                f"index {self.path.parent.name!r}: the disk is full or failing ({exc}); nothing of this "
                "write was stored. Free space and retry"
            ) from None

    return wrapper


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    mode = "ro" if readonly else "rw"
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode={mode}", uri=True, check_same_thread=False, isolation_level=None, timeout=30
        )
    except sqlite3.OperationalError as exc:
        err = resource_error(exc, f"index {path.parent.name!r}")
        if err is not None:
            raise err from None
        raise NotFound(f"index {path.parent.name!r}: {path.name} cannot be opened ({exc})") from None
    try:
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


class IndexDb:
    """SQLite access for one index: a writer connection and a lock-guarded reader connection."""

    def __init__(self, path: Path, dim: int | None = None, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._w = self._r = None
        try:
            self._w = None if readonly else _connect(path, readonly=False)
            self._r = _connect(path, readonly=readonly)
            self._rlock = threading.Lock()
            self.dim = dim if dim is not None else int(self.meta("dim") or 0)
        except BaseException:
            self.close()  # no connection (descriptor) left behind by a failed open
            raise

    @classmethod
    def create(cls, path: Path, meta: Mapping[str, str]) -> None:
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def close(self) -> None:
        for conn in (self._w, self._r):
            if conn is not None:
                conn.close()

    # -- reads (any thread) -------------------------------------------------------------
    def _read(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._rlock:
            return self._r.execute(sql, args).fetchall()

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def all_meta(self) -> dict[str, str]:
        return dict(self._read("SELECT key, value FROM meta"))

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM items")[0][0])

    def max_iid(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(iid), 0) FROM items")[0][0])

    def dead_iids(self) -> np.ndarray:
        rows = self._read("SELECT iid FROM dead ORDER BY iid")
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def resolve(self, iids: Sequence[int]) -> dict[int, tuple[str, dict | None]]:
        """iid -> (external id, payload) for the iids still live."""
        out: dict[int, tuple[str, dict | None]] = {}
        iids = list(iids)
        for start in range(0, len(iids), _IN_CHUNK):
            part = iids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            for iid, ext, payload in self._read(
                f"SELECT iid, id, payload FROM items WHERE iid IN ({marks})", part
            ):
                out[int(iid)] = (ext, json.loads(payload) if payload is not None else None)
        return out

    def existing(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        ids = list(ids)
        for start in range(0, len(ids), _IN_CHUNK):
            part = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self._read(f"SELECT id FROM items WHERE id IN ({marks})", part))
        return found

    def _vectors(self, rows: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), self.dim)
        return ids, vecs.astype(np.float32, copy=True)

    def iter_vectors(
        self, *, after_iid: int = 0, chunk: int = 16384
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(iids, vectors) in iid order, ``chunk`` rows at a time (bounded memory)."""
        last = after_iid
        while True:
            rows = self._read(
                "SELECT iid, vector FROM items WHERE iid > ? ORDER BY iid LIMIT ?", (last, chunk)
            )
            if not rows:
                return
            ids, vecs = self._vectors(rows)
            last = int(ids[-1])
            yield ids, vecs

    def vectors_after(self, after_iid: int) -> tuple[np.ndarray, np.ndarray]:
        parts = list(self.iter_vectors(after_iid=after_iid))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` vectors drawn uniformly without replacement (for training)."""
        rows = self._read("SELECT iid FROM items")
        all_iids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if n >= len(all_iids):
            pick = all_iids
        else:
            pick = np.sort(np.random.default_rng(seed).choice(all_iids, size=n, replace=False))
        out = []
        for start in range(0, len(pick), _IN_CHUNK):
            part = [int(x) for x in pick[start : start + _IN_CHUNK]]
            marks = ",".join("?" * len(part))
            out.append(
                self._vectors(self._read(f"SELECT iid, vector FROM items WHERE iid IN ({marks})", part))[1]
            )
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    # -- writes (writer thread, under the index's write lock) ---------------------------
    def _writer(self) -> sqlite3.Connection:
        if self._w is None:
            raise FailedPrecondition(f"index {self.path.parent.name!r}: {self.path.name} is opened read-only")
        return self._w

    @_writes
    def write_chunk(
        self, rows: Sequence[tuple[str, bytes, str | None]], meta: Mapping[str, str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Insert or replace ``rows`` (id, vector bytes, payload JSON) in one durable transaction.

        Returns (new iids in row order, iids of the replaced old versions).
        """
        w = self._writer()
        ids = [r[0] for r in rows]
        w.execute("BEGIN IMMEDIATE")
        try:
            old: list[int] = []
            for start in range(0, len(ids), _IN_CHUNK):
                part = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(part))
                old.extend(
                    r[0] for r in w.execute(f"DELETE FROM items WHERE id IN ({marks}) RETURNING iid", part)
                )
            if old:
                w.executemany("INSERT OR IGNORE INTO dead(iid) VALUES (?)", [(i,) for i in old])
            new = [
                w.execute("INSERT INTO items(id, vector, payload) VALUES (?, ?, ?)", r).lastrowid
                for r in rows
            ]
            if meta:
                w.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
            w.execute("COMMIT")
        except BaseException:
            _rollback(w)
            raise
        return np.asarray(new, dtype=np.int64), np.asarray(sorted(old), dtype=np.int64)

    @_writes
    def delete(self, ids: Sequence[str], meta: Mapping[str, str]) -> np.ndarray:
        """Delete ``ids`` durably; returns the iids removed."""
        w = self._writer()
        w.execute("BEGIN IMMEDIATE")
        try:
            old: list[int] = []
            for start in range(0, len(ids), _IN_CHUNK):
                part = list(ids[start : start + _IN_CHUNK])
                marks = ",".join("?" * len(part))
                old.extend(
                    r[0] for r in w.execute(f"DELETE FROM items WHERE id IN ({marks}) RETURNING iid", part)
                )
            if old:
                w.executemany("INSERT OR IGNORE INTO dead(iid) VALUES (?)", [(i,) for i in old])
            if meta:
                w.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
            w.execute("COMMIT")
        except BaseException:
            _rollback(w)
            raise
        return np.asarray(sorted(old), dtype=np.int64)

    @_writes
    def set_meta(self, meta: Mapping[str, str]) -> None:
        w = self._writer()
        w.execute("BEGIN IMMEDIATE")
        try:
            w.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
            w.execute("COMMIT")
        except BaseException:
            _rollback(w)
            raise

    @_writes
    def set_dead(self, iids: np.ndarray) -> None:
        """Make ``dead`` exactly ``iids`` (after a snapshot that no longer holds the others)."""
        w = self._writer()
        w.execute("BEGIN IMMEDIATE")
        try:
            w.execute("DELETE FROM dead")
            w.executemany("INSERT INTO dead(iid) VALUES (?)", [(int(i),) for i in iids])
            w.execute("COMMIT")
        except BaseException:
            _rollback(w)
            raise


def _rollback(w: sqlite3.Connection) -> None:
    try:
        w.execute("ROLLBACK")
    except sqlite3.Error:  # no transaction left (SQLite rolled back itself, e.g. on SQLITE_FULL)
        pass
