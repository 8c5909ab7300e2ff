"""Quotas on the index store: how many indexes and how many stored vectors, server-wide and per key.

The key that creates an index owns it (its id is written into the index as metadata
``owner``, so ownership survives restarts and goes with the index when it is dropped). A key's
``max_indexes`` counts the indexes it owns; its ``max_vectors`` counts the vectors stored in
them, whoever writes them. Server-wide ``max_indexes`` / ``max_vectors`` count everything.

A ledger ``{index: (owner, count)}`` keeps the checks O(1): built from the store's list at
start-up, updated by every create, upsert, delete and drop, refreshed by ``ListIndexes``.
Every method that checks and then writes runs on the store's single writer thread, so two
writers cannot both take the last free slot. An upsert needs room for all its items, also
those that replace an existing id (counted before writing; the count after is exact).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from pairsmith.errors import NotFound, ResourceExhausted
from pairsmith.service.auth import ApiKey

OWNER_META = "owner"


class Quotas:
    def __init__(
        self,
        max_indexes: int = 0,
        max_vectors: int = 0,
        key_by_id: Callable[[str], ApiKey | None] | None = None,
    ) -> None:
        self.max_indexes = int(max_indexes)  # 0: no server-wide limit
        self.max_vectors = int(max_vectors)
        self._key_by_id = key_by_id or (lambda _id: None)
        self._ledger: dict[str, tuple[str | None, int]] = {}
        self._lock = threading.Lock()

    # -- ledger -------------------------------------------------------------------------------------
    def load(self, store, infos: Iterable, *, owners: bool) -> None:
        """Start-up (store thread): counts from ``infos``; owners read from each index when ``owners``."""
        ledger = {}
        for info in infos:
            owner = self._read_owner(store, info.name) if owners else None
            ledger[info.name] = (owner, int(info.count))
        with self._lock:
            self._ledger = ledger

    def refresh(self, infos: Iterable) -> None:
        """Counts from a fresh list (``ListIndexes``); indexes gone from the store are forgotten."""
        with self._lock:
            self._ledger = {i.name: (self._ledger.get(i.name, (None, 0))[0], int(i.count)) for i in infos}

    def set_count(self, name: str, count: int) -> None:
        with self._lock:
            if name in self._ledger:
                self._ledger[name] = (self._ledger[name][0], int(count))

    def dropped(self, name: str) -> None:
        with self._lock:
            self._ledger.pop(name, None)

    def _read_owner(self, store, name: str) -> str | None:
        try:
            return store.read_meta(name, OWNER_META)
        except (NotFound, OSError):
            return None

    def _ensure(self, store, name: str) -> None:
        """An index made outside this server (``pairsmith index build``) joins the ledger on first write."""
        with self._lock:
            known = name in self._ledger
        if not known:
            owner, count = self._read_owner(store, name), int(store.get(name).count)
            with self._lock:
                self._ledger.setdefault(name, (owner, count))

    # -- checks and writes (store thread) --------------------------------------------------------------
    def create(self, store, name: str, key: ApiKey | None, do_create: Callable[[], object]):
        with self._lock:
            total = len(self._ledger)
            owned = sum(1 for o, _ in self._ledger.values() if key is not None and o == key.id)
        if key is not None and key.max_indexes is not None and owned >= key.max_indexes:
            raise ResourceExhausted(
                f"index quota: API key {key.id!r} owns {owned} indexes, its limit "
                f"(max_indexes={key.max_indexes} in the key file); drop one first"
            )
        if self.max_indexes and total >= self.max_indexes:
            raise ResourceExhausted(
                f"index quota: the server holds {total} indexes, its limit (max_indexes={self.max_indexes}); "
                "drop one first"
            )
        info = do_create()
        if key is not None:
            store.upsert(name, [], meta={OWNER_META: key.id})
        with self._lock:
            self._ledger[name] = (key.id if key is not None else None, int(info.count))
        return info

    def upsert(self, store, name: str, items: list) -> int:
        self._ensure(store, name)
        n = len(items)
        with self._lock:
            owner = self._ledger.get(name, (None, 0))[0]
            total = sum(c for _, c in self._ledger.values())
            owned = sum(c for o, c in self._ledger.values() if owner is not None and o == owner)
        key = self._key_by_id(owner) if owner is not None else None
        if key is not None and key.max_vectors is not None and owned + n > key.max_vectors:
            raise ResourceExhausted(
                f"vector quota: indexes owned by API key {key.id!r} hold {owned} vectors and this write "
                f"adds up to {n}; the limit is max_vectors={key.max_vectors} in the key file"
            )
        if self.max_vectors and total + n > self.max_vectors:
            raise ResourceExhausted(
                f"vector quota: the server holds {total} vectors and this write adds up to {n}; "
                f"the limit is max_vectors={self.max_vectors}"
            )
        written = store.upsert(name, items)
        self.set_count(name, int(store.get(name).count))
        return written
